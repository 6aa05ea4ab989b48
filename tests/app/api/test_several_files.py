"""Several DICOM files in one request: every result, in the order sent, as multipart/related;
or the whole request refused, saying why. Never a silent drop."""

from __future__ import annotations

import email.parser
import email.policy
import io

import numpy as np
import pydicom
from fastapi.testclient import TestClient

from tests.app.fuzz.bounds import assert_error
from tests.app.fuzz.builders import ct_dataset, ct_series, dicom_bytes
from tests.files import dicom_file, png_bytes


def post(client: TestClient, files: list[bytes], headers: dict[str, str] | None = None, **fields: str):  # type: ignore[no-untyped-def]
    parts = [("file", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    return client.post("/v1/denoise", files=parts, data={"metrics": "none", **fields}, headers=headers or {})


def parts_of(response) -> list[tuple[dict[str, str], bytes]]:  # type: ignore[no-untyped-def]
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.is_multipart()
    return [(dict(part.items()), part.get_payload(decode=True)) for part in message.iter_parts()]


def test_every_result_comes_back_in_the_order_sent(client: TestClient) -> None:
    sent = ct_series(5)
    response = post(client, sent)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    parts = parts_of(response)
    assert len(parts) == 5
    series = set()
    for index, (headers, content) in enumerate(parts):
        assert headers["Content-Type"] == "application/dicom" and headers["X-Model-Id"] == "ct-unet"
        derived = pydicom.dcmread(io.BytesIO(content))
        assert int(derived.InstanceNumber) == index + 1
        source = pydicom.dcmread(io.BytesIO(sent[index]))
        assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert derived.pixel_array.shape == source.pixel_array.shape
        series.add(derived.SeriesInstanceUID)
    assert len(series) == 1  # one derived series


def test_each_part_equals_the_same_file_sent_alone(client: TestClient) -> None:
    sent = ct_series(3)
    together = [content for _, content in parts_of(post(client, sent))]
    for data, content in zip(sent, together, strict=True):
        alone = post(client, [data])
        assert alone.status_code == 200
        a, b = pydicom.dcmread(io.BytesIO(alone.content)), pydicom.dcmread(io.BytesIO(content))
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
        assert a.SOPInstanceUID == b.SOPInstanceUID  # deterministic: a resend is harmless


def test_a_png_among_them_refuses_the_whole_request_before_any_work(client: TestClient) -> None:
    files = [*ct_series(2), png_bytes(np.zeros((16, 16), np.uint16))]
    response = post(client, files, modality="ct")
    assert_error(response, 422, "several_files_not_dicom")
    assert "File 3 of 3" in response.json()["detail"]


def test_one_bad_instance_refuses_the_whole_request_naming_it(client: TestClient) -> None:
    broken = ct_dataset()
    del broken.StudyInstanceUID
    response = post(client, [*ct_series(2), dicom_bytes(broken), *ct_series(1)])
    assert_error(response, 422, "missing_study_uid")
    assert response.json()["detail"].startswith("File 3 of 4: ")


def test_a_client_that_does_not_accept_multipart_is_told_so(client: TestClient) -> None:
    response = post(client, ct_series(2), headers={"accept": "application/dicom"})
    assert_error(response, 406, "not_acceptable")
    assert "multipart/related" in response.json()["detail"]
    assert post(client, ct_series(2), headers={"accept": "multipart/related; type=\"application/dicom\""}).status_code == 200


def test_a_reference_with_several_files_is_refused(client: TestClient) -> None:
    data = ct_series(2)
    response = client.post(
        "/v1/denoise",
        files=[("file", ("a", data[0])), ("file", ("b", data[1])), ("reference", ("r", data[0]))],
        data={"metrics": "all"},
    )
    assert_error(response, 422, "reference_with_several_files")


def test_one_file_is_answered_as_before(client: TestClient) -> None:
    response = post(client, [dicom_file("CT_small.dcm")])
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
