"""Reading DICOM: a grayscale image to physical units (PS3.3 C.7.6.3 Image Pixel module, C.11.1
Modality LUT).

* before anything is decoded, ``checks`` holds the header to the data (bounded inflation,
  readable values, pixel data length, each compressed frame's declared size, finite LUT), so a
  lying header is a 4xx, never an exception or a decoder allocating what the header claims;
* the stored values are decoded by pydicom: uncompressed (implicit and explicit VR, little and
  big endian), deflated, RLE, and through the pylibjpeg plugins JPEG baseline / extended /
  lossless, JPEG-LS and JPEG 2000 (HTJ2K too);
* the modality LUT (``lut``: Rescale Slope / Intercept, a Modality LUT Sequence, or each
  frame's Pixel Value Transformation) takes them to modality units, so CT is in Hounsfield
  units. VOI LUT and Window Center / Width are never applied;
* MONOCHROME1 (high value = dark, common for CR/DX) is mirrored within its range of units so the
  model sees MONOCHROME2 orientation, as in training; writing mirrors back (``write``);
* every frame of a multi-frame object is denoised;
* colour, palette and YBR images (ultrasound, secondary capture), 1-bit and float pixel data are
  refused with what is supported.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import VR

from app.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from app.imaging.dicom import checks, derive
from app.imaging.dicom.checks import READ_ERRORS, PixelLayout
from app.imaging.dicom.derive import LossyCompression
from app.imaging.dicom.lut import ModalityLUT, invert_monochrome1, modality_luts, units_name
from app.imaging.image import ADMIT_ANY, UNITS_LIMIT, BeforeDecode, Image, StoredRange, within_units_limit
from app.modality import Modality, from_dicom_code, profile

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class DicomMeta:
    """What writing the derived instance needs: the header (pixel data removed) and its layout."""

    dataset: Dataset
    photometric: str
    dtype: np.dtype  # native byte order
    luts: tuple[ModalityLUT, ...]  # one per frame
    padding: tuple[np.ndarray, np.ndarray] | None  # (where, stored values) of padding, not image
    lossy: LossyCompression | None  # how the pixel data was lossy compressed in transit, if so
    stored_limits: tuple[int, int]  # lowest and highest stored value (Bits Stored, Pixel Representation)
    # The header's elements as read, before decoding converted the few it reads (Rows, Rescale
    # Slope, ...): the derived instance writes those back as they came too (``write.header_copy``).
    as_read: Mapping[BaseTag, RawDataElement] = field(default_factory=dict)

    @property
    def modality_tag(self) -> str:
        return str(self.dataset.get("Modality", "") or "")


def is_dicom(data: bytes) -> bool:
    return data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == MAGIC


def modality_of(ds: Dataset) -> Modality | None:
    return from_dicom_code(str(ds.get("Modality", "")))


def tags_of(modalities: list[str]) -> str:
    """``ct (DICOM CT), xray (DICOM CR, DX, ...)``: the served families with their Modality tags."""
    parts = []
    for modality in modalities:
        tags = ", ".join(profile(modality).dicom_codes)
        parts.append(f"{modality} (DICOM Modality {tags})")
    return "; ".join(parts) or "none"


def _read(data: bytes, max_pixels: int) -> Dataset:
    checks.check_deflated_size(data, checks.max_inflated_bytes(max_pixels))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except READ_ERRORS:
        raise InvalidImage(
            "The DICOM file could not be parsed (truncated or corrupt); send the complete Part 10 file."
        ) from None
    _drop_group_lengths(ds)
    checks.check_values(ds.file_meta)
    checks.check_values(ds)
    if "SOPClassUID" not in ds:
        # The derived instance must name its class; the file meta may still say it (PS3.10 7.1).
        sop_class = ds.file_meta.get("MediaStorageSOPClassUID")
        if not sop_class:
            raise InvalidImage("The DICOM object has no SOP Class UID; send a valid image instance.")
        ds.SOPClassUID = sop_class
    return ds


def _drop_group_lengths(ds: Dataset) -> None:
    """Group lengths (gggg,0000) are retired outside the file meta (PS3.5 7.2) and may be left
    out; a Command Set element (0000,eeee) or a file meta element (0002,eeee) has no place in a
    stored dataset. Neither can be written back, so neither is kept."""
    for tag in [tag for tag in ds.keys() if tag.element == 0 or tag.group in (0x0000, 0x0002)]:
        del ds[tag]


def transfer_syntax(ds: Dataset) -> UID:
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    if not syntax.is_transfer_syntax:
        raise UnsupportedImage(
            "The file meta names a transfer syntax this service does not know; send the image "
            "uncompressed, deflated, RLE, JPEG, JPEG-LS or JPEG 2000."
        )
    return syntax


def _check_pixel_data(ds: Dataset, layout: PixelLayout) -> None:
    """The pixel data must be what the header says, before any decoder sees it (``checks``)."""
    syntax = transfer_syntax(ds)
    if syntax.is_encapsulated:
        checks.check_frame_sizes(ds, syntax, layout)
    elif not isinstance(ds.PixelData, bytes):
        raise InvalidImage("The DICOM Pixel Data element holds no pixel bytes; send a valid image.")
    else:
        checks.check_native_length(ds.PixelData, layout)


def native_little_endian_pixels(pixel_data: bytes, layout: PixelLayout) -> np.ndarray:
    """Native little-endian pixel data (PS3.5 8.1.1) as (frames, rows, columns) in native byte
    order, as pydicom decodes it: the bits above Bits Stored do not count, so a value is its low
    Bits Stored bits, sign-extended when Pixel Representation is 1.

    ``pixel_data`` holds at least ``layout.native_bytes`` (``checks.check_native_length``).
    pydicom's decoder takes longer to set up for a CT slice than the copy itself takes
    (docs/BENCHMARKS.md, "Tuning decisions", DICOM read and write).
    """
    kind = "i" if layout.signed else "u"
    dtype = np.dtype(f"<{kind}{layout.bits_allocated // 8}")
    stored = np.frombuffer(pixel_data, dtype, count=layout.pixel_count)
    values = stored.astype(dtype.newbyteorder("="))  # a copy, writable, never a view of the upload
    unused = layout.bits_allocated - layout.bits_stored
    if unused:
        np.left_shift(values, unused, out=values)
        np.right_shift(values, unused, out=values)  # arithmetic for signed: sign extension
    return values.reshape(layout.frames, layout.rows, layout.columns)


def _decode_pixels(ds: Dataset, layout: PixelLayout) -> np.ndarray:
    syntax = transfer_syntax(ds)
    if not syntax.is_encapsulated and syntax.is_little_endian and isinstance(ds.PixelData, bytes):
        return native_little_endian_pixels(ds.PixelData, layout)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedImage(
            f"The transfer syntax {getattr(syntax, 'name', syntax)} cannot be decoded here; send "
            "the image uncompressed, deflated, RLE, JPEG, JPEG-LS or JPEG 2000."
        )
    try:
        pixels = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: B036 - pydicom raises many types for bad pixel data, and the
        # Rust RLE decoder (pylibjpeg-rle) panics with pyo3's PanicException, a BaseException
        # so that ``except Exception`` misses it; none of them may reach a client.
        raise InvalidImage(
            "The DICOM pixel data could not be decoded (truncated or corrupt); send the complete file."
        ) from None
    if pixels.size != layout.pixel_count:
        raise InvalidImage(
            "The DICOM pixel data decodes to a different number of pixels than Rows x Columns x "
            "Number of Frames; send a consistent file."
        )
    pixels = pixels.reshape(layout.frames, layout.rows, layout.columns)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def _padding(ds: Dataset, stored_values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels that are padding, not image, and their values: Pixel Padding Value up to its Range
    Limit (PS3.3 C.7.5.1.1.2)."""
    if "PixelPaddingValue" not in ds:
        return None
    try:
        first = int(ds.PixelPaddingValue)
        last = int(ds.get("PixelPaddingRangeLimit", first))
    except (TypeError, ValueError):
        raise InvalidImage(
            "The DICOM Pixel Padding Value or its Range Limit is not a single whole number; send a "
            "valid header."
        ) from None
    low, high = min(first, last), max(first, last)
    mask = stored_values == low if low == high else (stored_values >= low) & (stored_values <= high)
    return (mask, stored_values[mask]) if mask.any() else None


