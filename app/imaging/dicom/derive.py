"""The header of a derived DICOM instance: what a PACS needs to file a denoised image correctly.

Everything here works on a copy of the source's header; the source is never modified. Each step
cites the part of PS3.3 it implements:

* UIDs (C.12.1 SOP Common, C.7.3.1 General Series): a new SOP Instance UID and a new Series
  Instance UID, both derived deterministically from the source's UID and the model, its version
  and strength, so that every slice of one series denoised with one model lands in one derived
  series and a retried request writes the same instance again instead of a duplicate. Study,
  Patient and Frame of Reference are kept.
* Image Type (C.7.6.1.1.2): DERIVED\\SECONDARY, values from the third on kept; in enhanced
  multi-frame objects the Frame Type of each frame too (C.8.13.5.1 MR, C.8.15.3.1 CT).
* Derivation Description (C.7.6.1.1.3), Derivation Code Sequence (CID 7203, 113087 Smoothing)
  and Source Image Sequence (C.7.6.1 General Image, purpose 121322 "Source image for image
  processing operation", CID 7202); for enhanced multi-frame objects, in the Derivation Image
  functional group (C.7.6.16.2.6) instead.
* Contributing Equipment Sequence (C.12.1 SOP Common, purpose CID 7005 109102 "Processing
  Equipment"): this software and the model, appended to any items the source had. The General
  Equipment module (the scanner) is kept: the acquisition attributes kept with it describe it.
* Series Description and Series Number (C.7.3.1): the source's, with a suffix and + 1000.
* Lossy Image Compression (C.7.6.1.1.5): once lossy, always "01", with the method and ratio
  of a lossy transfer syntax the source arrived in.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    generate_uid,
)

from app.version import SOFTWARE_NAME, SOFTWARE_VERSION

# The namespace of this software's name-based UIDs: uuid5(NAMESPACE_URL, SOFTWARE_NAME).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:" + SOFTWARE_NAME)
SERIES_NUMBER_OFFSET = 1000
_MAX_IS = 2**31 - 1
_SERIES_SLOTS = 999
_LO_LENGTH = 64  # LO: at most 64 characters
_ST_LENGTH = 1024  # ST: at most 1024 characters

# (code value, coding scheme designator, code meaning) from PS3.16.
DERIVATION_CODE = ("113087", "DCM", "Smoothing")  # CID 7203 Image Derivation
SOURCE_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")  # CID 7202
EQUIPMENT_PURPOSE_CODE = ("109102", "DCM", "Processing Equipment")  # CID 7005

# Transfer syntaxes whose compression loses information (PS3.5 Section 8.2), with the Lossy
# Image Compression Method term (C.7.6.1.1.5.1). JPEG 2000 and HTJ2K may be either: see
# ``lossy_method``.
_LOSSY_SYNTAXES = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
}
_MAYBE_LOSSY_SYNTAXES = {JPEG2000: "ISO_15444_1", JPEG2000MC: "ISO_15444_2", HTJ2K: "ISO_15444_15"}


@dataclass(frozen=True)
class Provenance:
    """What made the derived image: the model, its version and the strength it was run at."""

    model_id: str
    model_version: str
    strength: float | None = None  # None: the model's own default (it has no noise-level input)
    noise_level: str | None = None  # what a conditioned model was told, in words (not in the UIDs)

    @property
    def strength_text(self) -> str:
        return "model default" if self.strength is None else f"{self.strength:g}"

    @property
    def description(self) -> str:
        return (
            f"Denoised by {SOFTWARE_NAME} {SOFTWARE_VERSION} with model {self.model_id} version "
            f"{self.model_version}, strength {self.strength_text}"
            + (f" ({self.noise_level})" if self.noise_level else "")
        )


@dataclass(frozen=True)
class LossyCompression:
    """A lossy compression the source's pixel data went through in transit (C.7.6.1.1.5)."""

    method: str
    ratio: float


