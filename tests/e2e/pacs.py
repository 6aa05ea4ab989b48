"""A real PACS for end-to-end tests: Debian's Orthanc (with its DICOMweb plugin) and dcmtk.

``Orthanc`` runs ``/usr/sbin/Orthanc`` on free local ports with its own storage in a temporary
folder and a generated configuration, never the system's (/etc/orthanc, port 8042/4242, the
shared /var/lib/orthanc database). It can be stopped and started again on the same ports and
storage, so a test can take the PACS down for a while and find what it stored afterwards.

    require_pacs_tools()                      # skip, or fail under CI_REQUIRE_PACS=1
    with Orthanc(ae_title="PACS") as pacs:    # started and answering /system
        storescu("127.0.0.1", pacs.dicom_port, pacs.ae_title, "SCU", write_ct_series(tmp, 5))
        assert pacs.count_instances() == 5

``write_ct_series`` builds a small CT series (one study, one series) to send; ``storescu`` and
``echoscu`` wrap dcmtk's tools; ``stow`` posts files to a DICOMweb STOW-RS endpoint.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ORTHANC = Path("/usr/sbin/Orthanc")
# Debian's orthanc-dicomweb; the system configuration loads the whole plugins folder (worklists
# and serve-folders too), the harness loads only this one.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# dcmtk's tools by absolute path: pynetdicom (a dependency of the service) installs console
# scripts with the same names and other options into the venv, which shadow dcmtk's on an
# activated venv's PATH.
STORESCU = Path("/usr/bin/storescu")
ECHOSCU = Path("/usr/bin/echoscu")
REQUIRE_ENV = "CI_REQUIRE_PACS"
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb dcmtk (CI installs them in .ci/run)"

READY_TIMEOUT_S = 30.0  # Orthanc answers in ~0.1 s; the margin is for a loaded CI machine
# SIGTERM takes ~3 s: the HTTP and DICOM servers each finish a polling interval before exiting.
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0


# --- tools ----------------------------------------------------------------------------------


def missing_pacs_tools() -> list[str]:
    """What the harness needs and cannot find (empty when Orthanc, its plugin and dcmtk are here)."""
    missing = [str(path) for path in (ORTHANC, STORESCU, ECHOSCU) if not os.access(path, os.X_OK)]
    return missing + ([str(DICOMWEB_PLUGIN)] if not DICOMWEB_PLUGIN.is_file() else [])


def require_pacs_tools() -> None:
    """Skip the calling test when a tool is missing, unless CI_REQUIRE_PACS=1 makes that a failure."""
    missing = missing_pacs_tools()
    if not missing:
        return
    message = f"{', '.join(missing)} not found: {INSTALL_HINT}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 forbids skipping")
    pytest.skip(message)


def free_ports(count: int, host: str = "") -> list[int]:
    """``count`` distinct ports free on ``host`` ("" is every interface, as Orthanc binds).

    The sockets stay open until all are chosen, so the kernel cannot hand out one port twice.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "") -> int:
    return free_ports(1, host)[0]


def _dcmtk_timeouts(timeout: float) -> list[str]:
    # dcmtk waits forever for a connection or a DIMSE reply by default; bound it inside the tool
    # too, so a hung peer gives the tool's own error rather than only subprocess.TimeoutExpired.
    seconds = str(max(1, int(timeout)))
    return ["-to", seconds, "-ta", seconds, "-td", seconds]


