"""Int8 variants of the U-Nets for the CPU: ``python -m training.quantize --modality ct|mr|xray|all``.

Static QDQ quantisation (ONNX Runtime) of the committed fp32 U-Net in ``models/<modality>/unet``:
per-channel signed int8 weights, unsigned int8 activations whose ranges are calibrated on noisy
crops of the training split only (the card's noise model at its default level, a fixed seed). The first
convolution (it reads the image) and the last (it writes the noise estimate that is subtracted
from the image) stay fp32, as does the subtraction itself: see ``float_convs``.

Each candidate is scored against its fp32 model on the same held-out noisy images at every
evaluation level, and both are timed on a 512 x 512 image with the service's session options,
taking turns (``training/evaluate.py``). It is written to ``models/<modality>/unet-int8/``, never as
the default, only when ``refusals`` finds nothing: PSNR within 0.1 dB of the fp32 model's and SSIM
within 0.001 at every level, and faster by ``MIN_SPEEDUP``. The numbers are recorded either way, in
``docs/quantization.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from app.inference.card import ModelCard, read_card, write_card
from app.modality import modality_names
from training.config import TrainConfig
from training.data.prepare import load_manifest
from training.dataset import ValidationImage, validation_set
from training.benchmark import ESTIMATED, ServedModel, config_from_card, model_denoise, score
from training.variants import evaluate_variant, service_session, variant_comparison, variant_test_metrics
from training.export import code_version, sha256_file
from training.inference import model_input, onnx_predictor

log = logging.getLogger(__name__)

SOURCE = "unet"
VARIANT = "unet-int8"
MAX_PSNR_LOSS_DB = 0.1  # issue #6: offered only within 0.1 dB of the fp32 model
MAX_SSIM_LOSS = 0.001  # SSIM differences the evaluation tables resolve (four decimals, a few images)
# A variant that is barely faster is not worth a second model to choose from: it must pay.
MIN_SPEEDUP = 1.2
# The U-Net's arithmetic. Relu is listed so that it is folded into the int8 output range of the
# convolution before it (a float Relu between two convolutions keeps them from running as int8).
# The residual subtraction, and the padding and slicing around it, stay fp32: the image itself
# is never rounded.
OP_TYPES = ["Conv", "Relu", "ConvTranspose", "MaxPool", "Concat"]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the int8 model; recorded in its card.

    Unsigned activations: on an x86 CPU ONNX Runtime runs every int8 convolution of the U-Net as
    QLinearConv only with them; with signed ones several stay float between extra Quantize /
    Dequantize nodes, and the model ran slower than fp32 (docs/BENCHMARKS.md). MinMax
    calibration: ONNX Runtime's histogram methods need calibration inputs of one size.
    """

    activation_type: Literal["QInt8", "QUInt8"] = "QUInt8"
    weight_type: Literal["QInt8"] = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: Literal["MinMax"] = "MinMax"
    calibration_crops: int = 16
    calibration_crop: int = 256
    calibration_seed: int = 606
    float_edge_convs: bool = True


