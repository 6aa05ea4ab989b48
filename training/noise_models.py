"""Each modality's physics noise, one class per noise model behind one contract.

A modality's profile (``app/modality.py``) names its noise model; :func:`noise_model_for` finds
it here. A model knows how to add its noise to a training patch (unit range, cheap) and to a
whole image (native units, for validation and evaluation), how its white Gaussian level is
quoted, and how it describes itself on a model card. Nothing else in the training package
branches on a modality's name.

Two noise families per modality (``NoiseFamily``): ``physics`` (the model's own) and
``gaussian`` (signed, white, additive: what other reconstructions and processing chains leave,
and what a magnitude image with additive noise looks like, negative values included).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from app.inference.normalisation import NormalisationSpec, from_unit_range, to_unit_range, window_for
from app.modality import profile
from training.degrade import (Degraded, NoiseFamily, XrayDetector, add_white_gaussian, ct_flux_for_level,
                              xray_median_signal, xray_physics_unit)
from training.noise import add_rician_noise, ct_line_integrals, ct_noise_level, ct_projection_noise

if TYPE_CHECKING:
    from training.dataset import TrainingSlice

MR_ROBUST_MAX_PERCENTILE = 99.5
CALIBRATION_FLUX = 1.0e6
REFERENCE_NOISE_REALISATIONS = 2
# Slices with less body than this fraction (mostly air, beyond the ends of the patient) teach nothing.
_MIN_BODY_FRACTION = 0.05


@dataclass(frozen=True)
class PatchContext:
    """What a noise model may use to cut and augment a training patch."""

    rng: np.random.Generator
    patch_size: int
    warped_crop: Callable[[np.ndarray], np.ndarray]  # rotated, zoomed, flipped crop of a unit image
    flip: Callable[[np.ndarray, tuple[int, bool]], np.ndarray]  # quarter turns and mirror, as given
    log_uniform: Callable[[tuple[float, float]], float]
    xray_pedestal_range: tuple[float, float]
    xray_read_range: tuple[float, float]


class NoiseModel(ABC):
    name: ClassVar[str]  # what a modality profile calls it
    kind: ClassVar[str]  # the card's noise_model.kind
    description: ClassVar[str]
    parameter: ClassVar[str]  # what the level means, with its units
    # Noise simulated once per training slice when the data are prepared (too costly per step).
    precomputed_fields: ClassVar[bool] = False
    # Spatially correlated: the evaluation adds BM3D given the true noise power spectrum.
    correlated: ClassVar[bool] = False

    @abstractmethod
    def patch(self, item: TrainingSlice, level: float, context: PatchContext) -> tuple[np.ndarray, Degraded]:
        """(clean patch, noisy patch and its noise map), unit range."""

    @abstractmethod
    def image(self, clean: np.ndarray, level: float, rng: np.random.Generator, *, pixel_mm: float,
              normalisation: NormalisationSpec, detector: XrayDetector) -> Degraded:
        """A noisy version of a whole clean image and its noise map, native units."""

    @abstractmethod
    def gaussian_unit_sigma(self, level: float, window_width: float) -> float:
        """A white Gaussian ``level`` in unit range."""

    @abstractmethod
    def gaussian_sigma(self, clean: np.ndarray, level: float, normalisation: NormalisationSpec) -> float:
        """A white Gaussian ``level`` in the image's native units."""

    def prepare_slices(self, slices: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(the slices worth training on, their indices): all of them unless the modality says."""
        return slices, list(range(len(slices)))

    def reference_fields(self, clean: np.ndarray, pixel_mm: float, seed: int) -> tuple[np.ndarray, float]:
        """Precomputed noise realisations of a training slice and their level (``precomputed_fields``)."""
        raise NotImplementedError(f"{self.name} adds its noise per step")


class CtProjectionNoise(NoiseModel):
    """Projection-domain Poisson noise through filtered back-projection: correlated, streaky and
    anatomy-dependent; ``level`` = soft-tissue noise standard deviation in HU."""

    name = "ct_projection"
    kind = "ct_projection_poisson"
    description = ("Low-dose CT: Poisson photon counts plus Gaussian electronic noise on a 360-view parallel-beam "
                   "sinogram, reconstructed by ramp-filtered back-projection (correlated, streaky, anatomy-dependent).")
    parameter = "soft-tissue noise standard deviation, HU"
    precomputed_fields = True
    correlated = True

    def patch(self, item: TrainingSlice, level: float, context: PatchContext) -> tuple[np.ndarray, Degraded]:
        # The precomputed field must keep its texture: flips and quarter turns only, applied to
        # image and noise alike.
        assert item.noise_fields is not None
        size, rng = context.patch_size, context.rng
        rows, cols = item.clean_unit.shape
        top = int(rng.integers(0, rows - size + 1))
        left = int(rng.integers(0, cols - size + 1))
        realisation = int(rng.integers(len(item.noise_fields)))
        clean = item.clean_unit[top:top + size, left:left + size]
        noise_hu = item.noise_fields[realisation, top:top + size, left:left + size]
        scale = level / max(item.noise_level_at_reference, 1e-6) / item.window_width
        state = (int(rng.integers(4)), bool(rng.integers(2)))
        clean = context.flip(clean, state)
        noisy = (clean + context.flip(noise_hu * scale, state)).astype(np.float32)
        return clean, Degraded(noisy, np.full(clean.shape, level / item.window_width, dtype=np.float32))

    def image(self, clean: np.ndarray, level: float, rng: np.random.Generator, *, pixel_mm: float,
              normalisation: NormalisationSpec, detector: XrayDetector) -> Degraded:
        sinogram = ct_line_integrals(clean, pixel_mm)
        probe = ct_projection_noise(clean, pixel_mm, CALIBRATION_FLUX, rng, line_integrals=sinogram)
        flux = ct_flux_for_level(ct_noise_level(probe, clean), level)
        noisy = clean + ct_projection_noise(clean, pixel_mm, flux, rng, line_integrals=sinogram)
        # The level quoted for CT is the soft-tissue figure; the map carries that figure.
        return Degraded(noisy.astype(np.float32), np.full(clean.shape, level, dtype=np.float32))

    def gaussian_unit_sigma(self, level: float, window_width: float) -> float:
        return level / window_width

    def gaussian_sigma(self, clean: np.ndarray, level: float, normalisation: NormalisationSpec) -> float:
        return level

    def prepare_slices(self, slices: np.ndarray) -> tuple[np.ndarray, list[int]]:
        body = (slices > -500).reshape(len(slices), -1).mean(axis=1)
        keep = [i for i, fraction in enumerate(body) if fraction >= _MIN_BODY_FRACTION]
        # Below -1024 HU is padding outside the scanned circle, not anatomy: floor it at air.
        return np.maximum(slices[keep], -1024.0), keep

    def reference_fields(self, clean: np.ndarray, pixel_mm: float, seed: int) -> tuple[np.ndarray, float]:
        rng = np.random.default_rng(seed)
        sinogram = ct_line_integrals(clean, pixel_mm)
        fields = np.stack([ct_projection_noise(clean, pixel_mm, CALIBRATION_FLUX, rng, line_integrals=sinogram)
                           for _ in range(REFERENCE_NOISE_REALISATIONS)])
        return fields.astype(np.float16), ct_noise_level(fields[0], clean)


class RicianNoise(NoiseModel):
    """Complex Gaussian noise before the magnitude; ``level`` = sigma in percent of the clean
    image's 99.5th percentile."""

    name = "rician"
    kind = "rician"
    description = "Rician noise on magnitude images (complex Gaussian before the magnitude)."
    parameter = "sigma, percent of the image's 99.5th percentile"

    def patch(self, item: TrainingSlice, level: float, context: PatchContext) -> tuple[np.ndarray, Degraded]:
        clean = context.warped_crop(item.clean_unit)
        sigma = level / 100.0
        return clean, Degraded(add_rician_noise(clean, sigma, context.rng), np.full(clean.shape, sigma, np.float32))

    def image(self, clean: np.ndarray, level: float, rng: np.random.Generator, *, pixel_mm: float,
              normalisation: NormalisationSpec, detector: XrayDetector) -> Degraded:
        sigma = self.gaussian_sigma(clean, level, normalisation)
        return Degraded(add_rician_noise(clean, sigma, rng), np.full(clean.shape, sigma, dtype=np.float32))

    def gaussian_unit_sigma(self, level: float, window_width: float) -> float:
        return level / 100.0

    def gaussian_sigma(self, clean: np.ndarray, level: float, normalisation: NormalisationSpec) -> float:
        return level / 100.0 * float(np.percentile(clean, MR_ROBUST_MAX_PERCENTILE))


class PoissonGaussianNoise(NoiseModel):
    """Detector noise: Poisson quanta plus Gaussian read noise over a pedestal; ``level`` =
    detected quanta per pixel at the median intensity."""

    name = "poisson_gaussian"
    kind = "poisson_gaussian"
    description = "Poisson quantum noise plus Gaussian electronic read noise."
    parameter = "detected quanta per pixel at the median intensity"

    def patch(self, item: TrainingSlice, level: float, context: PatchContext) -> tuple[np.ndarray, Degraded]:
        clean = context.warped_crop(item.clean_unit)
        low, high = context.xray_read_range
        detector = XrayDetector(pedestal=float(context.rng.uniform(*context.xray_pedestal_range)),
                                read_sigma=context.log_uniform((low, high)) if high > low else low)
        return clean, xray_physics_unit(clean, level, item.median_clipped + detector.pedestal, detector, context.rng)

    def image(self, clean: np.ndarray, level: float, rng: np.random.Generator, *, pixel_mm: float,
              normalisation: NormalisationSpec, detector: XrayDetector) -> Degraded:
        window = window_for(clean, normalisation)
        unit = to_unit_range(clean, window)
        degraded = xray_physics_unit(unit, level, xray_median_signal(unit, detector.pedestal), detector, rng)
        return Degraded(from_unit_range(degraded.noisy, window).astype(np.float32),
                        (degraded.sigma * window.width).astype(np.float32))

    def gaussian_unit_sigma(self, level: float, window_width: float) -> float:
        return level / 100.0

    def gaussian_sigma(self, clean: np.ndarray, level: float, normalisation: NormalisationSpec) -> float:
        return level / 100.0 * window_for(clean, normalisation).width


_NOISE_MODELS: dict[str, NoiseModel] = {}


def register_noise_model(model: NoiseModel) -> NoiseModel:
    _NOISE_MODELS[model.name] = model
    return model


for _model in (CtProjectionNoise(), RicianNoise(), PoissonGaussianNoise()):
    register_noise_model(_model)


def noise_model_for(modality: str) -> NoiseModel:
    """The noise model the modality's profile names."""
    name = profile(modality).noise_model
    try:
        return _NOISE_MODELS[name]
    except KeyError:
        raise ValueError(f"modality {modality!r} names noise model {name!r}, which training does not know") from None


def degrade_image(modality: str, clean: np.ndarray, level: float, rng: np.random.Generator, *,
                  pixel_mm: float, normalisation: NormalisationSpec, family: NoiseFamily = "physics",
                  detector: XrayDetector = XrayDetector()) -> Degraded:
    """A noisy version of a whole clean image and its noise map, in its native units (float32)."""
    clean = np.asarray(clean, dtype=np.float32)
    model = noise_model_for(modality)
    if family == "gaussian":
        return add_white_gaussian(clean, model.gaussian_sigma(clean, level, normalisation), rng)
    return model.image(clean, level, rng, pixel_mm=pixel_mm, normalisation=normalisation, detector=detector)
