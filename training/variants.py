"""Reduced-precision variants against their fp32 model:
``python -m training.evaluate --variant unet-int8``.

Both models denoise the same unseen-source noisy images at every evaluation level of the
modality's physics noise (as the service runs them: a conditioned model with the level it
estimates), then each is timed on one square image with the service's session options, taking
turns. Only the variant's card is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.card import ModelCard, read_card, write_card
from app.modality import modality_names
from training.benchmark import (ESTIMATED, NOISY_INPUT, ServedModel, _mean, config_from_card, fp32_model_dirs,
                                held_out_images, model_denoise, score)
from training.dataset import ValidationImage
from training.inference import UnitPredictor, model_input, onnx_predictor
from training.report import card_levels

log = logging.getLogger(__name__)


def service_session(path: Path, threads: int) -> Any:
    """A CPU session with the options the service builds (``app/inference/registry.py``), so a
    timing is the one a request would see."""
    import onnxruntime as ort

    from app.inference.registry import session_options
    from app.settings import Settings

    # model_construct: the service's defaults without reading DENOISE_* from this environment, where
    # the training tools' own DENOISE_DATA_CACHE would be refused as an unknown service setting.
    settings = Settings.model_construct(intra_op_threads=threads)
    return ort.InferenceSession(str(path), session_options(settings), providers=["CPUExecutionProvider"])


def alternating_latency_ms(predictors: dict[str, UnitPredictor], batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each predictor on ``batch``. The predictors take turns, in
    alternating order, so a busy moment on the machine slows each of them alike."""
    for predict in predictors.values():
        predict(batch)
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for turn in range(repeats):
        for name in list(predictors)[:: 1 if turn % 2 == 0 else -1]:
            started = time.perf_counter()
            predictors[name](batch)
            seconds[name].append(time.perf_counter() - started)
    return {name: round(1000 * float(np.median(values)), 1) for name, values in seconds.items()}


def timing_input(image: ValidationImage, card: ModelCard, size: int) -> np.ndarray:
    """A (1, C, size, size) model input cut from a test image, mirrored out where the image is
    smaller: ONNX Runtime's time depends on the size, not on the content."""
    sigma = image.sigma if card.noise_map is not None else None
    stacked = model_input(image.noisy, card.normalisation, sigma)[0]
    while min(stacked.shape[1:]) < size:
        stacked = np.pad(stacked, [(0, 0)] + [(0, max(0, min(size - n, n))) for n in stacked.shape[1:]],
                         mode="symmetric")
    return np.ascontiguousarray(stacked[:, :size, :size], dtype=np.float32)[np.newaxis]


def evaluate_variant(reference_dir: Path, variant_dir: Path, prepared: Path, slices: int, crop: int, threads: int,
                     repeats: int, timing_size: int = 512) -> dict[str, Any]:
    """A reduced-precision variant against its fp32 model: both on the same noisy test images at
    every evaluation level, then the median time of each on one ``timing_size`` square image."""
    cards = [read_card(reference_dir), read_card(variant_dir)]
    reference, variant = cards
    served = [ServedModel(d, c, onnx_predictor(service_session(d / c.file, threads)))
              for d, c in zip((reference_dir, variant_dir), cards)]
    predictors = {model.card.id: model.predict for model in served}
    config = config_from_card(reference, crop)
    levels: dict[str, Any] = {}
    for level_name, level in config.noise.evaluation_levels.items():
        images = held_out_images(prepared, config, level, slices)
        table = {NOISY_INPUT: [score(i.clean, i.noisy, i.noisy, reference.modality, 0.0) for i in images]}
        for model in served:
            outputs = [model_denoise(model, i, ESTIMATED) for i in images]
            table[model.card.id] = [score(i.clean, i.noisy, out, reference.modality, seconds)
                                    for i, (out, seconds, _) in zip(images, outputs)]
        levels[level_name] = {"level": level, "images": len(images),
                              "methods": {name: _mean(scores) for name, scores in table.items()}}
        log.info("%s against %s, %s (%s): %s", variant.id, reference.id, level_name, level,
                 {k: v["psnr"] for k, v in levels[level_name]["methods"].items()})
    latency = alternating_latency_ms(predictors, timing_input(images[0], reference, timing_size), repeats)
    megapixels = timing_size * timing_size / 1e6
    return {"modality": reference.modality, "reference": reference.id, "variant": variant.id,
            "default_level": config.noise.default_level, "test_volumes": sorted({i.volume_id for i in images}),
            "crop": crop, "levels": levels, "timing_size": timing_size, "timing_repeats": repeats,
            "ms_per_image": latency, "ms_per_megapixel": {k: round(v / megapixels, 1) for k, v in latency.items()},
            "speedup": round(latency[reference.id] / latency[variant.id], 2)}


def variant_comparison(result: dict[str, Any]) -> dict[str, Any]:
    """The variant's change against its fp32 model at every level (negative: the variant is worse)."""
    reference, variant = result["reference"], result["variant"]
    deltas = {name: {"psnr_delta_db": round(lvl["methods"][variant]["psnr"] - lvl["methods"][reference]["psnr"], 4),
                     "ssim_delta": round(lvl["methods"][variant]["ssim"] - lvl["methods"][reference]["ssim"], 4)}
              for name, lvl in result["levels"].items()}
    default = next(lvl for lvl in result["levels"].values() if lvl["level"] == result["default_level"])
    return {"reference_model": reference,
            "reference_psnr": default["methods"][reference]["psnr"],
            "reference_ssim": default["methods"][reference]["ssim"],
            "psnr": default["methods"][variant]["psnr"], "ssim": default["methods"][variant]["ssim"],
            "deltas_by_level": deltas, "ms_per_image": result["ms_per_image"][variant],
            "reference_ms_per_image": result["ms_per_image"][reference], "timing_size": result["timing_size"],
            "speedup_over_reference": result["speedup"]}


def variant_test_metrics(result: dict[str, Any], command: str) -> dict[str, Any]:
    """``test_metrics`` for a variant's card: the fp32 card's shape, compared with the fp32 model."""
    return {"command": command, "test_volumes": result["test_volumes"],
            "levels": card_levels(result["levels"], result["variant"]),
            "comparison_at_default_level": variant_comparison(result)}


def reference_dir(models_dir: Path, variant: ModelCard) -> Path:
    """The fp32 model a variant was made from: same modality, same architecture."""
    found = [d for d in fp32_model_dirs(models_dir, variant.modality)
             if read_card(d).architecture == variant.architecture]
    if len(found) != 1:
        raise ValueError(f"{variant.id}: expected one fp32 {variant.architecture} model for {variant.modality}, "
                         f"found {len(found)}")
    return found[0]


def evaluate_variants(args: argparse.Namespace, command: str) -> None:
    for modality in args.modality or modality_names():
        directory = args.models / modality / args.variant
        if not (directory / "model.onnx").is_file():
            log.info("%s: no %s model, nothing to evaluate", modality, args.variant)
            continue
        result = evaluate_variant(reference_dir(args.models, read_card(directory)), directory, args.prepared,
                                  args.slices, args.crop, args.threads, args.repeats)
        if not args.no_card_update:
            card = read_card(directory)
            write_card(directory, card.model_copy(update={"test_metrics": variant_test_metrics(result, command)}))
        print(modality, json.dumps(variant_comparison(result)))
