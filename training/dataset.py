"""Training patches with noise added on the fly, and a fixed validation set.

Slices are normalised once with the card's normalisation (a fixed HU window for CT, a window
read off each clean slice for MR and X-ray). Each step samples patches with augmentation, picks a
noise family (the modality's physics noise, or white Gaussian noise for ``gaussian_fraction`` of
the patches) and a level from its range, so no two epochs see the same noise. A conditioned
model also gets the noise map (the per-pixel standard deviation, in unit range), scaled by a
log-normal jitter so that an estimator's error at serving time costs little.

Augmentation: MR and X-ray patches are rotated (within the configured angle), zoomed and flipped
before noise is added. CT projection noise is precomputed and must keep its texture, so those
patches get only flips and quarter turns, applied to image and noise alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.inference.normalisation import to_unit_range, window_for
from training.config import TrainConfig
from training.data.prepare import load_manifest
from training.degrade import Degraded, NoiseFamily, XrayDetector, add_white_gaussian, quantise
from training.noise_models import PatchContext, degrade_image, noise_model_for


@dataclass
class TrainingSlice:
    clean_unit: np.ndarray  # (H, W) float32
    window_width: float  # image units per unit-range step
    zero_unit: float  # where the stored value 0 falls in unit range (clipping of magnitudes)
    median_clipped: float = 0.0  # median of the non-negative unit image (X-ray physics)
    # Noise simulated when the data were prepared (CT): (K, H, W) native units at the reference
    # flux, and its level there.
    noise_fields: np.ndarray | None = None
    noise_level_at_reference: float = 0.0


def _volume_path(prepared: Path, record: dict) -> Path:
    return prepared / record["modality"] / f"{record['volume_id']}.npy"


def _records(prepared: Path, modality: str, split: str) -> list[dict]:
    return [r for r in load_manifest(prepared)["volumes"] if r["modality"] == modality and r["split"] == split]


def load_training_slices(prepared: Path, config: TrainConfig) -> list[TrainingSlice]:
    """This modality's training slices, then those of ``extra_modalities``, all normalised the same way."""
    slices: list[TrainingSlice] = []
    min_side = config.data.patch_size
    for modality in [config.run.modality, *config.data.extra_modalities]:
        for record in _records(prepared, modality, "train"):
            volume = np.load(_volume_path(prepared, record))
            noise = None
            noise_path = _volume_path(prepared, record).with_suffix(".noise.npy")
            if modality == config.run.modality and noise_path.exists():
                noise = np.load(noise_path, mmap_mode="r")
            borrowed_magnitude = config.noise.non_negative and modality != config.run.modality
            for index, clean in enumerate(volume):
                if min(clean.shape) < min_side:
                    continue
                if borrowed_magnitude:
                    # Another modality's slice has no physical zero (CT in HU goes to -1024): its
                    # floor becomes the zero of a magnitude image, so magnitude noise (Rician) sees
                    # dark air as dark, not as a bright |negative| value.
                    clean = clean - clean.min()
                window = window_for(clean, config.normalisation)
                unit = to_unit_range(clean, window)
                # Magnitudes are clipped at the stored zero, but never above the slice's own
                # floor: another modality's slice (CT in HU, for X-ray) has no physical zero there.
                zero_unit = min(-window.low / window.width, float(unit.min()))
                item = TrainingSlice(unit, window.width, zero_unit=zero_unit,
                                     median_clipped=float(np.median(np.clip(unit, 0.0, None))))
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
        self.noise_model = noise_model_for(config.run.modality)
        self.context = PatchContext(rng=self.rng, patch_size=config.data.patch_size, warped_crop=self._warped_crop,
                                    flip=self._flip, log_uniform=self._log_uniform,
                                    xray_pedestal_range=config.noise.xray_pedestal_range,
                                    xray_read_range=config.noise.xray_read_range)

    def _log_uniform(self, bounds: tuple[float, float]) -> float:
        low, high = bounds
        return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def sample_level(self) -> float:
        low, high = self.config.noise.train_range
        if self.config.noise.log_uniform:
            return self._log_uniform((low, high))
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

    def _physics(self, item: TrainingSlice) -> tuple[np.ndarray, Degraded]:
        return self.noise_model.patch(item, self.sample_level(), self.context)

    def _gaussian(self, item: TrainingSlice) -> tuple[np.ndarray, Degraded]:
        assert self.config.noise.gaussian_range is not None
        level = self._log_uniform(self.config.noise.gaussian_range)
        clean = self._warped_crop(item.clean_unit)
        sigma = self.noise_model.gaussian_unit_sigma(level, item.window_width)
        return clean, add_white_gaussian(clean, sigma, self.rng)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clean, noisy, noise map as given to the model), each (P, P) float32 in unit range."""
        item = self.slices[int(self.rng.choice(len(self.slices), p=self.weights))]
        noise = self.config.noise
        # A slice without the precomputed noise its model needs (another modality's) gets white noise.
        without_fields = self.noise_model.precomputed_fields and item.noise_fields is None
        if without_fields or self.rng.random() < noise.gaussian_fraction:
            clean, degraded = self._gaussian(item)
        else:
            clean, degraded = self._physics(item)
        if self.rng.random() < noise.quantise_fraction:
            degraded = quantise(degraded.noisy, degraded.sigma, self._log_uniform(noise.quantise_levels))
        noisy = degraded.noisy
        if noise.non_negative:
            noisy = np.maximum(noisy, np.float32(item.zero_unit))
        jitter = math.exp(self.rng.normal(0.0, noise.map_jitter)) if noise.map_jitter > 0 else 1.0
        return clean, noisy, (degraded.sigma * jitter).astype(np.float32)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        clean, noisy, _ = self.sample()
        return clean, noisy

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean (N, 1, P, P), model input (N, C, P, P)) float32; C is 2 (noisy, noise map) for a
        conditioned model, else 1."""
        samples = [self.sample() for _ in range(self.config.data.batch_size)]
        clean = np.stack([s[0] for s in samples])[:, np.newaxis].astype(np.float32)
        channels = (1, 2) if self.config.run.noise_map else (1,)
        inputs = np.stack([np.stack([s[c] for c in channels]) for s in samples]).astype(np.float32)
        return clean, inputs


