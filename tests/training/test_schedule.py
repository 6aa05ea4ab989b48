"""The training schedule: the same configs on every machine, the steps in a working order."""

from __future__ import annotations

from pathlib import Path

from training.config import load_config
from training.schedule import PRETRAIN_RUN, PROFILES, main, plan


def test_every_step_uses_the_committed_configs_and_fine_tunes_from_the_pretraining() -> None:
    configs = Path("training/configs")
    for name, profile in PROFILES.items():
        steps = plan(profile, configs, Path("runs"))
        trains = 4 + len(profile.continuations)
        assert [module for module, _ in steps] == ["training.train"] * trains + ["training.export"] * 3
        pretrain = steps[0][1]
        assert pretrain[pretrain.index("--name") + 1] == PRETRAIN_RUN and "--from-scratch" in pretrain
        for _, argv in steps[1:4]:
            config = load_config(Path(argv[argv.index("--config") + 1]))
            assert config.run.init_from == f"runs/{PRETRAIN_RUN}/best.pt"  # the pretraining's output
            assert argv[argv.index("--batch-size") + 1] == str(profile.batch_size)
        for _, argv in steps[4:trains]:  # a continuation starts from its modality's fine-tune
            config = load_config(Path(argv[argv.index("--config") + 1]))
            assert config.run.init_from == f"runs/{config.run.modality}-unet/best.pt"
        exported = [argv[argv.index("--run") + 1] for _, argv in steps[trains:]]
        continued = {modality: f"runs/{config}" for modality, config, _ in profile.continuations}
        assert exported == [continued.get(m, f"runs/{m}-unet") for m in ("ct", "mr", "xray")], name
    gpu, cpu = PROFILES["gpu"], PROFILES["cpu"]
    assert gpu.pretrain_minutes + 3 * gpu.finetune_minutes <= 8  # the GPU entry point's budget
    assert gpu.batch_size > cpu.batch_size and gpu.patch_size > cpu.patch_size


def test_a_modality_may_fine_tune_longer() -> None:
    steps = plan(PROFILES["cpu"], Path("training/configs"), Path("runs"))
    minutes = {argv[argv.index("--config") + 1]: argv[argv.index("--minutes") + 1] for _, argv in steps[1:4]}
    assert minutes == {
        "training/configs/ct-unet.toml": "60",
        "training/configs/mr-unet.toml": "40",
        "training/configs/xray-unet.toml": "11",
    }


def test_dry_run_prints_the_commands(capsys) -> None:  # type: ignore[no-untyped-def]
    main(["--profile", "gpu", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0].startswith("python -m training.train --config")
    assert "--batch-size 64" in lines[0]