def _element(keyword: str, value: object) -> DataElement:
    """A new element holding ``value``, with its dictionary VR."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return DataElement(tag, dictionary_VR(tag), value)


def _item(*elements: DataElement) -> Dataset:
    """A new sequence item of ``elements``.

    Given as a mapping, the elements are stored as they are: ``Dataset.__setitem__`` checks and
    converts each one for what a new item of public, parsed elements never needs (private
    creators, elements as read), a cost paid per element (docs/BENCHMARKS.md, "Figures behind
    choices in the code"). Elements are shared between the items that hold them (the constant
    ones are made once per process) and never changed.
    """
    return Dataset({element.tag: element for element in elements})


@functools.cache
def _code_elements(code: tuple[str, str, str]) -> tuple[DataElement, ...]:
    keywords = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
    return tuple(_element(keyword, value) for keyword, value in zip(keywords, code, strict=True))


def _code(code: tuple[str, str, str]) -> Dataset:
    return _item(*_code_elements(code))


def derived_uid(kind: str, source_uid: str | None, provenance: Provenance) -> UID:
    """A UID that depends only on the source UID, the model, its version and the strength.

    A name-based UUID (RFC 4122 version 5, SHA-1) of those values, written as ``2.25.<UUID as
    an integer>`` (PS3.5 B.2): globally unique without an organisation root, and the same
    inputs give the same UID. Without a source UID (a broken source) a random one is used.
    """
    if not source_uid:
        return generate_uid(prefix=None)
    name = "\\".join(
        [kind, str(source_uid), provenance.model_id, provenance.model_version, provenance.strength_text]
    )
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def j2k_is_irreversible(codestream: bytes) -> bool | None:
    """Whether a JPEG 2000 / HTJ2K codestream uses the irreversible 9-7 wavelet (lossy).

    Reads the transformation byte of the COD marker segment (ITU-T T.800 A.6.1, Table A.20):
    0 is the 9-7 irreversible filter, 1 the 5-3 reversible one. None when no COD is found.
    """
    start = codestream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the codestream itself (no JP2 box)
    if start < 0:
        return None
    position = codestream.find(b"\xff\x52", start)
    if position < 0 or position + 14 > len(codestream):
        return None
    # FF52, Lcod (2), Scod (1), SGcod: order (1), layers (2), MCT (1); SPcod: levels, xcb, ycb,
    # style (1 each), then the transformation.
    return codestream[position + 13] == 0


def lossy_method(syntax: UID, first_frame: bytes | None) -> str | None:
    """The Lossy Image Compression Method (C.7.6.1.1.5.1) of data sent in ``syntax``, or None."""
    if syntax in _LOSSY_SYNTAXES:
        return _LOSSY_SYNTAXES[syntax]
    if syntax in _MAYBE_LOSSY_SYNTAXES:
        irreversible = j2k_is_irreversible(first_frame) if first_frame is not None else None
        return _MAYBE_LOSSY_SYNTAXES[syntax] if irreversible is not False else None
    return None


def series_description(source: str, provenance: Provenance) -> str:
    """The source's Series Description with `` [denoised <model> <version>]``, within LO's 64."""
    suffix = f" [denoised {provenance.model_id} {provenance.model_version}]"
    if len(suffix) >= _LO_LENGTH:
        return suffix.strip()[:_LO_LENGTH]
    return (source.strip()[: _LO_LENGTH - len(suffix)] + suffix).strip()


def series_number(source: object, provenance: Provenance) -> int | None:
    """The source's Series Number + 1000 x slot (wrapping within IS), slot 1-999 named by the model
    and strength: each (source series, model, strength) its own derived series number, the same
    every time and on every node, and the source's number still readable (mod 1000). The slot is
    a name-based hash, not a count, so two of them share a number about once in 999 pairs."""
    if source in (None, ""):
        return None
    try:
        number = int(str(source))
    except ValueError:
        return None
    name = f"{provenance.model_id}\\{provenance.strength_text}"
    slot = 1 + uuid.uuid5(_UID_NAMESPACE, name).int % _SERIES_SLOTS
    return (number + SERIES_NUMBER_OFFSET * slot) % _MAX_IS


def _image_type(values: object, enhanced: bool) -> list[str]:
    """DERIVED\\SECONDARY, then the source's values from the third on (C.7.6.1.1.2).

    Enhanced multi-frame objects allow only PRIMARY as value 2 (C.8.16.1.1, Value 2 Patient
    Examination Characteristics), so there value 2 is kept and only value 1 becomes DERIVED.
    """
    existing = [str(v) for v in _as_list(values)]
    second = existing[1] if enhanced and len(existing) > 1 else "SECONDARY"
    return ["DERIVED", second, *existing[2:]]


_FRAME_TYPE_SEQUENCES = ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence", "XRay3DFrameTypeSequence")


def _mark_frame_types(ds: Dataset) -> None:
    """Frame Type mirrors Image Type per frame (C.8.13.5.1 MR, C.8.15.3.1 CT Image Frame Type)."""
    groups = [*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])]
    for group in groups:
        for keyword in _FRAME_TYPE_SEQUENCES:
            for item in group.get(keyword, []):
                if "FrameType" in item:
                    item.FrameType = _image_type(item.FrameType, enhanced=True)


def _derivation_items(ds: Dataset, source: Dataset, provenance: Provenance) -> Dataset:
    """Derivation Description, Derivation Code and Source Image Sequence in one item."""
    earlier = str(source.get("DerivationDescription", "") or "").strip()
    text = provenance.description + (f"; source: {earlier}" if earlier else "")
    codes = [*source.get("DerivationCodeSequence", []), _code(DERIVATION_CODE)]
    elements = [
        _element("DerivationDescription", text[:_ST_LENGTH]),
        _element("DerivationCodeSequence", Sequence(codes)),
    ]
    if "SOPClassUID" in source and "SOPInstanceUID" in source:
        reference = _item(
            _element("ReferencedSOPClassUID", source.SOPClassUID),
            _element("ReferencedSOPInstanceUID", source.SOPInstanceUID),
            _element("PurposeOfReferenceCodeSequence", Sequence([_code(SOURCE_PURPOSE_CODE)])),
        )
        elements.append(_element("SourceImageSequence", Sequence([reference])))
    return _item(*elements)


def is_enhanced(ds: Dataset) -> bool:
    """A multi-frame functional group IOD (Enhanced CT / MR / XA ..., C.7.6.16)."""
    named = _is_enhanced_class(str(ds.get("SOPClassUID", "")))
    return named or "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds


@functools.lru_cache(maxsize=256)  # a few classes in practice; bounded against made-up ones
def _is_enhanced_class(sop_class_uid: str) -> bool:
    return "Enhanced" in getattr(UID(sop_class_uid), "name", "")


def _hierarchical_reference(source: Dataset) -> Dataset:
    """The source as a Hierarchical SOP Instance Reference (C.17.2.1): study, series, instance."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.get("SeriesInstanceUID", "")
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = source.get("StudyInstanceUID", "")
    study.ReferencedSeriesSequence = Sequence([series])
    return study


