"""Training patches with noise added on the fly, and a fixed validation set.

Slices are normalised once with the card's normalisation (a fixed HU window for CT, a window
read off each clean slice for MR and X-ray). Each step samples patches with augmentation and adds
noise at a level drawn from the configured range, so no two epochs see the same noise.

Augmentation: MR and X-ray patches are rotated (within the configured angle), zoomed and flipped
before noise is added. CT noise is precomputed in the projection domain and must keep its
texture, so CT patches get only flips and quarter turns, applied to image and noise alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.imaging.intensity import to_unit_range, window_for
from training.config import TrainConfig
from training.data.prepare import load_manifest
from training.degrade import degrade_image, degrade_xray_unit, xray_median_signal
from training.noise import add_rician_noise


@dataclass
class TrainingSlice:
    clean_unit: np.ndarray  # (H, W) float32
    window_width: float  # image units per unit-range step
    median_signal: float = 0.0  # X-ray only
    noise_fields: np.ndarray | None = None  # CT only: (K, H, W) HU at the reference flux
    noise_level_at_reference: float = 0.0  # CT only: HU


def _volume_path(prepared: Path, record: dict) -> Path:
    return prepared / record["modality"] / f"{record['volume_id']}.npy"


def _records(prepared: Path, modality: str, split: str) -> list[dict]:
    return [r for r in load_manifest(prepared)["volumes"] if r["modality"] == modality and r["split"] == split]


def load_training_slices(prepared: Path, config: TrainConfig) -> list[TrainingSlice]:
    slices: list[TrainingSlice] = []
    min_side = config.data.patch_size
    for record in _records(prepared, config.run.modality, "train"):
        volume = np.load(_volume_path(prepared, record))
        noise = None
        if config.run.modality == "ct":
            noise = np.load(_volume_path(prepared, record).with_suffix(".noise.npy"), mmap_mode="r")
        for index, clean in enumerate(volume):
            if min(clean.shape) < min_side:
                continue
            window = window_for(clean, config.normalisation)
            unit = to_unit_range(clean, window)
            item = TrainingSlice(unit, window.width)
            if config.run.modality == "xray":
                item.median_signal = xray_median_signal(unit)
            if noise is not None:
                item.noise_fields = np.asarray(noise[index], dtype=np.float32)
                item.noise_level_at_reference = float(record["noise_hu_at_reference_flux"][index])
            slices.append(item)
    if not slices:
        raise ValueError(f"no {config.run.modality} training slices of at least {min_side} pixels in {prepared}")
    return slices


class PatchSampler:
    def __init__(self, slices: list[TrainingSlice], config: TrainConfig, seed: int) -> None:
        self.slices = slices
        self.config = config
        self.rng = np.random.default_rng(seed)
        areas = np.array([s.clean_unit.size for s in slices], dtype=np.float64)
        self.weights = areas / areas.sum()

    def sample_level(self) -> float:
        low, high = self.config.noise.train_range
        if self.config.noise.log_uniform:
            return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        return float(self.rng.uniform(low, high))

    def _warped_crop(self, image: np.ndarray) -> np.ndarray:
        data = self.config.data
        size = data.patch_size
        angle = self.rng.uniform(-data.rotation_degrees, data.rotation_degrees)
        zoom = self.rng.uniform(*data.zoom)
        # Pick a centre far enough inside that the rotated, zoomed patch stays within the image.
        reach = size * math.sqrt(2) / 2 / zoom + 1
        rows, cols = image.shape
        cy = self.rng.uniform(min(reach, rows / 2), max(rows - reach, rows / 2))
        cx = self.rng.uniform(min(reach, cols / 2), max(cols - reach, cols / 2))
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
        matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
        patch = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return self._flip(patch)

    def _flip(self, patch: np.ndarray, state: tuple[int, bool] | None = None) -> np.ndarray:
        if not self.config.data.flips:
            return patch
        turns, mirror = state if state is not None else (int(self.rng.integers(4)), bool(self.rng.integers(2)))
        patch = np.rot90(patch, turns)
        return np.ascontiguousarray(patch[:, ::-1] if mirror else patch)

    def _ct_pair(self, item: TrainingSlice, level: float) -> tuple[np.ndarray, np.ndarray]:
        assert item.noise_fields is not None
        size = self.config.data.patch_size
        rows, cols = item.clean_unit.shape
        top = int(self.rng.integers(0, rows - size + 1))
        left = int(self.rng.integers(0, cols - size + 1))
        realisation = int(self.rng.integers(len(item.noise_fields)))
        clean = item.clean_unit[top:top + size, left:left + size]
        noise_hu = item.noise_fields[realisation, top:top + size, left:left + size]
        scale = level / max(item.noise_level_at_reference, 1e-6) / item.window_width
        state = (int(self.rng.integers(4)), bool(self.rng.integers(2)))
        clean = self._flip(clean, state)
        return clean, clean + self._flip(noise_hu * scale, state)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        item = self.slices[int(self.rng.choice(len(self.slices), p=self.weights))]
        level = self.sample_level()
        modality = self.config.run.modality
        if modality == "ct":
            return self._ct_pair(item, level)
        clean = self._warped_crop(item.clean_unit)
        if modality == "mr":
            return clean, add_rician_noise(clean, level / 100.0, self.rng)
        noisy = degrade_xray_unit(clean, level, item.median_signal, self.config.noise.xray_read_sigma, self.rng)
        return clean, noisy

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean, noisy), each (N, 1, P, P) float32."""
        pairs = [self.pair() for _ in range(self.config.data.batch_size)]
        clean = np.stack([p[0] for p in pairs])[:, np.newaxis].astype(np.float32)
        noisy = np.stack([p[1] for p in pairs])[:, np.newaxis].astype(np.float32)
        return clean, noisy