def _lossy_compression(ds: Dataset, frames: int, stored_bytes: int) -> LossyCompression | None:
    """How the pixel data arrived lossy compressed, with the ratio of its size (C.7.6.1.1.5.2)."""
    syntax = transfer_syntax(ds)
    if not syntax.is_encapsulated:
        return None
    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=frames), None)
    except Exception:  # a malformed fragment table only leaves JPEG 2000's lossiness unknown
        first = None
    method = derive.lossy_method(syntax, first)
    if method is None:
        return None
    return LossyCompression(method=method, ratio=stored_bytes / max(len(ds.PixelData), 1))


def _modality_luts(
    ds: Dataset, layout: PixelLayout, default_units: str
) -> tuple[tuple[ModalityLUT, ...], str]:
    """Each frame's modality LUT, checked to give finite values, and the name of its units."""
    try:
        luts, units = modality_luts(ds, layout.frames), units_name(ds, default_units)
    except READ_ERRORS:
        raise InvalidImage(
            "The DICOM modality LUT (Rescale Slope / Intercept or Modality LUT Sequence) cannot be "
            "read; send a valid header."
        ) from None
    checks.check_luts_bounded(luts, *layout.stored_limits)
    return luts, units


def per_frame(
    luts: tuple[ModalityLUT, ...], frames: np.ndarray, apply: Callable[[ModalityLUT, np.ndarray], np.ndarray]
) -> np.ndarray:
    """``apply`` each frame's LUT to its frame; one call on the whole stack when every frame has
    the same LUT (every single-frame image, most multi-frame ones), which saves a copy of it."""
    if all(lut is luts[0] for lut in luts):
        return apply(luts[0], frames)
    return np.stack([apply(lut, frame) for lut, frame in zip(luts, frames, strict=True)])


