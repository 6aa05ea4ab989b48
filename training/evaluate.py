"""Evaluate the committed models against the classical methods on the held-out test split:
``python -m training.evaluate``.

For each modality and noise level, every method sees the same noisy images (simulated with a
fixed seed from the test volumes, which no model trained or validated on). The classical
methods' one parameter is tuned on the validation split at the default level; BM3D and the
wavelet method are given the true noise standard deviation of each noisy image. Writes
``docs/EVALUATION.md`` and ``docs/evaluation.json``, and the test metrics into each model card.

Reduced-precision variants (``models/<modality>/unet-int8``, made by ``training/quantize.py``) stay
out of those tables: ``--variant unet-int8`` scores each against its fp32 model on the same noisy
test images instead, and times both with the service's session options, taking turns.
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


def config_from_card(card: ModelCard, crop: int) -> TrainConfig:
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


def fp32_model_dirs(models_dir: Path, modality: str) -> list[Path]:
    """The modality's full-precision models. A reduced-precision variant shares its model's
    architecture, so in tables keyed by architecture it would take that model's place."""
    return sorted(p.parent for p in (models_dir / modality).glob("*/model.onnx")
                  if read_card(p.parent).precision == "fp32")


def held_out_images(prepared: Path, config: TrainConfig, level: float, slices: int) -> list[ValidationImage]:
    """The held-out noisy images at ``level``: the same for every method, model and run."""
    level_config = config.model_copy(update={"noise": config.noise.model_copy(update={"default_level": level})})
    return validation_set(prepared, level_config, seed=TEST_SEED, max_slices_per_volume=slices, split="test",
                          min_images_per_volume=slices)


def evaluate_modality(modality: str, models_dir: Path, prepared: Path, slices: int, crop: int, threads: int,
                      skip: set[str]) -> dict[str, Any]:
    model_dirs = fp32_model_dirs(models_dir, modality)
    cards = {read_card(d).architecture: (d, read_card(d)) for d in model_dirs}
    reference_card = next((c for _, c in cards.values() if c.default), next(iter(cards.values()))[1])
    config = config_from_card(reference_card, crop)
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
        images = held_out_images(prepared, config, level, slices)
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


def card_levels(result: dict[str, Any], method: str) -> dict[str, Any]:
    """One method's rows of an evaluation result, as a card's ``test_metrics.levels``."""
    return {name: {"level": lvl["level"], "images": lvl["images"], **lvl["methods"][method],
                   "noisy_input_psnr": lvl["methods"]["noisy input"]["psnr"]}
            for name, lvl in result["levels"].items()}


def update_cards(result: dict[str, Any], command: str) -> None:
    for arch, directory in result["models"].items():
        card = read_card(Path(directory))
        write_card(Path(directory), card.model_copy(update={"test_metrics": {
            "command": command, "test_volumes": result["test_volumes"], "levels": card_levels(result, arch),
            "comparison_at_default_level": result["verdict"]}}))


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


def timing_input(image: ValidationImage, spec: NormalisationSpec, size: int) -> np.ndarray:
    """A (1, 1, size, size) model input cut from a test image, mirrored out where the image is
    smaller: ONNX Runtime's time depends on the size, not on the content."""
    unit = to_unit_range(image.noisy, window_for(image.noisy, spec))
    while min(unit.shape) < size:
        unit = np.pad(unit, [(0, max(0, min(size - n, n))) for n in unit.shape], mode="symmetric")
    return np.ascontiguousarray(unit[:size, :size], dtype=np.float32)[np.newaxis, np.newaxis]


def evaluate_variant(reference_dir: Path, variant_dir: Path, prepared: Path, slices: int, crop: int, threads: int,
                     repeats: int, timing_size: int = 512) -> dict[str, Any]:
    """A reduced-precision variant against its fp32 model: both on the same noisy test images at
    every evaluation level, then the median time of each on one ``timing_size`` square image."""
    cards = [read_card(reference_dir), read_card(variant_dir)]
    reference, variant = cards
    sessions = [service_session(d / c.file, threads) for d, c in zip((reference_dir, variant_dir), cards)]
    predictors = {card.id: onnx_predictor(session) for card, session in zip(cards, sessions)}
    config = config_from_card(reference, crop)
    levels: dict[str, Any] = {}
    for level_name, level in config.noise.evaluation_levels.items():
        images = held_out_images(prepared, config, level, slices)
        table = {"noisy input": [score(i.clean, i.noisy, reference.modality, 0.0) for i in images]}
        for card in cards:
            outputs = [model_denoise(predictors[card.id], i, card.normalisation) for i in images]
            table[card.id] = [score(i.clean, out, reference.modality, seconds)
                              for i, (out, seconds) in zip(images, outputs)]
        levels[level_name] = {"level": level, "images": len(images),
                              "methods": {name: _mean(scores) for name, scores in table.items()}}
        log.info("%s against %s, %s (%s): %s", variant.id, reference.id, level_name, level,
                 {k: v["psnr"] for k, v in levels[level_name]["methods"].items()})
    latency = alternating_latency_ms(predictors, timing_input(images[0], reference.normalisation, timing_size), repeats)
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
            "levels": card_levels(result, result["variant"]),
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
    for modality in args.modality or ["ct", "mr", "xray"]:
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
    parser.add_argument("--variant", help="instead: score models/<modality>/VARIANT (e.g. unet-int8) against "
                                          "its fp32 model, writing only the variant's card")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model, with --variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python -m training.evaluate" + "".join(f" --modality {m}" for m in args.modality or [])
    if args.variant:
        evaluate_variants(args, command + f" --variant {args.variant}")
        return
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
