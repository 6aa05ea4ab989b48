"""Evaluate the committed models against the classical methods on the held-out test split:
``python -m training.evaluate``.

For each modality and noise level, every method sees the same noisy images (simulated with a
fixed seed from the test volumes, which no model trained or validated on). The classical
methods' one parameter is tuned on the validation split at the default level; BM3D and the
wavelet method are given the true noise standard deviation of each noisy image. Writes
``docs/EVALUATION.md`` and ``docs/evaluation.json``, and the test metrics into each model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging.intensity import NormalisationSpec, from_unit_range, to_unit_range, window_for
from app.inference.card import ModelCard, read_card, write_card
from app.quality.reference import mae, psnr, reference_data_range, ssim
from training.config import DataConfig, NoiseConfig, OptimConfig, RunConfig, TrainConfig
from training.classical import METHODS, ClassicalMethod
from training.dataset import ValidationImage, validation_set
from training.inference import UnitPredictor, denoise_native, onnx_predictor

log = logging.getLogger(__name__)

TEST_SEED = 2026
VAL_SEED = 7


@dataclass(frozen=True)
class Scored:
    psnr: float
    ssim: float
    mae: float
    seconds_per_megapixel: float


def _config_from_card(card: ModelCard, crop: int) -> TrainConfig:
    """A config carrying what the degradation and split code need, taken from the served card."""
    noise = card.noise_model
    return TrainConfig(
        run=RunConfig(name=card.id, modality=card.modality, architecture=card.architecture, channels=[1]),
        data=DataConfig(validation_crop=crop),
        noise=NoiseConfig(train_range=noise.train_range, default_level=noise.default_level,
                          evaluation_levels=noise.evaluation_levels,
                          xray_read_sigma=card.training_config["noise"]["xray_read_sigma"]),
        normalisation=card.normalisation,
        optim=OptimConfig(max_steps=1, max_minutes=1),
    )


def score(clean: np.ndarray, denoised: np.ndarray, modality: str, seconds: float) -> Scored:
    data_range = reference_data_range(clean, modality)
    return Scored(psnr(clean, denoised, data_range), ssim(clean, denoised, data_range), mae(clean, denoised),
                  seconds / (clean.size / 1e6))


def classical_denoise(method: ClassicalMethod, parameter: float, image: ValidationImage,
                      spec: NormalisationSpec) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    window = window_for(image.noisy, spec)
    noisy_unit = to_unit_range(image.noisy, window)
    # The true noise SD of this noisy image, in the unit range the filter works in.
    sigma = float(np.std(noisy_unit - to_unit_range(image.clean, window)))
    out = from_unit_range(method.run(noisy_unit, sigma, parameter), window)
    return out, time.perf_counter() - started


def tune(method: ClassicalMethod, images: list[ValidationImage], spec: NormalisationSpec, modality: str) -> float:
    if len(method.grid) == 1:
        return method.grid[0]
    results = {p: np.mean([score(i.clean, classical_denoise(method, p, i, spec)[0], modality, 0).psnr for i in images])
               for p in method.grid}
    return max(results, key=results.__getitem__)


def model_denoise(predict: UnitPredictor, image: ValidationImage, spec: NormalisationSpec) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = denoise_native(predict, image.noisy, spec)
    return out, time.perf_counter() - started


def _mean(scores: list[Scored]) -> dict[str, float]:
    return {field: round(float(np.mean([getattr(s, field) for s in scores])), 4)
            for field in ("psnr", "ssim", "mae", "seconds_per_megapixel")}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def evaluate_modality(modality: str, models_dir: Path, prepared: Path, slices: int, crop: int, threads: int,
                      skip: set[str]) -> dict[str, Any]:
    model_dirs = sorted(p.parent for p in (models_dir / modality).glob("*/model.onnx"))
    cards = {read_card(d).architecture: (d, read_card(d)) for d in model_dirs}
    reference_card = next((c for _, c in cards.values() if c.default), next(iter(cards.values()))[1])
    config = _config_from_card(reference_card, crop)
    spec = reference_card.normalisation
    predictors = {arch: onnx_predictor(_session(d / "model.onnx", threads)) for arch, (d, _) in cards.items()}
    # Each model is fed through its own card's normalisation (the CT models' windows differ).
    model_specs = {arch: card.normalisation for arch, (_, card) in cards.items()}
    for predict in predictors.values():  # first-run allocations are not part of the timing
        predict(np.zeros((1, 1, 64, 64), np.float32))

    methods = [m for m in METHODS if m.name not in skip]
    warm = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    for method in methods:  # imports and first-call set-up are not part of the timing either
        method.run(warm, 0.05, method.grid[0])
    validation = validation_set(prepared, config, seed=VAL_SEED)
    parameters = {m.name: tune(m, validation, spec, modality) for m in methods}
    log.info("%s: tuned on %d validation images: %s", modality, len(validation), parameters)

    levels: dict[str, Any] = {}
    for level_name, level in config.noise.evaluation_levels.items():
        level_config = config.model_copy(update={"noise": config.noise.model_copy(update={"default_level": level})})
        images = validation_set(prepared, level_config, seed=TEST_SEED, max_slices_per_volume=slices, split="test",
                                min_images_per_volume=slices)
        table: dict[str, list[Scored]] = {"noisy input": [], **{m.name: [] for m in methods},
                                          **{arch: [] for arch in predictors}}
        for image in images:
            table["noisy input"].append(score(image.clean, image.noisy, modality, 0.0))
            for method in methods:
                out, seconds = classical_denoise(method, parameters[method.name], image, spec)
                table[method.name].append(score(image.clean, out, modality, seconds))
            for arch, predict in predictors.items():
                out, seconds = model_denoise(predict, image, model_specs[arch])
                table[arch].append(score(image.clean, out, modality, seconds))
        levels[level_name] = {"level": level, "images": len(images),
                              "methods": {name: _mean(scores) for name, scores in table.items()}}
        log.info("%s %s (%s): %s", modality, level_name, level,
                 {k: v["psnr"] for k, v in levels[level_name]["methods"].items()})
    return {"modality": modality, "noise_parameter": reference_card.noise_model.parameter,
            "default_level": config.noise.default_level, "tuned_parameters": parameters,
            "test_volumes": sorted({i.volume_id for i in images}), "crop": crop, "levels": levels,
            "models": {arch: str(d) for arch, (d, _) in cards.items()}}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The targets of the training issue, at the default level."""
    default = next(v for v in result["levels"].values() if v["level"] == result["default_level"])
    methods = default["methods"]
    classical = {k: v for k, v in methods.items() if k not in ("noisy input", "unet", "autoencoder")}
    best_name = max(classical, key=lambda k: classical[k]["psnr"])
    best, unet = classical[best_name], methods.get("unet")
    out: dict[str, Any] = {"best_classical": best_name, "best_classical_psnr": best["psnr"],
                           "best_classical_ssim": best["ssim"]}
    if unet is not None:
        out |= {"unet_psnr": unet["psnr"], "unet_ssim": unet["ssim"],
                "psnr_margin_db": round(unet["psnr"] - best["psnr"], 3),
                "psnr_target_met": unet["psnr"] >= best["psnr"] + 0.5, "ssim_target_met": unet["ssim"] >= best["ssim"]}
        if "bm3d" in methods:
            out["unet_speedup_over_bm3d"] = round(methods["bm3d"]["seconds_per_megapixel"]
                                                  / unet["seconds_per_megapixel"], 1)
    return out