@dataclass(frozen=True)
class ValidationImage:
    clean: np.ndarray  # native units
    noisy: np.ndarray  # native units
    level: float
    volume_id: str


def crop_origins(shape: tuple[int, ...], size: int, count: int) -> list[tuple[int, int]]:
    """``count`` crop corners spread evenly over the image (one: the centre)."""
    rows, cols = shape
    per_side = max(1, round(math.sqrt(count)))
    tops = np.linspace(0, max(0, rows - size), per_side + 2)[1:-1] if per_side > 1 else [max(0, (rows - size) // 2)]
    lefts = np.linspace(0, max(0, cols - size), per_side + 2)[1:-1] if per_side > 1 else [max(0, (cols - size) // 2)]
    return [(int(t), int(left)) for t in tops for left in lefts]


def validation_set(prepared: Path, config: TrainConfig, seed: int, max_slices_per_volume: int = 3,
                   split: str = "val", min_images_per_volume: int = 1) -> list[ValidationImage]:
    """Noisy crops at the default level, simulated with a fixed seed.

    A volume with fewer slices than ``min_images_per_volume`` (a single radiograph) gives several
    crops spread over each slice instead.
    """
    rng = np.random.default_rng(seed)
    images: list[ValidationImage] = []
    for record in _records(prepared, config.run.modality, split):
        volume = np.load(_volume_path(prepared, record))
        picks = np.linspace(0, len(volume) - 1, min(max_slices_per_volume, len(volume))).round().astype(int)
        pixel_mm = (record.get("pixel_spacing_mm") or [1.0, 1.0])[0]
        for index in sorted(set(picks.tolist())):
            clean = volume[index]
            # CT noise is simulated on the whole slice (the projections see all of it), then cropped.
            noisy = degrade_image(config.run.modality, clean, config.noise.default_level, rng, pixel_mm=pixel_mm,
                                  normalisation=config.normalisation, read_sigma=config.noise.xray_read_sigma)
            size = config.data.validation_crop
            crops = max(1, -(-min_images_per_volume // len(picks)))
            for top, left in crop_origins(clean.shape, size, crops):
                images.append(ValidationImage(clean[top:top + size, left:left + size],
                                              noisy[top:top + size, left:left + size],
                                              config.noise.default_level, record["volume_id"]))
    return images
