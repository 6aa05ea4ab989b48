"""Export a trained checkpoint to ONNX with a model card:
``python -m training.export --run runs/ct-unet``.

The graph has dynamic batch, height and width. Before the card is written, ONNX Runtime's output
is compared with PyTorch's at odd and full sizes; a model that disagrees by more than 1e-4 is not
exported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.inference.card import ModelCard, NoiseModelSpec, TensorSpec, write_card
from app.modality import profile
from training.config import TrainConfig
from training.data.prepare import load_manifest
from training.nets import build, parameter_count
from training.nets.common import Denoiser
from training.noise_models import noise_model_for

log = logging.getLogger(__name__)

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"
PARITY_SIZES = ((37, 61), (512, 512))
PARITY_TOLERANCE = 1e-4
MODEL_VERSION = "1.1.0"  # the blind models; 1.1.0: retrained on the leave-one-source-out splits
# Conditioned on the noise level: a second input channel, a different contract.
CONDITIONED_MODEL_VERSION = "2.0.0"
GAUSSIAN_DESCRIPTION = " Also trained on signed white Gaussian noise ({units}) over {low:g}-{high:g}."

def load_checkpoint(path: Path) -> tuple[Denoiser, TrainConfig, dict[str, Any]]:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.model_validate(saved["config"])
    model = build(saved["model_args"]["architecture"], saved["model_args"]["channels"],
                  saved["model_args"].get("noise_map", False))
    model.load_state_dict(saved["model_state"])
    model.eval()
    return model, config, saved["progress"]


def export_onnx(model: Denoiser, path: Path) -> None:
    example = torch.rand(1, model.in_channels, 64, 64)
    batch, height, width = torch.export.Dim("batch", min=1), torch.export.Dim("height", min=4), torch.export.Dim("width", min=4)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={"x": {0: batch, 2: height, 3: width}}, verbose=False)
    program.save(str(path), external_data=False)


def check_parity(model: Denoiser, path: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    rng = np.random.default_rng(0)
    for height, width in PARITY_SIZES:
        x = rng.random((2, model.in_channels, height, width), dtype=np.float32)
        if model.in_channels == 2:  # a noise map: small, positive, varying over the image
            x[:, 1] = 0.005 + 0.1 * x[:, 1]
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        if actual.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {actual.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(actual - expected))))
    if worst > PARITY_TOLERANCE:
        raise AssertionError(f"ONNX Runtime differs from PyTorch by {worst:.2e} > {PARITY_TOLERANCE}")
    return worst


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "training"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_data_summary(prepared: Path, modality: str) -> dict[str, Any]:
    manifest = load_manifest(prepared)
    volumes = [v for v in manifest["volumes"] if v["modality"] == modality]
    return {
        "manifest_sha256": manifest["sha256"],
        "prepared_by": "python -m training.data prepare",
        "volumes": [{k: v[k] for k in ("volume_id", "split", "package", "package_version", "file",
                                       "file_sha256", "description")} | {"slices": len(v["slice_indices"])}
                    for v in volumes],
    }


def export(
    run_dir: Path, prepared: Path, models_dir: Path, default: bool, command: str, version: str | None = None
) -> Path:
    model, config, progress = load_checkpoint(run_dir / "best.pt")
    target = models_dir / config.run.modality / config.run.architecture
    target.mkdir(parents=True, exist_ok=True)
    onnx_path = target / "model.onnx"
    export_onnx(model, onnx_path)
    worst = check_parity(model, onnx_path)
    log.info("exported %s, ONNX Runtime vs PyTorch max abs difference %.2e", onnx_path, worst)
    physics = noise_model_for(config.run.modality)
    kind, description, parameter = physics.kind, physics.description, physics.parameter
    noise = config.noise
    if noise.gaussian_fraction > 0 and noise.gaussian_range is not None:
        kind += "+white_gaussian"
        description += GAUSSIAN_DESCRIPTION.format(units=profile(config.run.modality).gaussian_units,
                                                   low=noise.gaussian_range[0], high=noise.gaussian_range[1])
    conditioned = model.in_channels == 2
    if conditioned and config.noise_map is None:
        raise ValueError(f"{config.run.name} takes a noise map but its config has no [noise_map] section")
    best = max(progress["history"], key=lambda h: h["val_psnr"])
    card = ModelCard(
        id=f"{config.run.modality}-{config.run.architecture}",
        modality=config.run.modality,
        architecture=config.run.architecture,
        version=version or (CONDITIONED_MODEL_VERSION if conditioned else MODEL_VERSION),
        default=default,
        sha256=sha256_file(onnx_path),
        parameters=parameter_count(model),
        input=TensorSpec(name=INPUT_NAME, channels=model.in_channels),
        output=TensorSpec(name=OUTPUT_NAME),
        spatial_multiple=1,
        receptive_field=model.receptive_field,
        normalisation=config.normalisation,
        noise_model=NoiseModelSpec(kind=kind, description=description, parameter=parameter,
                                   train_range=config.noise.train_range, default_level=config.noise.default_level,
                                   evaluation_levels=config.noise.evaluation_levels,
                                   gaussian_train_range=noise.gaussian_range if noise.gaussian_fraction > 0 else None,
                                   gaussian_evaluation_levels=noise.gaussian_evaluation_levels),
        noise_map=config.noise_map if conditioned else None,
        non_negative=noise.non_negative,
        training_data=training_data_summary(prepared, config.run.modality),
        training_config=config.model_dump(mode="json"),
        validation_metrics={"psnr_db": best["val_psnr"], "at_step": best["step"], "steps_trained": progress["step"],
                            "training_minutes": round(progress["elapsed_s"] / 60, 1),
                            "trained_on": progress.get("device", "cpu"),
                            "noise_level": config.noise.default_level,
                            "onnx_parity_max_abs_diff": worst},
        code_version=code_version(),
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_card(target, card)
    return target


def main(argv: list[str] | None = None) -> None:
    from training.data.__main__ import default_cache

    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="run folder with best.pt")
    parser.add_argument("--prepared", type=Path, default=default_cache() / "prepared")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--default", action="store_true", help="serve this model by default for its modality")
    parser.add_argument("--version", help="the card's version (default: the family's; a retrained model needs a new one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = json.loads((args.run / "config.json").read_text())
    name = config["run"]["name"]
    minutes = config["optim"]["max_minutes"]
    command = (f"python -m training.train --config training/configs/{name}.toml --minutes {minutes:g} && "
               f"python -m training.export --run runs/{name}" + (" --default" if args.default else "")
               + (f" --version {args.version}" if args.version else ""))
    if config["run"].get("init_from"):  # fine-tuned from the pretraining: the schedule made it
        command = f"python -m training.schedule --profile cpu (its pretraining; then the fine-tuning: {command})"
    print(export(args.run, args.prepared, args.models, args.default, command, args.version))


if __name__ == "__main__":
    main()