@functools.lru_cache(maxsize=64)
def _equipment_elements(provenance: Provenance) -> tuple[DataElement, ...]:
    """What the Contributing Equipment item says of this software and the model, made once."""
    model = f"{provenance.model_id} {provenance.model_version}"[:_LO_LENGTH]
    return (
        _element("Manufacturer", SOFTWARE_NAME),
        _element("ManufacturerModelName", f"{SOFTWARE_NAME} model {provenance.model_id}"[:_LO_LENGTH]),
        _element("SoftwareVersions", [SOFTWARE_VERSION, model]),
        _element("ContributionDescription", provenance.description[:_ST_LENGTH]),
    )


def _contributing_equipment(provenance: Provenance, now: datetime) -> Dataset:
    return _item(
        _element("PurposeOfReferenceCodeSequence", Sequence([_code(EQUIPMENT_PURPOSE_CODE)])),
        *_equipment_elements(provenance),
        _element("ContributionDateTime", now.strftime("%Y%m%d%H%M%S")),
    )


def _mark_lossy(ds: Dataset, source: Dataset, lossy: LossyCompression | None) -> None:
    """C.7.6.1.1.5: "01" once any ancestor was lossy compressed; "00" is never written over it."""
    if lossy is None or str(source.get("LossyImageCompression", "")) == "01":
        return
    _put(ds, "LossyImageCompression", "01")
    ratios = [str(v) for v in _as_list(source.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _as_list(source.get("LossyImageCompressionMethod"))]
    _put(ds, "LossyImageCompressionRatio", [*ratios, f"{lossy.ratio:.4g}"])
    _put(ds, "LossyImageCompressionMethod", [*methods, lossy.method])


def _put(ds: Dataset, keyword: str, value: object) -> None:
    """``ds.<keyword> = value``, less the parsing of the value it replaces: setting an attribute
    that holds an element as read first converts that element (docs/BENCHMARKS.md)."""
    element = _element(keyword, value)
    ds[element.tag] = element


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)  # type: ignore[call-overload]


