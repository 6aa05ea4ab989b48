"""The whole training schedule of the served U-Nets, one command per machine:
``python -m training.schedule --profile cpu`` (what made the committed models) or
``python -m training.schedule --profile gpu`` (one NVIDIA GPU, about 8 minutes).

1. Pretraining: one conditioned U-Net on every modality's images and noise (``--also``).
2. Fine-tuning: each modality's config starts from it (``init_from``) on its own data and noise.
3. Export: each fine-tuned model to ``models/<modality>/unet`` with its card, as the default.

The configs are the same for both profiles; a profile only sets the time budgets, batch and
patch sizes (a GPU takes larger ones at no cost in time) and the learning rates. Every run is
resumable: run the same command again and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from app.modality import modality_names

PRETRAIN_RUN = "pretrain-unet"


@dataclass(frozen=True)
class Profile:
    pretrain_minutes: float
    finetune_minutes: float
    batch_size: int
    patch_size: int
    pretrain_learning_rate: float = 1e-3
    # Longer fine-tuning where it measured better on unseen sources (docs/TRAINING.md).
    finetune_minutes_by_modality: tuple[tuple[str, float], ...] = ()
    # (modality, config, minutes): a further fine-tune from the modality's run, whose result is
    # the one exported (its config's init_from names the run it continues).
    continuations: tuple[tuple[str, str, float], ...] = ()

    def finetune_minutes_for(self, modality: str) -> float:
        return dict(self.finetune_minutes_by_modality).get(modality, self.finetune_minutes)


PROFILES = {
    # Two CPU cores: about 10k pretraining steps, 3k fine-tuning steps per modality; CT 10k (60
    # minutes: +0.3-0.5 dB on every unseen-source row over 11); MR 40 on its borrowed CT and
    # X-ray texture (docs/TRAINING.md).
    # CT then continues 18 minutes with 60 % white Gaussian patches (2.2.0: +0.1-0.2 dB on five
    # of six unseen-source rows); MR continues in 128 x 128 patches, early-stopped after 29 minutes
    # (2.2.0: +0.07-0.31 dB on every unseen-source row).
    "cpu": Profile(pretrain_minutes=40, finetune_minutes=11, batch_size=16, patch_size=64,
                   finetune_minutes_by_modality=(("ct", 60), ("mr", 40)),
                   continuations=(("ct", "ct-unet-gaussian", 18), ("mr", "mr-unet-p128", 40))),
    # One GPU: larger batches and patches in a budget that fits about 8 minutes with the export.
    "gpu": Profile(pretrain_minutes=4, finetune_minutes=1, batch_size=64, patch_size=128),
}


def plan(profile: Profile, configs: Path, runs: Path) -> list[tuple[str, list[str]]]:
    """(module, argv) of every step, in order."""
    sizes = ["--batch-size", str(profile.batch_size), "--patch-size", str(profile.patch_size)]
    steps: list[tuple[str, list[str]]] = [("training.train", [
        "--config", str(configs / "ct-unet.toml"), "--name", PRETRAIN_RUN, "--from-scratch",
        "--also", str(configs / "mr-unet.toml"), "--also", str(configs / "xray-unet.toml"),
        "--minutes", str(profile.pretrain_minutes), "--learning-rate", str(profile.pretrain_learning_rate),
        "--runs", str(runs), "--no-progress", *sizes])]
    for modality in modality_names():
        steps.append(("training.train", ["--config", str(configs / f"{modality}-unet.toml"), "--runs", str(runs),
                                         "--minutes", str(profile.finetune_minutes_for(modality)), "--no-progress",
                                         *sizes]))
    exported = {modality: f"{modality}-unet" for modality in modality_names()}
    for modality, config, minutes in profile.continuations:
        # A continuation's batch and patch sizes are its config's own (mr-unet-p128: 4 of 128 x 128).
        steps.append(("training.train", ["--config", str(configs / f"{config}.toml"), "--runs", str(runs),
                                         "--minutes", str(minutes), "--no-progress"]))
        exported[modality] = config
    for modality in modality_names():
        steps.append(("training.export", ["--run", str(runs / exported[modality]), "--default"]))
    return steps


def main(argv: list[str] | None = None) -> None:
    import importlib

    parser = argparse.ArgumentParser(prog="python -m training.schedule", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--configs", type=Path, default=Path("training/configs"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--dry-run", action="store_true", help="print the steps only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for module, step in plan(PROFILES[args.profile], args.configs, args.runs):
        print(f"python -m {module} {' '.join(step)}", flush=True)
        if not args.dry_run:
            importlib.import_module(module).main(step)


if __name__ == "__main__":
    main()
