"""The modalities the service knows, one profile each: everything the service, the training code
and the batch client need to know about a modality lives here, and nowhere else branches on a
modality's name. Adding a modality is one :func:`register` call (plus its data sources and
training configs); a test registers a throwaway fourth one and serves it end to end.

Every layer (imaging, inference, training, the API) takes the ``Modality`` type from here. It is
a string checked against the registered profiles, so a profile registered at start-up is as
valid as the built-in three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator


@dataclass(frozen=True)
class ModalityProfile:
    """One modality. Windows and ranges are in the modality's ``units``."""

    name: str  # what requests, cards and configs call it
    title: str  # what people call it
    dicom_codes: tuple[str, ...]  # Modality (0008,0060) values its models denoise
    units: str  # the units its pixel values are quoted in, where a DICOM says none
    noise_model: str  # the training package's noise model for its physics (training/noise_models.py)
    gaussian_units: str  # what a white Gaussian noise level is quoted in
    # An 8-bit PNG's 0..255 spans this (low, high) range of units (CT: a soft-tissue window);
    # None: the stored value is the value.
    png_8bit_range: tuple[float, float] | None = None
    png_16bit_intercept: float = 0.0  # a 16-bit PNG's value + intercept = units (CT: -1024 HU)
    preview_window: tuple[float, float] | None = None  # (centre, width) where the DICOM gives none
    # Reference metrics quoted against this fixed range where the units are absolute (CT in HU),
    # so numbers compare across images; None: the reference image's own max - min.
    reference_data_range: float | None = None
    evaluation_window: tuple[float, float] | None = None  # (low, high): PSNR also quoted inside it


_PROFILES: dict[str, ModalityProfile] = {}


def register(profile: ModalityProfile) -> ModalityProfile:
    """Make ``profile`` known everywhere; a DICOM code may belong to one modality only."""
    for other in _PROFILES.values():
        shared = set(other.dicom_codes) & set(profile.dicom_codes)
        if other.name != profile.name and shared:
            raise ValueError(f"DICOM Modality {sorted(shared)} already belongs to {other.name}")
    _PROFILES[profile.name] = profile
    return profile


def unregister(name: str) -> None:
    _PROFILES.pop(name, None)


def profile(name: str) -> ModalityProfile:
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(modality_names())}") from None


def profiles() -> tuple[ModalityProfile, ...]:
    return tuple(_PROFILES.values())


def modality_names() -> tuple[str, ...]:
    return tuple(_PROFILES)


def spelled_out() -> str:
    """``ct, mr or xray``: for messages and help texts."""
    names = modality_names()
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def from_dicom_code(code: str) -> str | None:
    """The modality whose models denoise DICOM Modality ``code`` (case-insensitive), if any."""
    code = code.strip().upper()
    return next((p.name for p in _PROFILES.values() if code in p.dicom_codes), None)


def _known(name: str) -> str:
    profile(name)
    return name


class _RegisteredNames:
    """The JSON schema of ``Modality``: the names registered when a schema is generated, so a
    profile registered at start-up is listed too."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "enum": list(modality_names())}


Modality = Annotated[str, AfterValidator(_known), _RegisteredNames()]

CT = register(ModalityProfile(
    name="ct", title="CT", dicom_codes=("CT",), units="HU", noise_model="ct_projection",
    gaussian_units="sigma in HU",
    png_8bit_range=(-160.0, 240.0), png_16bit_intercept=-1024.0,
    preview_window=(40.0, 400.0),
    # The 12-bit Hounsfield range -1024..3071, whatever window a model normalises with.
    reference_data_range=4095.0,
    evaluation_window=(-160.0, 240.0),
))
MR = register(ModalityProfile(
    name="mr", title="MR", dicom_codes=("MR",), units="stored value", noise_model="rician",
    gaussian_units="sigma in percent of the 99.5th percentile",
))
XRAY = register(ModalityProfile(
    name="xray", title="X-ray",
    # "DR" is not a defined term but some vendors write it for digital radiography.
    dicom_codes=("CR", "DX", "DR", "RF", "XA", "MG", "PX", "IO"), units="stored value",
    noise_model="poisson_gaussian",
    gaussian_units="sigma in percent of the 0.5-99.5 percentile range",
))
