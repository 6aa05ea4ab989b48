"""The DICOM node against a real PACS: dcmtk's storescu sends a series to a real service process
(python -m app.server), which delivers the derived series to a real Orthanc by C-STORE or by
DICOMweb STOW-RS. Nothing lost, nothing twice: with the PACS down for a while, and with the node
killed with SIGKILL in the middle of a series and started again on the same spool."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.e2e.pacs import Orthanc, free_port, require_pacs_tools, stow, storescu, write_ct_series
from tests.tiny_models import write_model_set
from tests.uvicorn_server import uvicorn_server

NODE_AE = "DENOISE"
SLICES = 100


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_pacs_tools()
    return write_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with Orthanc(ae_title="PACS", workdir=tmp_path / "orthanc") as orthanc:
        yield orthanc


def node_settings(tmp_path: Path, forward_to: str, dicom_port: int) -> dict[str, str]:
    return {"forward_to": forward_to, "spool_dir": str(tmp_path / "spool"), "dicom_port": str(dicom_port),
            "dicom_host": "127.0.0.1", "dicom_ae_title": NODE_AE, "delivery_retry_max_s": "1"}


def derived_series(pacs: Orthanc, source: list[Path]) -> list[pydicom.Dataset]:
    """Every instance the PACS holds, checked to be one derived series of ``source``'s study."""
    datasets = [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in pacs.instances()]
    first = pydicom.dcmread(source[0])
    assert {d.StudyInstanceUID for d in datasets} == {first.StudyInstanceUID}
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert first.SeriesInstanceUID not in {d.SeriesInstanceUID for d in datasets}
    return datasets


def wait_delivered(base_url: str, count: int, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{base_url}/v1/node", timeout=10).json()
        if status["states"]["delivered"] >= count:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_a_series_by_c_store_lands_as_one_derived_series_by_c_store(models: Path, pacs: Orthanc, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", SLICES)
    port = free_port()
    forward = f"dicom://{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"
    with uvicorn_server(models, tmp_path / "node.log", **node_settings(tmp_path, forward, port)) as base_url:
        sent = storescu("127.0.0.1", port, NODE_AE, "MODALITY", files, timeout=120)
        assert sent.returncode == 0, sent.stderr
        wait_delivered(base_url, SLICES)
    datasets = derived_series(pacs, files)
    assert sorted(int(d.InstanceNumber) for d in datasets) == list(range(1, SLICES + 1))
    assert all(d.ImageType[0] == "DERIVED" for d in datasets)


def test_a_series_by_stow_rs_lands_by_stow_rs_and_waits_while_the_pacs_is_down(
    models: Path, pacs: Orthanc, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "series", SLICES, seed=1)
    with uvicorn_server(models, tmp_path / "node.log",
                        **node_settings(tmp_path, pacs.dicomweb_url, free_port())) as base_url:
        pacs.stop()  # the PACS goes down before anything is delivered
        answer = stow(f"{base_url}/dicomweb", files[: SLICES // 2])
        assert answer.status_code == 200, answer.text
        time.sleep(3)
        status = httpx.get(f"{base_url}/v1/node").json()
        assert status["states"]["delivered"] == 0 and status["delivery_failures"] >= 1
        pacs.start()
        assert stow(f"{base_url}/dicomweb", files[SLICES // 2 :]).status_code == 200
        wait_delivered(base_url, SLICES)
    datasets = derived_series(pacs, files)
    assert sorted(int(d.InstanceNumber) for d in datasets) == list(range(1, SLICES + 1))


def test_the_node_killed_mid_series_and_restarted_loses_nothing_and_sends_nothing_twice(
    models: Path, pacs: Orthanc, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "series", SLICES, seed=2)
    port = free_port()
    settings = node_settings(tmp_path, f"dicom://{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}", port)
    processes: list[subprocess.Popen[bytes]] = []
    with uvicorn_server(models, tmp_path / "node-1.log", started=processes.append, **settings):
        sender = subprocess.Popen(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", NODE_AE, "127.0.0.1",
                                   str(port), *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while pacs.count_instances() < 10:  # killed once some have been delivered, mid-series
            assert time.monotonic() < deadline
            time.sleep(0.05)
        processes[0].send_signal(signal.SIGKILL)
        sender.wait(timeout=60)  # its association breaks: what was not acknowledged, it still has
    with uvicorn_server(models, tmp_path / "node-2.log", **settings) as base_url:
        resent = storescu("127.0.0.1", port, NODE_AE, "MODALITY", files, timeout=120)  # the modality resends
        assert resent.returncode == 0, resent.stderr
        status = wait_delivered(base_url, SLICES)
        assert status["states"]["delivered"] == SLICES and status["states"]["failed"] == 0
    datasets = derived_series(pacs, files)
    assert sorted(int(d.InstanceNumber) for d in datasets) == list(range(1, SLICES + 1))


@pytest.mark.parametrize(("accepted", "expected"), [
    (None, "1.2.840.10008.1.2.4.80"),  # Orthanc's defaults take JPEG-LS Lossless: it travels so
    (["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], None),  # only uncompressed: sent uncompressed
], ids=["pacs-takes-jpeg-ls", "pacs-takes-uncompressed-only"])
def test_results_travel_in_the_configured_syntax_where_the_pacs_accepts_it(
    models: Path, tmp_path: Path, accepted: list[str] | None, expected: str | None
) -> None:
    config = {} if accepted is None else {"AcceptedTransferSyntaxes": accepted}
    files = write_ct_series(tmp_path / "series", 3, seed=3)
    port = free_port()
    with Orthanc(ae_title="PACS", workdir=tmp_path / "orthanc", config=config) as pacs:
        settings = node_settings(tmp_path, f"dicom://{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}", port)
        settings["forward_transfer_syntax"] = "1.2.840.10008.1.2.4.80"
        with uvicorn_server(models, tmp_path / "node.log", **settings) as base_url:
            sent = storescu("127.0.0.1", port, NODE_AE, "MODALITY", files, timeout=60)
            assert sent.returncode == 0, sent.stderr
            wait_delivered(base_url, 3)
        stored = derived_series(pacs, files)
        syntaxes = {str(d.file_meta.TransferSyntaxUID) for d in stored}
        if expected is not None:
            assert syntaxes == {expected}
        else:
            assert syntaxes <= {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
        assert all(d.pixel_array.shape == (64, 64) for d in stored)
