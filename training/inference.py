"""Run a denoiser on a whole image in native units, exactly as the service does.

Validation and evaluation go through here, so the numbers they report include the effect of
the card's normalisation being read off the noisy image (as it must be at serving time).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.inference.normalisation import IntensityWindow, NormalisationSpec, from_unit_range, to_unit_range, window_for

UnitPredictor = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 -> (N, 1, H, W)


def model_input(noisy: np.ndarray, normalisation: NormalisationSpec,
                sigma: np.ndarray | float | None = None) -> tuple[np.ndarray, IntensityWindow]:
    """(C, H, W) float32 as the service feeds a model, and the window used: the image in unit
    range and, where ``sigma`` (the noise map in native units; a scalar is spread over the image)
    is given, the map in the same unit range as channel 1."""
    window = window_for(noisy, normalisation)
    channels = [to_unit_range(noisy, window)]
    if sigma is not None:
        channels.append(np.broadcast_to(np.asarray(sigma, dtype=np.float32) / np.float32(window.width),
                                        noisy.shape))
    return np.stack(channels).astype(np.float32, copy=False), window


def denoise_native(predict: UnitPredictor, noisy: np.ndarray, normalisation: NormalisationSpec,
                   sigma: np.ndarray | float | None = None, non_negative: bool = False) -> np.ndarray:
    """Denoise ``noisy`` (native units). ``sigma``: the noise map in native units, for a model
    that takes one (a scalar is spread over the image). ``non_negative``: a magnitude model's
    input and output are clipped at zero, as the service does."""
    if non_negative:
        noisy = np.maximum(noisy, 0.0)
    unit, window = model_input(noisy, normalisation, sigma)
    denoised = from_unit_range(predict(unit[np.newaxis])[0, 0], window)
    if non_negative:
        np.maximum(denoised, 0.0, out=denoised)
    return denoised.astype(np.float32)


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