def _elements_as_read(ds: Dataset) -> dict[BaseTag, RawDataElement]:
    """The elements still raw, but those read as UN (pydicom converts an UN element the
    dictionary knows to its own VR: Rows read as UN is written as US, kept for those decoding
    reads) and the pixel data (decoded, then dropped: holding it would keep the whole upload's
    pixels alive until the answer is written)."""
    return {
        tag: element
        for tag in ds.keys()
        if tag != PIXEL_DATA
        and isinstance(element := ds.get_item(tag), RawDataElement)
        and element.VR != VR.UN
    }


def _checked(data: bytes, max_pixels: int) -> tuple[Dataset, PixelLayout, dict[BaseTag, RawDataElement]]:
    """The header read and checked against its pixel data and ``max_pixels``, nothing decoded:
    (dataset, layout, its elements as read before the layout's reads converted any)."""
    ds = _read(data, max_pixels)
    as_read = _elements_as_read(ds)
    layout = checks.pixel_layout(ds)
    _check_pixel_data(ds, layout)
    if layout.pixel_count > max_pixels:
        raise ImageTooLarge(
            f"The image has {layout.pixel_count} pixels (all frames), more than this service's limit "
            f"of {max_pixels}; send fewer frames or a smaller image."
        )
    return ds, layout, as_read


def check_instance(data: bytes, max_pixels: int) -> Dataset:
    """The checks ``decode`` makes before any pixel is decoded (readable header, pixel data of the
    size it declares, within ``max_pixels``): what a receiver must know before it says "stored".
    Raises the same domain errors as ``decode``."""
    return _checked(data, max_pixels)[0]


def decode(
    data: bytes, modality: Modality | None, max_pixels: int, before_decode: BeforeDecode = ADMIT_ANY
) -> Image[DicomMeta]:
    ds, layout, as_read = _checked(data, max_pixels)
    modality = modality or modality_of(ds)
    luts, units = _modality_luts(ds, layout, profile(modality).units if modality else "stored value")
    before_decode(layout.frames, layout.rows, layout.columns)
    stored_values = _decode_pixels(ds, layout)
    frames = per_frame(luts, stored_values, ModalityLUT.to_units)
    photometric = str(ds.PhotometricInterpretation).upper()
    lossy = _lossy_compression(ds, layout.frames, stored_values.size * layout.bits_allocated // 8)
    padding = _padding(ds, stored_values)
    del ds.PixelData  # decoded above; the header alone is kept to write the derived instance
    meta = DicomMeta(ds, photometric, stored_values.dtype, luts, padding, lossy, layout.stored_limits, as_read)
    if photometric == "MONOCHROME1":
        frames = invert_monochrome1(frames, units_ranges(meta))
    if not within_units_limit(*_units_extremes(meta, stored_values, frames)):
        # Stored values beyond Bits Stored's range escape the LUT check above.
        raise InvalidImage(
            "The DICOM pixel values map through the modality LUT to numbers that are not finite "
            f"or beyond +-{UNITS_LIMIT:g}; send a valid header."
        )
    first = luts[0]
    return Image(
        frames=frames,
        format="dicom",
        modality=modality,
        units=units,
        # For DICOM the per-frame modality LUTs in ``meta`` are authoritative; this describes frame 0.
        stored=StoredRange(layout.bits_stored, layout.signed, first.slope, first.intercept),
        meta=meta,
    )


def _units_extremes(meta: DicomMeta, stored_values: np.ndarray, frames: np.ndarray) -> tuple[float, float]:
    """The smallest and largest of ``frames``, any NaN among them.

    Where one linear LUT maps every frame and nothing is mirrored, they are the units of the
    extreme stored values: the map and its float rounding are monotonic. That reads the stored
    values instead of the float64 frames, twice, a quarter of the bytes each time.
    """
    lut = meta.luts[0]
    if meta.photometric != "MONOCHROME1" and lut.is_linear and all(other is lut for other in meta.luts):
        ends = lut.to_units(np.array([stored_values.min(), stored_values.max()]))
        return float(ends.min()), float(ends.max())
    return float(frames.min()), float(frames.max())


def units_ranges(meta: DicomMeta) -> list[tuple[float, float]]:
    low, high = meta.stored_limits
    return [lut.units_range(low, high) for lut in meta.luts]