# Enhanced MR: the MR Pulse Sequence module (C.8.13.4) and Bulk Motion Synchronization
# (C.7.6.18.2) are conditional on Image Type value 1 ORIGINAL or MIXED, and validators (dciodvfy)
# refuse them in a DERIVED image; the acquisition they describe is the source's, referenced below.
ORIGINAL_ONLY_KEYWORDS = (
    "PulseSequenceName",
    "MRAcquisitionType",
    "EchoPulseSequence",
    "MultipleSpinEcho",
    "MultiPlanarExcitation",
    "PhaseContrast",
    "TimeOfFlightContrast",
    "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SaturationRecovery",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal",
    "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories",
    "BulkMotionCompensationTechnique",
    "BulkMotionSignalSource",
)

# Attributes about the source's pixel data or series that would be false for the derived one.
STALE_KEYWORDS = (
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",  # a thumbnail of the source's pixels
    "ExtendedOffsetTable",  # of the source's encapsulated pixel data
    "ExtendedOffsetTableLengths",
    "DataSetTrailingPadding",
)


def mark_derived(
    ds: Dataset, source: Dataset, provenance: Provenance, lossy: LossyCompression | None, now: datetime
) -> None:
    """Turn ``ds`` (a copy of ``source``'s header) into the header of the derived instance."""
    _put(ds, "SOPInstanceUID", derived_uid("instance", source.get("SOPInstanceUID"), provenance))
    _put(ds, "SeriesInstanceUID", derived_uid("series", source.get("SeriesInstanceUID"), provenance))
    _put(ds, "InstanceCreationDate", now.strftime("%Y%m%d"))
    _put(ds, "InstanceCreationTime", now.strftime("%H%M%S"))
    enhanced = is_enhanced(ds)
    _put(ds, "ImageType", _image_type(source.get("ImageType"), enhanced))
    _mark_frame_types(ds)

    derivation = _derivation_items(ds, source, provenance)
    for keyword in ("DerivationDescription", "DerivationCodeSequence", "SourceImageSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    if enhanced:
        for keyword in ORIGINAL_ONLY_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
    if enhanced and ds.get("SharedFunctionalGroupsSequence"):
        # The Derivation Image functional group, shared by every frame; a per-frame one of the
        # source described the source's own derivation.
        for group in ds.get("PerFrameFunctionalGroupsSequence", []):
            if "DerivationImageSequence" in group:
                del group.DerivationImageSequence
        ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence = Sequence([derivation])
        if "SourceImageSequence" in derivation:  # required with a Derivation Image group (C.8.13.1)
            _put(ds, "SourceImageEvidenceSequence", Sequence([_hierarchical_reference(source)]))
    else:  # the item's elements themselves: made and checked once, in ``_derivation_items``
        for element in derivation:
            ds[element.tag] = element

    equipment = [*source.get("ContributingEquipmentSequence", []), _contributing_equipment(provenance, now)]
    _put(ds, "ContributingEquipmentSequence", Sequence(equipment))
    _put(ds, "SeriesDescription", series_description(str(source.get("SeriesDescription", "") or ""), provenance))
    number = series_number(source.get("SeriesNumber"), provenance)
    if number is not None:
        _put(ds, "SeriesNumber", number)
    _mark_lossy(ds, source, lossy)
    for keyword in STALE_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
