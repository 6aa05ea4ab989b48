"""The PACS harness (tests/e2e/pacs.py) against the real tools: Debian's Orthanc with its DICOMweb
plugin, and dcmtk's echoscu and storescu.

Orthanc starts on free ports and answers /system; C-ECHO and C-STORE reach its DICOM port; a
STOW-RS POST reaches its DICOMweb root; stopping (or killing) and starting it again on the same
storage keeps what it stored. Skips when a tool is missing, unless ``CI_REQUIRE_PACS=1`` (set by
.ci/run), which makes a missing tool a failure.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.e2e import pacs as harness
from tests.e2e.pacs import Orthanc, echoscu, require_pacs_tools, stow, storescu, tags_of, write_ct_series

PACS_AE = "E2E_PACS"
CALLING_AE = "E2E_SCU"


@pytest.fixture(scope="module")
def pacs() -> Iterator[Orthanc]:
    """One Orthanc for the module: each stop costs ~3.5 s, so tests share it and find their own
    data by its UIDs rather than expecting an empty PACS."""
    require_pacs_tools()
    with Orthanc(ae_title=PACS_AE) as orthanc:
        yield orthanc


def study_instances(pacs: Orthanc, study_uid: str) -> tuple[list[str], list[str]]:
    """(series ids, instance ids) of the study with ``study_uid``; it must be stored."""
    study_id = pacs.lookup(study_uid)
    assert study_id is not None, f"study {study_uid} not in the PACS"
    series_ids = pacs.study_series(study_id)
    return series_ids, [i for s in series_ids for i in pacs.series_instances(s)]


def test_orthanc_answers_on_its_own_ports_with_dicomweb_loaded(pacs: Orthanc) -> None:
    system = httpx.get(f"{pacs.http_url}/system").json()
    assert (system["DicomAet"], system["DicomPort"], system["HttpPort"]) == (PACS_AE, pacs.dicom_port, pacs.http_port)
    assert "dicom-web" in httpx.get(f"{pacs.http_url}/plugins").json()
    # The DICOMweb root answers a QIDO-RS query (no study is required to exist for this).
    assert httpx.get(f"{pacs.dicomweb_url}/studies").status_code in (200, 204)


def test_echoscu_reaches_the_dicom_port(pacs: Orthanc) -> None:
    result = echoscu("127.0.0.1", pacs.dicom_port, pacs.ae_title, CALLING_AE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_storescu_series_lands_as_one_study_one_series(pacs: Orthanc, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path, 5)
    result = storescu("127.0.0.1", pacs.dicom_port, pacs.ae_title, CALLING_AE, files)
    assert result.returncode == 0, result.stdout + result.stderr

    sent = [pydicom.dcmread(path) for path in files]
    series_ids, instance_ids = study_instances(pacs, sent[0].StudyInstanceUID)
    assert len(series_ids) == 1 and len(instance_ids) == 5
    assert set(instance_ids) <= set(pacs.instances()) and series_ids[0] in pacs.series()
    tags = tags_of(pacs, instance_ids)
    assert [t["InstanceNumber"] for t in tags] == ["1", "2", "3", "4", "5"]
    assert [t["SOPInstanceUID"] for t in tags] == [ds.SOPInstanceUID for ds in sent]
    assert {(t["Modality"], t["SeriesInstanceUID"]) for t in tags} == {("CT", sent[0].SeriesInstanceUID)}
    # Stored as sent, pixels included.
    stored = pydicom.dcmread(io.BytesIO(pacs.instance_file(instance_ids[2])))
    assert stored.PixelData == sent[2].PixelData and stored.RescaleIntercept == -1024


def test_stow_rs_stores_instances(pacs: Orthanc, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path, 2, seed=1)
    response = stow(pacs.dicomweb_url, files)
    assert response.status_code == 200, response.text
    # PS3.18 STOW-RS response: ReferencedSOPSequence lists what was stored, FailedSOPSequence what
    # was not (the plugin writes the latter even when empty, without a Value).
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2 and not body.get("00081198", {}).get("Value")

    sent = [pydicom.dcmread(path) for path in files]
    series_ids, instance_ids = study_instances(pacs, sent[0].StudyInstanceUID)
    assert len(series_ids) == 1
    assert sorted(t["SOPInstanceUID"] for t in tags_of(pacs, instance_ids)) == sorted(ds.SOPInstanceUID for ds in sent)


def test_restart_on_the_same_ports_and_storage_keeps_the_instances(tmp_path: Path) -> None:
    require_pacs_tools()
    with Orthanc(ae_title="RESTARTED", workdir=tmp_path / "orthanc") as pacs:
        ports = (pacs.http_port, pacs.dicom_port)
        first = write_ct_series(tmp_path / "first", 3)
        assert storescu("127.0.0.1", pacs.dicom_port, pacs.ae_title, CALLING_AE, first).returncode == 0
        stored = sorted(pacs.instances())
        assert len(stored) == 3

        assert pacs.stop() == 0
        # Down means down: neither REST nor DICOM answers.
        with pytest.raises(httpx.TransportError):
            pacs.count_instances()
        assert echoscu("127.0.0.1", pacs.dicom_port, pacs.ae_title, CALLING_AE, timeout=5).returncode != 0

        pacs.start()
        assert (pacs.http_port, pacs.dicom_port) == ports
        assert sorted(pacs.instances()) == stored
        # It takes new instances after the restart, and a kill (no clean shutdown) loses nothing.
        second = write_ct_series(tmp_path / "second", 2, seed=2)
        assert storescu("127.0.0.1", pacs.dicom_port, pacs.ae_title, CALLING_AE, second).returncode == 0
        assert pacs.wait_for_instances(5) == 5
        pacs.kill()
        pacs.start()
        assert pacs.count_instances() == 5 and len(pacs.studies()) == 2


def test_a_missing_tool_skips_unless_ci_requires_the_pacs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "DICOMWEB_PLUGIN", tmp_path / "absent.so")
    monkeypatch.delenv(harness.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="absent.so"):
        require_pacs_tools()
    monkeypatch.setenv(harness.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="CI_REQUIRE_PACS=1 forbids skipping"):
        require_pacs_tools()
