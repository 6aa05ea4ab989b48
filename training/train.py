"""Train one denoiser: ``python -m training.train --config training/configs/ct-unet.toml``.

``--also`` adds other configs' data and noise (same architecture) to one run, a batch from each
in turn at random: pretraining on every modality's images and noise, which a per-modality run
then fine-tunes from (``init_from`` in its config). Validation is then the mean over all of them.

Readable top to bottom: load config and data, build the model, then loop: sample a batch, step,
and every ``val_every`` steps validate, checkpoint, reduce the learning rate on a plateau and stop
early when validation stops improving. A run is resumable: it continues from ``last.pt`` in its
run folder (model, optimiser, scheduler, sampler RNG, step, elapsed time), and its time budget
counts across resumptions. ``best.pt`` carries everything needed to rebuild the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.quality.reference import psnr, reference_data_range
from training.config import TrainConfig, load_config
from training.data.__main__ import default_cache
from training.dataset import PatchSampler, ValidationImage, load_training_slices, validation_set
from training.inference import denoise_native, torch_predictor
from training.nets import build, parameter_count

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """1 - SSIM with a uniform window, on unit-range images (data range 1)."""
    c1, c2 = 0.01**2, 0.03**2
    mean = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mu_p, mu_t = mean(prediction), mean(target)
    var_p = mean(prediction * prediction) - mu_p * mu_p
    var_t = mean(target * target) - mu_t * mu_t
    cov = mean(prediction * target) - mu_p * mu_t
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1.0 - ssim.mean()


def loss_fn(config: TrainConfig, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    kind = config.optim.loss
    if kind == "mse":
        return F.mse_loss(prediction, target)
    loss = F.l1_loss(prediction, target)
    if kind == "l1+ssim":
        loss = loss + config.optim.ssim_weight * ssim_loss(prediction, target)
    return loss


def validate(model: torch.nn.Module, images: list[ValidationImage], config: TrainConfig,
             device: torch.device) -> float:
    """Mean PSNR (dB) over the validation images, in native units; a conditioned model is told
    the true noise level."""
    model.eval()
    predict = torch_predictor(model, device)
    scores = []
    for image in images:
        sigma = image.sigma if config.run.noise_map else None
        denoised = denoise_native(predict, image.noisy, config.normalisation, sigma, config.noise.non_negative)
        scores.append(psnr(image.clean, denoised, reference_data_range(image.clean, config.run.modality)))
    model.train()
    return float(np.mean(scores))


def validation_images(prepared: Path, config: TrainConfig) -> list[ValidationImage]:
    """The physics noise at the default level and, where trained on, white Gaussian noise at the
    middle of its range (geometric): checkpoints are chosen for both."""
    images = validation_set(prepared, config, seed=config.run.seed + 1)
    if config.noise.gaussian_fraction > 0 and config.noise.gaussian_range is not None:
        low, high = config.noise.gaussian_range
        images += validation_set(prepared, config, seed=config.run.seed + 2, family="gaussian",
                                 level=math.sqrt(low * high))
    return images


def _checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def train(config: TrainConfig, prepared: Path, run_dir: Path, progress: bool = True,
          also: list[TrainConfig] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    torch.manual_seed(config.run.seed)
    device = pick_device()
    model = build(config.run.architecture, config.run.channels, config.run.noise_map)
    if config.run.init_from:
        start = torch.load(config.run.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict(start["model_state"])
        log.info("%s: weights from %s (step %d)", config.run.name, config.run.init_from, start["progress"]["step"])
    model = model.to(device).to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.optim.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=config.optim.plateau_factor, patience=config.optim.plateau_patience)
    configs = [config, *(also or [])]
    for other in configs[1:]:
        if (other.run.architecture, other.run.channels, other.run.noise_map) != (
                config.run.architecture, config.run.channels, config.run.noise_map):
            raise ValueError(f"{other.run.name} builds another network than {config.run.name}")
    samplers = [PatchSampler(load_training_slices(prepared, c), c, seed=c.run.seed) for c in configs]
    sampler = samplers[0]
    validations = [(c, validation_images(prepared, c)) for c in configs]
    log.info("%s: %d parameters, %d validation images, device %s", config.run.name,
             parameter_count(model), sum(len(v) for _, v in validations), device)

    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "best_psnr": -math.inf, "evals_since_best": 0,
                             "history": []}
    last = run_dir / "last.pt"
    if last.exists():
        saved = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(saved["model_state"])
        optimiser.load_state_dict(saved["optimiser_state"])
        scheduler.load_state_dict(saved["scheduler_state"])
        for each, rng_state in zip(samplers, saved["sampler_rng"], strict=True):
            each.rng.bit_generator.state = rng_state
        torch.set_rng_state(saved["torch_rng"])
        state = saved["progress"]
        log.info("resumed %s at step %d (%.1f min used)", config.run.name, state["step"], state["elapsed_s"] / 60)

    def snapshot() -> dict[str, Any]:
        return {
            "model_args": {"architecture": config.run.architecture, "channels": config.run.channels,
                           "noise_map": config.run.noise_map},
            "config": config.model_dump(mode="json"),
            "model_state": model.state_dict(),
            "optimiser_state": optimiser.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "sampler_rng": [each.rng.bit_generator.state for each in samplers],
            "torch_rng": torch.get_rng_state(),
            "progress": state,
        }

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.optim.max_steps, initial=state["step"], desc=config.run.name, unit="step")
    # Recorded on the card: which machine made the model.
    state["device"] = f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu" else (
        f"{device.type} ({torch.cuda.get_device_name(device)})")
    budget_s = config.optim.max_minutes * 60
    started = time.monotonic() - state["elapsed_s"]
    running_loss = 0.0
    while state["step"] < config.optim.max_steps:
        if len(samplers) > 1:
            sampler = samplers[int(sampler.rng.integers(len(samplers)))]
        clean, noisy = sampler.batch()
        target = torch.from_numpy(clean).to(device).to(memory_format=torch.channels_last)
        inputs = torch.from_numpy(noisy).to(device).to(memory_format=torch.channels_last)
        loss = loss_fn(config, model(inputs), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        state["step"] += 1
        running_loss += loss.item()
        if bar is not None:
            bar.update(1)
        out_of_time = time.monotonic() - started >= budget_s
        if state["step"] % config.optim.val_every == 0 or out_of_time or state["step"] == config.optim.max_steps:
            score = float(np.mean([validate(model, images, c, device) for c, images in validations]))
            scheduler.step(score)
            state["elapsed_s"] = time.monotonic() - started
            entry = {"step": state["step"], "val_psnr": round(score, 4), "train_loss": running_loss / config.optim.val_every,
                     "lr": optimiser.param_groups[0]["lr"], "minutes": round(state["elapsed_s"] / 60, 2)}
            state["history"].append(entry)
            running_loss = 0.0
            if bar is not None:
                bar.set_postfix(val_psnr=f"{score:.2f}", lr=f"{entry['lr']:.1e}")
            log.info("%s %s", config.run.name, entry)
            if score > state["best_psnr"]:
                state["best_psnr"], state["evals_since_best"] = score, 0
                _checkpoint(run_dir / "best.pt", snapshot())
            else:
                state["evals_since_best"] += 1
            _checkpoint(last, snapshot())
            if state["evals_since_best"] >= config.optim.early_stop_patience:
                log.info("%s: early stop at step %d", config.run.name, state["step"])
                break
            if out_of_time:
                log.info("%s: time budget of %.0f min reached at step %d", config.run.name,
                         config.optim.max_minutes, state["step"])
                break
    if bar is not None:
        bar.close()
    return run_dir / "best.pt"


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` with the overrides' non-None values."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in overrides.items():
        merged[section].update({k: v for k, v in values.items() if v is not None})
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, default=default_cache() / "prepared")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another config whose data and noise join this run (pretraining)")
    parser.add_argument("--name", help="run name (default: the config's)")
    parser.add_argument("--minutes", type=float, help="time budget (default: the config's)")
    parser.add_argument("--steps", type=int, help="step budget (default: the config's)")
    parser.add_argument("--learning-rate", type=float, help="(default: the config's)")
    parser.add_argument("--batch-size", type=int, help="(default: the config's)")
    parser.add_argument("--patch-size", type=int, help="(default: the config's)")
    parser.add_argument("--from-scratch", action="store_true", help="ignore the config's init_from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    overrides = {"run": {"name": args.name},
                 "data": {"batch_size": args.batch_size, "patch_size": args.patch_size},
                 "optim": {"max_minutes": args.minutes, "max_steps": args.steps, "learning_rate": args.learning_rate}}
    config = TrainConfig.model_validate(_merge(config.model_dump(mode="json"), overrides))
    if args.from_scratch:
        config = config.model_copy(update={"run": config.run.model_copy(update={"init_from": None})})
    also = [load_config(path) for path in args.also]
    best = train(config, args.prepared, args.runs / config.run.name, progress=not args.no_progress, also=also)
    print(best)


if __name__ == "__main__":
    main()