class _Inputs(CalibrationDataReader):
    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_inputs(prepared: Path, card: ModelCard, recipe: Recipe) -> tuple[list[np.ndarray], list[str]]:
    """Model inputs (1, 1, H, W) for calibration, and the volumes they come from.

    Noisy crops of the training volumes only, at the card's default level, normalised as the
    service normalises: the test split stays unseen by everything that shapes the model, its int8
    ranges included, so the evaluation afterwards is a held-out one.
    """
    config = config_from_card(card, recipe.calibration_crop)
    volumes = [v for v in load_manifest(prepared)["volumes"]
               if v["modality"] == card.modality and v["split"] == "train"]
    # Twice the share of each volume: a single image gives a square number of crops, often fewer.
    per_volume = -(-2 * recipe.calibration_crops // max(1, len(volumes)))
    images = validation_set(prepared, config, seed=recipe.calibration_seed, max_slices_per_volume=per_volume,
                            split="train", min_images_per_volume=per_volume)
    picks = np.linspace(0, len(images) - 1, min(recipe.calibration_crops, len(images))).round().astype(int)
    chosen = [images[i] for i in sorted(set(picks.tolist()))]
    inputs = [calibration_input(i, card) for i in chosen]
    return inputs, sorted({i.volume_id for i in chosen})


def calibration_input(image: ValidationImage, card: ModelCard) -> np.ndarray:
    """(1, C, H, W) as the service feeds the model: the image in unit range and, for a model
    conditioned on the noise level, the true noise map."""
    sigma = image.sigma if card.noise_map is not None else None
    return model_input(image.noisy, card.normalisation, sigma)[0][np.newaxis]


def float_convs(model: onnx.ModelProto) -> list[str]:
    """The convolutions kept fp32: the first and the last (graph order is topological).

    The first reads the normalised image, whose range (air to bone, for CT -0.5 to 3.6 in the
    unit range) 8 bits would cut into steps of about 16 HU, coarser than full-dose noise; the last
    writes the noise estimate, whose rounding would land in every output pixel. Together they
    are under 1 % of the U-Net's multiply-adds.
    """
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    return [convs[0], convs[-1]] if len(convs) > 1 else convs


def quantize_model(source: Path, target: Path, inputs: list[np.ndarray], recipe: Recipe) -> list[str]:
    """Write the int8 QDQ model for ``source`` to ``target``; returns the nodes kept fp32."""
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        ready = Path(scratch) / "preprocessed.onnx"
        # Symbolic shape inference cannot follow the dynamic batch, height and width axes.
        quant_pre_process(str(source), str(ready), skip_symbolic_shape=True)
        model = onnx.load(str(ready))
        kept = float_convs(model) if recipe.float_edge_convs else []
        quantize_static(
            str(ready), str(target), _Inputs(model.graph.input[0].name, inputs), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=OP_TYPES, per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
            activation_type=QuantType[recipe.activation_type], weight_type=QuantType[recipe.weight_type],
            nodes_to_exclude=kept, calibrate_method=CalibrationMethod[recipe.calibrate_method])
    return kept


def validation_psnr(card: ModelCard, models: dict[str, Path], prepared: Path, threads: int) -> dict[str, float]:
    """Mean PSNR of each model on the validation images training chose its checkpoint on (the
    same crops, seed and level as ``training.train``), so the fp32 figure repeats its card's."""
    config = TrainConfig.model_validate(card.training_config)
    images = validation_set(prepared, config, seed=config.run.seed + 1)
    out = {}
    for name, path in models.items():
        model = ServedModel(path.parent, card, onnx_predictor(service_session(path, threads)))
        scores = [score(i.clean, i.noisy, model_denoise(model, i, ESTIMATED)[0], card.modality, 0.0).psnr
                  for i in images]
        out[name] = round(float(np.mean(scores)), 4)
    return out


def refusals(comparison: dict[str, Any]) -> list[str]:
    """Why the variant may not be offered (issue #6); empty when it may."""
    reasons = []
    for level, delta in comparison["deltas_by_level"].items():
        if delta["psnr_delta_db"] < -MAX_PSNR_LOSS_DB:
            reasons.append(f"{level}: PSNR {delta['psnr_delta_db']:+.3f} dB against fp32 (limit -{MAX_PSNR_LOSS_DB})")
        if delta["ssim_delta"] < -MAX_SSIM_LOSS:
            reasons.append(f"{level}: SSIM {delta['ssim_delta']:+.4f} against fp32 (limit -{MAX_SSIM_LOSS})")
    if comparison["speedup_over_reference"] < MIN_SPEEDUP:
        reasons.append(f"{comparison['speedup_over_reference']:.2f}x the fp32 speed (needs {MIN_SPEEDUP}x)")
    return reasons


def int8_card(reference: ModelCard, model_path: Path, quantization: dict[str, Any], command: str,
              validation: dict[str, Any] | None = None, test_metrics: dict[str, Any] | None = None) -> ModelCard:
    """The fp32 card's contract and provenance, with what makes this file different."""
    return ModelCard.model_validate(reference.model_dump() | {
        "id": f"{reference.id}-int8", "precision": "int8", "default": False, "sha256": sha256_file(model_path),
        "training_config": reference.training_config | {"quantization": quantization},
        "validation_metrics": validation or {}, "test_metrics": test_metrics or {},
        "code_version": code_version(), "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


@dataclass(frozen=True)
class Run:
    """Where to read and write, and how the evaluation is done."""

    models: Path
    prepared: Path
    slices: int = 4
    crop: int = 512
    threads: int = os.cpu_count() or 1
    repeats: int = 20
    write: bool = True


def quantize_modality(modality: str, recipe: Recipe, run: Run, command: str) -> dict[str, Any]:
    """Quantise, evaluate and decide for one modality; the model is written only when kept."""
    source_dir = run.models / modality / SOURCE
    reference = read_card(source_dir)
    inputs, volumes = calibration_inputs(run.prepared, reference, recipe)
    with tempfile.TemporaryDirectory(prefix=f"{modality}-int8-") as scratch:
        candidate = Path(scratch) / modality / VARIANT
        candidate.mkdir(parents=True)
        kept_float = quantize_model(source_dir / reference.file, candidate / reference.file, inputs, recipe)
        quantization = {
            "method": "static QDQ, onnxruntime.quantization.quantize_static",
            "onnxruntime": ort.__version__,
            **asdict(recipe), "op_types": OP_TYPES, "nodes_kept_fp32": kept_float,
            "calibration": {"split": "train", "images": len(inputs), "volumes": volumes,
                            "noise_level": reference.noise_model.default_level},
            "source": {"id": reference.id, "file": f"{modality}/{SOURCE}/{reference.file}",
                       "sha256": reference.sha256},
        }
        write_card(candidate, int8_card(reference, candidate / reference.file, quantization, command))
        result = evaluate_variant(source_dir, candidate, run.prepared, run.slices, run.crop, run.threads, run.repeats)
        comparison = variant_comparison(result)
        reasons = refusals(comparison)
        validation = validation_psnr(reference, {"fp32": source_dir / reference.file,
                                                 "int8": candidate / reference.file}, run.prepared, run.threads)
        if abs(validation["fp32"] - reference.validation_metrics.get("psnr_db", validation["fp32"])) > 0.01:
            log.warning("%s: validation PSNR %.4f dB here, %s dB on its card: the validation data differ",
                        reference.id, validation["fp32"], reference.validation_metrics["psnr_db"])
        card = int8_card(reference, candidate / reference.file, quantization, command,
                         validation={"psnr_db": validation["int8"], "fp32_psnr_db": validation["fp32"],
                                     "noise_level": reference.noise_model.default_level,
                                     "ms_per_512x512": comparison["ms_per_image"],
                                     "fp32_ms_per_512x512": comparison["reference_ms_per_image"],
                                     "speedup_over_fp32": comparison["speedup_over_reference"]},
                         test_metrics=variant_test_metrics(result, command))
        if run.write:
            place(candidate, run.models / modality / VARIANT, card, reasons)
        else:
            log.info("%s: %s", card.id, "refused: " + "; ".join(reasons) if reasons else "would be kept")
    return {"modality": modality, "model": card.id, "kept": not reasons, "refusals": reasons,
            "quantization": quantization, "validation_psnr": validation, "comparison": comparison,
            "evaluation": result}


def place(candidate: Path, target: Path, card: ModelCard, reasons: list[str]) -> None:
    """Copy a kept variant into the models folder; remove an earlier one where this one is refused."""
    if not reasons:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate / card.file, target / card.file)
        write_card(target, card)
        log.info("%s: kept, written to %s", card.id, target)
    elif target.exists():
        shutil.rmtree(target)  # an earlier run's variant no longer meets the limits
        log.warning("%s: refused (%s); removed the earlier %s", card.id, "; ".join(reasons), target)
    else:
        log.info("%s: refused: %s", card.id, "; ".join(reasons))


def summary_table(records: list[dict[str, Any]]) -> str:
    """The Markdown table the docs quote."""
    lines = ["| modality (default level) | fp32 PSNR / SSIM | int8 PSNR / SSIM | PSNR change, every level (dB) "
             "| fp32 ms | int8 ms | speed-up | offered |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        c = r["comparison"]
        deltas = ", ".join(f"{d['psnr_delta_db']:+.3f}" for d in c["deltas_by_level"].values())
        failed = [limit for limit in ("PSNR", "SSIM", "speed") if any(limit in reason for reason in r["refusals"])]
        lines.append(f"| {r['modality'].upper()} ({r['evaluation']['default_level']:g}) | "
                     f"{c['reference_psnr']:.2f} dB / {c['reference_ssim']:.4f} | "
                     f"{c['psnr']:.2f} dB / {c['ssim']:.4f} | {deltas} | {c['reference_ms_per_image']:.0f} | "
                     f"{c['ms_per_image']:.0f} | {c['speedup_over_reference']:.2f}x | "
                     f"{'yes' if r['kept'] else 'no (' + ', '.join(failed) + ')'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from training.data.__main__ import default_cache

    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", action="append", choices=[*modality_names(), "all"])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--prepared", type=Path, default=default_cache() / "prepared")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where quantization.json goes")
    parser.add_argument("--slices", type=int, default=4, help="test slices per volume (as training.evaluate)")
    parser.add_argument("--crop", type=int, default=512, help="test crop size (as training.evaluate)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads (the service's default)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model")
    parser.add_argument("--activations", choices=["QInt8", "QUInt8"], default=Recipe.activation_type)
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    parser.add_argument("--calibration-crops", type=int, default=Recipe.calibration_crops)
    parser.add_argument("--quantize-edge-convs", action="store_true",
                        help="quantise the first and last convolutions too (for comparison)")
    parser.add_argument("--dry-run", action="store_true", help="evaluate and record, but write no model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recipe = Recipe(activation_type=args.activations, reduce_range=args.reduce_range,
                    calibration_crops=args.calibration_crops, float_edge_convs=not args.quantize_edge_convs)
    run = Run(models=args.models, prepared=args.prepared, slices=args.slices, crop=args.crop, threads=args.threads,
              repeats=args.repeats, write=not args.dry_run)
    command = shlex.join(["python", "-m", "training.quantize", *(sys.argv[1:] if argv is None else argv)])
    chosen = args.modality or ["all"]
    records = [quantize_modality(m, recipe, run, command) for m in modality_names() if m in chosen or "all" in chosen]
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "quantization.json"
    # Quantising one modality again keeps the others' records.
    done = {r["modality"] for r in records}
    earlier = json.loads(record_path.read_text()) if record_path.exists() else []
    merged = sorted([r for r in earlier if r["modality"] not in done] + records, key=lambda r: r["modality"])
    record_path.write_text(json.dumps(merged, indent=2) + "\n")
    print(summary_table(records))


if __name__ == "__main__":
    main()
