"""The patch sampler: both noise families, the map channel, and magnitudes clipped only where the
image has a physical zero."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.dataset import PatchSampler, TrainingSlice

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def config(name: str, **noise: object) -> TrainConfig:
    raw = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    raw["run"]["init_from"] = None
    raw["data"] |= {"batch_size": 8, "patch_size": 32}
    raw["noise"] |= noise
    return TrainConfig.model_validate(raw)


def slice_of(unit: np.ndarray, zero_unit: float = 0.0) -> TrainingSlice:
    return TrainingSlice(unit.astype(np.float32), 1000.0, zero_unit=zero_unit,
                         median_clipped=float(np.median(np.clip(unit, 0, None))))


def test_a_conditioned_batch_carries_the_noise_map_as_channel_1() -> None:
    rng = np.random.default_rng(0)
    cfg = config("mr-unet", gaussian_fraction=1.0, map_jitter=0.0)
    sampler = PatchSampler([slice_of(0.5 + 0.1 * rng.random((96, 96)))], cfg, seed=1)
    clean, inputs = sampler.batch()
    assert clean.shape == (8, 1, 32, 32) and inputs.shape == (8, 2, 32, 32)
    low, high = cfg.noise.gaussian_range
    for noisy, sigma_map, target in zip(inputs[:, 0], inputs[:, 1], clean[:, 0]):
        sigma = float(sigma_map.mean())
        assert np.all(sigma_map == sigma_map[0, 0]) and low / 100 <= sigma <= high / 100
        assert np.std(noisy - target) == np.std(noisy - target)  # finite
    assert config("mr-autoencoder").run.noise_map is False


def test_map_jitter_spreads_the_told_level_around_the_true_one() -> None:
    cfg = config("mr-unet", gaussian_fraction=1.0, map_jitter=0.1, non_negative=False)
    sampler = PatchSampler([slice_of(np.full((96, 96), 0.5))], cfg, seed=2)
    ratios = []
    for _ in range(200):
        clean, noisy, told = sampler.sample()
        ratios.append(float(told.mean()) / float(np.std(noisy - clean)))
    assert 0.95 < np.median(ratios) < 1.05 and np.std(np.log(ratios)) > 0.05


def write_prepared(root: Path) -> Path:
    """A prepared folder (manifest and volumes) with one X-ray and one CT training volume."""
    import json

    rng = np.random.default_rng(4)
    volumes = {"xray": ("drr", 500.0 + 3000.0 * rng.random((1, 96, 96))),
               "ct": ("head", -1000.0 + 1400.0 * rng.random((2, 96, 96)))}
    records = []
    for modality, (volume_id, data) in volumes.items():
        (root / modality).mkdir(parents=True)
        np.save(root / modality / f"{volume_id}.npy", data.astype(np.float32))
        records.append({"volume_id": volume_id, "modality": modality, "split": "train"})
    (root / "manifest.json").write_text(json.dumps({"volumes": records, "sha256": "test"}))
    return root


def test_clipping_never_cuts_into_another_modalitys_slice(tmp_path: Path) -> None:
    """A CT slice in HU trains the X-ray model too: its 0 HU is no physical zero, so the clip
    point stays below its floor and its noise stays unbiased."""
    from training.dataset import load_training_slices

    cfg = config("xray-unet", gaussian_fraction=1.0, quantise_fraction=0.0)
    assert cfg.noise.non_negative and "ct" in cfg.data.extra_modalities
    slices = load_training_slices(write_prepared(tmp_path), cfg)
    assert len(slices) == 3
    assert all(item.zero_unit <= float(item.clean_unit.min()) for item in slices)
    sampler = PatchSampler(slices[1:], cfg, seed=3)  # the CT slices only
    bias = [float(np.mean(n - c)) / float(np.mean(s)) for c, n, s in (sampler.sample() for _ in range(300))]
    assert abs(np.mean(bias)) < 0.05