def write_markdown(results: list[dict[str, Any]], path: Path, command: str) -> None:
    lines = ["# Evaluation on the held-out test split", "",
             f"Made by `{command}` on {datetime.now(timezone.utc).date()} (2-core CPU, ONNX Runtime for the models).",
             "PSNR and SSIM use the data range of the image's units: the model's fixed HU window width (4095 HU) for CT,",
             "the clean image's range for MR and X-ray. Seconds per megapixel on this machine, one image at a time.",
             "Classical parameters are tuned on the validation split; BM3D and the wavelet method get the true noise SD.", ""]
    for result in results:
        check = result["verdict"]
        lines += [f"## {result['modality'].upper()}", "",
                  f"Noise level: {result['noise_parameter']}; default {result['default_level']}. "
                  f"Test volumes: {', '.join(result['test_volumes'])} (crops of at most {result['crop']} px).", ""]
        for name, level in result["levels"].items():
            lines += [f"### {name} ({level['level']}), {level['images']} images", "",
                      "| method | PSNR dB | SSIM | MAE | s / MP |", "|---|---|---|---|---|"]
            for method, m in sorted(level["methods"].items(), key=lambda kv: -kv[1]["psnr"]):
                lines.append(f"| {method} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['mae']:.3f} | "
                             f"{m['seconds_per_megapixel']:.3f} |")
            lines.append("")
        if "unet_psnr" in check:
            lines += [f"At the default level the U-Net scores {check['unet_psnr']:.2f} dB / SSIM {check['unet_ssim']:.4f}; "
                      f"the best classical method, {check['best_classical']}, {check['best_classical_psnr']:.2f} dB / "
                      f"{check['best_classical_ssim']:.4f}: margin {check['psnr_margin_db']:+.2f} dB "
                      f"(target +0.5 dB: {'met' if check['psnr_target_met'] else 'NOT met'}; SSIM target "
                      f"{'met' if check['ssim_target_met'] else 'NOT met'})"
                      + (f"; the U-Net is {check['unet_speedup_over_bm3d']}x faster than BM3D per megapixel."
                         if "unet_speedup_over_bm3d" in check else "."), ""]
    path.write_text("\n".join(lines) + "\n")


def update_cards(result: dict[str, Any], command: str) -> None:
    for arch, directory in result["models"].items():
        card = read_card(Path(directory))
        test = {name: {"level": lvl["level"], "images": lvl["images"], **lvl["methods"][arch],
                       "noisy_input_psnr": lvl["methods"]["noisy input"]["psnr"]}
                for name, lvl in result["levels"].items()}
        write_card(Path(directory), card.model_copy(update={"test_metrics": {
            "command": command, "test_volumes": result["test_volumes"], "levels": test,
            "comparison_at_default_level": result["verdict"]}}))


def main(argv: list[str] | None = None) -> None:
    from training.data.__main__ import default_cache

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("--modality", action="append", choices=["ct", "mr", "xray"])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--prepared", type=Path, default=default_cache() / "prepared")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--slices", type=int, default=4, help="test slices per volume")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="classical methods to leave out")
    parser.add_argument("--no-card-update", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python -m training.evaluate" + "".join(f" --modality {m}" for m in args.modality or [])
    results = []
    for modality in args.modality or ["ct", "mr", "xray"]:
        result = evaluate_modality(modality, args.models, args.prepared, args.slices, args.crop, args.threads,
                                   set(args.skip))
        result["verdict"] = verdict(result)
        results.append(result)
        if not args.no_card_update:
            update_cards(result, command)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.modality else "-" + "-".join(args.modality)
    (args.out / f"evaluation{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / f"EVALUATION{suffix}.md", command)
    for result in results:
        print(result["modality"], json.dumps(result["verdict"]))


if __name__ == "__main__":
    main()