@dataclass(frozen=True)
class ValidationImage:
    clean: np.ndarray  # native units
    noisy: np.ndarray  # native units
    level: float
    volume_id: str
    sigma: np.ndarray | None = None  # native units: the true per-pixel noise standard deviation
    family: NoiseFamily = "physics"


def crop_origins(shape: tuple[int, ...], size: int, count: int) -> list[tuple[int, int]]:
    """``count`` crop corners spread evenly over the image (one: the centre)."""
    rows, cols = shape
    per_side = max(1, round(math.sqrt(count)))
    tops = np.linspace(0, max(0, rows - size), per_side + 2)[1:-1] if per_side > 1 else [max(0, (rows - size) // 2)]
    lefts = np.linspace(0, max(0, cols - size), per_side + 2)[1:-1] if per_side > 1 else [max(0, (cols - size) // 2)]
    return [(int(t), int(left)) for t in tops for left in lefts]


def validation_set(prepared: Path, config: TrainConfig, seed: int, max_slices_per_volume: int = 3,
                   split: str = "val", min_images_per_volume: int = 1, family: NoiseFamily = "physics",
                   level: float | None = None) -> list[ValidationImage]:
    """Noisy crops at ``level`` (default: the config's default level), simulated with a fixed seed.

    A volume with fewer slices than ``min_images_per_volume`` (a single radiograph) gives several
    crops spread over each slice instead.
    """
    rng = np.random.default_rng(seed)
    level = config.noise.default_level if level is None else level
    detector = XrayDetector(read_sigma=config.noise.xray_read_sigma)
    images: list[ValidationImage] = []
    for record in _records(prepared, config.run.modality, split):
        volume = np.load(_volume_path(prepared, record))
        picks = np.linspace(0, len(volume) - 1, min(max_slices_per_volume, len(volume))).round().astype(int)
        pixel_mm = (record.get("pixel_spacing_mm") or [1.0, 1.0])[0]
        for index in sorted(set(picks.tolist())):
            clean = volume[index]
            # CT noise is simulated on the whole slice (the projections see all of it), then cropped.
            degraded = degrade_image(config.run.modality, clean, level, rng, pixel_mm=pixel_mm,
                                     normalisation=config.normalisation, family=family, detector=detector)
            size = config.data.validation_crop
            crops = max(1, -(-min_images_per_volume // len(picks)))
            for top, left in crop_origins(clean.shape, size, crops):
                window = (slice(top, top + size), slice(left, left + size))
                images.append(ValidationImage(clean[window], degraded.noisy[window], level, record["volume_id"],
                                              degraded.sigma[window], family))
    return images
