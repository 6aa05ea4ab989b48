from __future__ import annotations

import logging
import warnings

import pytest

from app.errors import MissingPixelData
from app.imaging import dicom
from app.observability import new_request_id, silence_header_values
from tests.files import dicom_file


def test_client_request_ids_are_kept_only_when_plain() -> None:
    assert new_request_id("abc-123_x.y") == "abc-123_x.y"
    for offered in (None, "", "a b", "x" * 65, "name\nInjected: 1"):
        generated = new_request_id(offered)
        assert generated != offered and len(generated) == 32


def test_pydicom_warnings_about_malformed_files_stay_out_of_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    malformed = dicom_file("CT_small.dcm")[:200] + b"\xff" * 400
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        silence_header_values()
        with pytest.raises(MissingPixelData):
            dicom.decode(malformed, None, max_pixels=10**6)
    assert caught == []
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno < logging.ERROR]
