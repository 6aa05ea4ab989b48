"""Every malformed upload in the corpus gets its 4xx JSON error, within bounded time and memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.fuzz.bounds import MEMORY_LIMIT_BYTES, TIME_LIMIT, assert_error, traced_peak
from tests.app.fuzz.corpus import CORPUS, Case

ROOT = Path(__file__).resolve().parents[3]


def test_the_corpus_covers_every_kind_of_bad_input() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names)), "case names must be unique"
    assert all(400 <= case.status < 500 for case in CORPUS)
    print(f"\n{len(CORPUS)} malformed cases")


@pytest.mark.timeout(TIME_LIMIT)
@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_malformed_upload_gets_its_error_in_bounded_memory(client: TestClient, case: Case) -> None:
    data = case.build()
    files = {"file": (case.filename, data, case.content_type)}
    if case.reference is not None:
        files["reference"] = ("reference", case.reference(), "application/octet-stream")
    with traced_peak() as peak:
        response = client.post("/v1/denoise", files=files, data=case.fields)
    assert_error(response, case.status, case.code)
    assert peak.bytes < MEMORY_LIMIT_BYTES, f"{peak.bytes / 2**20:.1f} MiB allocated"


# Run in a fresh interpreter, whose peak RSS starts low: what C decoders allocate is not traced.
_PEAK_RSS_SCRIPT = """
import json, resource, sys, warnings
warnings.simplefilter("ignore")
from app.errors import DenoiseError
from app.imaging import codec
from tests.app.fuzz import corpus

cases = {case.name: case.build() for case in corpus.CORPUS if case.name in sys.argv[1:]}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answers = {}
for name, data in cases.items():
    try:
        codec.decode(data, modality="ct", max_pixels=100_000_000)
        answers[name] = "decoded"
    except DenoiseError as error:
        answers[name] = error.code
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "answers": answers}))
"""
BOMBS = {
    "png bomb: 20000 x 20000 zeros": "image_too_large",
    "png width 2^31 - 1": "image_too_large",
    "dicom deflated bomb: 1 GB inflated": "image_too_large",
    "dicom JPEG 2000 frame declaring 60000 x 60000": "invalid_image",
    "dicom JPEG lossless frame declaring 30000 x 30000": "invalid_image",
    "dicom JPEG-LS frame declaring 30000 x 30000": "invalid_image",
}
RSS_LIMIT_KIB = 64 << 10


@pytest.mark.timeout(TIME_LIMIT * 2)
def test_decompression_bombs_are_refused_before_any_decoder_allocates() -> None:
    """Peak RSS of a fresh process decoding every bomb grows by less than 64 MiB.

    Unchecked, each of them allocates gigabytes: the PNG 0.8 GB, the deflated DICOM 1 GB,
    the JPEG 2000 frame about 14 GB, the JPEG and JPEG-LS frames about 5 GB each.
    """
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, *BOMBS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT * 2,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["answers"] == BOMBS
    print(f"\npeak RSS growth over {len(BOMBS)} bombs: {report['grown_kib'] / 1024:.1f} MiB")
    assert report["grown_kib"] < RSS_LIMIT_KIB
