"""Run a denoiser on a whole image in native units, exactly as the service does.

Validation and evaluation go through here, so the numbers they report include the effect of
the card's normalisation being read off the noisy image (as it must be at serving time).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.imaging.intensity import NormalisationSpec, from_unit_range, to_unit_range, window_for

UnitPredictor = Callable[[np.ndarray], np.ndarray]  # (N, 1, H, W) float32 -> same


def denoise_native(predict: UnitPredictor, noisy: np.ndarray, normalisation: NormalisationSpec) -> np.ndarray:
    window = window_for(noisy, normalisation)
    unit = to_unit_range(noisy, window)[np.newaxis, np.newaxis]
    return from_unit_range(predict(unit)[0, 0], window).astype(np.float32)


def torch_predictor(model: "object", device: "object") -> UnitPredictor:
    import torch

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()  # type: ignore[operator]
    return predict


def onnx_predictor(session: "object") -> UnitPredictor:
    input_name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]  # type: ignore[attr-defined]
    return predict