def storescu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    files: Iterable[Path | str],
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-STORE ``files`` in one association (dcmtk's storescu); the caller checks the result."""
    command = [str(STORESCU), "-aet", calling_ae, "-aec", called_ae, *_dcmtk_timeouts(timeout), host, str(port)]
    command += [str(path) for path in files]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    host: str, port: int, called_ae: str, calling_ae: str = "ECHOSCU", timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """C-ECHO (verification) with dcmtk's echoscu; return code 0 means the peer answered."""
    command = [str(ECHOSCU), "-aet", calling_ae, "-aec", called_ae, *_dcmtk_timeouts(timeout), host, str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def stow(dicomweb_url: str, files: Iterable[Path | str], timeout: float = HTTP_TIMEOUT_S) -> httpx.Response:
    """STOW-RS: POST ``files`` to ``{dicomweb_url}/studies`` as one multipart/related request."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for path in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += Path(path).read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    return httpx.post(f"{dicomweb_url}/studies", content=bytes(body), headers=headers, timeout=timeout)


# --- test data ------------------------------------------------------------------------------


def _ct_slice(study: str, series: str, frame_of_reference: str, number: int, pixels: np.ndarray) -> Dataset:
    """One slice with the attributes tests/app/fuzz/builders.py ``ct_dataset`` gives the service,
    plus the patient, study and position modules a PACS indexes and a CT IOD asks for."""
    rows, cols = pixels.shape
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "E2E-PACS", "E2E^Pacs", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "CT", 2, number, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    # 2.5 mm slices stepping in z: a stack a viewer (and the service) can order by position.
    ds.ImagePositionPatient = [0.0, 0.0, 2.5 * (number - 1)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_ct_series(folder: Path, count: int, rows: int = 64, cols: int = 64, seed: int = 0) -> list[Path]:
    """``count`` CT Image Storage files of one new study and series in ``folder`` (Part 10, Explicit
    VR Little Endian): fresh UIDs on every call, pixels (0..4095 stored, HU = value - 1024) fixed
    by ``seed``. Returned in InstanceNumber order, 1..count."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    stack = np.random.default_rng(seed).integers(0, 4095, (count, rows, cols), endpoint=True)
    paths = []
    for index, pixels in enumerate(stack):
        ds = _ct_slice(study, series, frame_of_reference, index + 1, pixels)
        path = folder / f"ct-{index + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


# --- Orthanc --------------------------------------------------------------------------------

# Instances still running when the interpreter exits (a test run interrupted with Ctrl-C) are
# killed, so no Orthanc outlives pytest holding its ports.
_running: set[Orthanc] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pacs in list(_running):
        pacs.kill()


class OrthancFailed(RuntimeError):
    pass


class Orthanc:
    """Orthanc on free local ports with its own storage, configuration and log.

    The ports, configuration and storage are fixed when the object is made, so ``stop()`` then
    ``start()`` brings back the same PACS with what it stored. As a context manager it starts
    (and waits until ready) on entry, stops on exit and removes the folder it created.
    ``config`` entries override the generated configuration (e.g. ``DicomModalities``,
    ``StableAge``, ``OverwriteInstances``).
    """

    def __init__(
        self,
        ae_title: str = "ORTHANC",
        workdir: Path | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < len(ae_title) <= 16:  # an AE title is at most 16 characters (PS3.5 AE)
            raise ValueError(f"AE title {ae_title!r} must have 1 to 16 characters")
        self._ae_title = ae_title
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self.workdir / "storage"
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"
        self._http_port, self._dicom_port = free_ports(2)
        self.config_path.write_text(json.dumps(self._config(config or {}), indent=2))
        self._process: subprocess.Popen[bytes] | None = None

    def _config(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": f"e2e-{self._ae_title}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "HttpPort": self._http_port,
            "DicomPort": self._dicom_port,
            "DicomAet": self._ae_title,
            # Only loopback clients; no users to configure (Debian's package ships credentials.json,
            # which is not read: only this file is).
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # Any calling AE may store and echo without being declared in DicomModalities, and
            # the called AE is not checked: the service under test may call it by any name.
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            # Nothing to resume on restart: a test's PACS holds instances, not pending jobs.
            "SaveJobs": False,
        }
        config.update(overrides)
        return config

    # --- addresses ---

    @property
    def ae_title(self) -> str:
        return self._ae_title

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def dicom_port(self) -> int:
        return self._dicom_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    # --- life cycle ---

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT_S) -> Orthanc:
        """Start Orthanc (on the same ports and storage as before, after a stop) and, unless
        ``wait`` is false, wait until its REST API answers."""
        if self.running:
            raise OrthancFailed("Orthanc is already running")
        with self.log_path.open("ab") as log:
            # --logfile takes Orthanc's own log; stdout/stderr catch what it prints before the
            # log is set up (a configuration it cannot parse). Options come before the config.
            self._process = subprocess.Popen(
                [str(ORTHANC), f"--logfile={self.log_path}", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _running.add(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /system`` until it answers 200; Orthanc opens HTTP after its DICOM port,
        so the DICOM port is listening too. Raise with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise OrthancFailed(f"Orthanc exited with {code}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.http_url}/system", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise OrthancFailed(f"Orthanc not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (Orthanc closes its database cleanly); SIGKILL if it does not exit in
        ``timeout``. Return the exit code (None if it was not running)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        _running.discard(self)
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL: a PACS that dies without closing anything (a crash, a power cut)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None
        _running.discard(self)
        return process.returncode

    def close(self) -> None:
        """Stop, and remove the working folder if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # --- REST ---

    def get(self, path: str) -> Any:
        """GET a REST path and return its JSON; raise on an error status.

        One connection per request: a kept-alive connection would make Orthanc's stop wait for
        it, and a restarted Orthanc would find a client holding a dead one.
        """
        response = httpx.get(f"{self.http_url}{path}", timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Tags by keyword, values as strings (``simplified-tags``), e.g. ``["InstanceNumber"]``."""
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def series(self) -> list[str]:
        return list(self.get("/series"))

    def studies(self) -> list[str]:
        return list(self.get("/studies"))

    def series_instances(self, series_id: str) -> list[str]:
        return list(self.get(f"/series/{series_id}")["Instances"])

    def instance_file(self, instance_id: str) -> bytes:
        """The stored Part 10 file, as Orthanc keeps it (e.g. a forwarded result, to read with pydicom)."""
        response = httpx.get(f"{self.http_url}/instances/{instance_id}/file", timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response.content

    def lookup(self, dicom_uid: str) -> str | None:
        """Orthanc's id of the study, series or instance with this DICOM UID (None if not stored)."""
        response = httpx.post(f"{self.http_url}/tools/lookup", content=dicom_uid, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        found = response.json()
        return str(found[0]["ID"]) if found else None

    def study_series(self, study_id: str) -> list[str]:
        return list(self.get(f"/studies/{study_id}")["Series"])

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def wait_for_instances(self, count: int, timeout: float = 30.0) -> int:
        """Poll until at least ``count`` instances are stored (for results the service forwards
        asynchronously); return how many there are, which may be fewer after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (stored := self.count_instances()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return stored


def tags_of(pacs: Orthanc, instance_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Simplified tags of each instance, in InstanceNumber order."""
    tags = [pacs.instance_tags(instance_id) for instance_id in instance_ids]
    return sorted(tags, key=lambda t: int(t.get("InstanceNumber", 0)))
