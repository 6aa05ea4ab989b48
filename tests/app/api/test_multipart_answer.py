"""app.api.multipart_answer: whether an Accept header allows multipart/related, and the body
``encode`` builds, read back with the standard library's MIME parser (RFC 2046 / 2387)."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from app.api.multipart_answer import MEDIA_TYPE, accepts, encode

DICOM_EVRLE = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"


def parse(body: bytes, content_type: str) -> EmailMessage:
    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    return message


@pytest.mark.parametrize("accept", [None, "", "  "])
def test_no_accept_header_accepts_anything(accept: str | None) -> None:
    assert accepts(accept)


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related",
        'multipart/related; type="application/dicom"',
        "Multipart/Related",
        "multipart/*",
        "*/*",
        "application/json, multipart/related; type=application/dicom",
        "application/json , */*;q=0.1",
    ],
)
def test_ranges_that_allow_multipart_related(accept: str) -> None:
    assert accepts(accept)


@pytest.mark.parametrize(
    "accept", ["application/dicom", "application/json, image/png", "multipart/mixed", "application/*"]
)
def test_ranges_that_do_not_allow_multipart_related(accept: str) -> None:
    assert not accepts(accept)


def test_encoded_parts_come_back_in_order_with_their_bytes_and_headers() -> None:
    contents = [b"\x00\xffDICM\r\n--not-a-boundary\r\n", b"second", b""]
    parts = [({"X-Model-Id": "ct-unet", "X-Index": str(index)}, content) for index, content in enumerate(contents)]
    body, content_type = encode(parts, DICOM_EVRLE)
    message = parse(body, content_type)
    assert message.is_multipart() and message.get_content_type() == MEDIA_TYPE
    read = list(message.iter_parts())
    assert [part.get_payload(decode=True) for part in read] == contents
    assert [part["X-Index"] for part in read] == ["0", "1", "2"]
    for part in read:
        assert part["X-Model-Id"] == "ct-unet"
        assert part.get_content_type() == "application/dicom"
        assert part.get_param("transfer-syntax") == "1.2.840.10008.1.2.1"


def test_the_content_type_names_the_boundary_the_body_uses() -> None:
    body, content_type = encode([({}, b"one"), ({}, b"two")], "application/dicom")
    boundary = parse(body, content_type).get_boundary()
    assert boundary and content_type.startswith(f"{MEDIA_TYPE}; ")
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert body.count(f"--{boundary}\r\n".encode()) == 2


def test_the_type_parameter_is_the_parts_media_type_without_its_parameters() -> None:
    body, content_type = encode([({}, b"x")], DICOM_EVRLE)
    message = parse(body, content_type)
    assert message.get_param("type") == "application/dicom"
    assert "transfer-syntax" not in content_type  # only the parts carry it
    (part,) = message.iter_parts()
    assert part.get_param("transfer-syntax") == "1.2.840.10008.1.2.1"


def test_each_answer_gets_its_own_boundary() -> None:
    _, first = encode([({}, b"x")], "application/dicom")
    _, second = encode([({}, b"x")], "application/dicom")
    assert first != second


def test_q_zero_and_another_part_type_are_not_acceptance() -> None:
    assert not accepts("multipart/related; q=0")
    assert not accepts("multipart/related; type=application/dicom+json")
    assert accepts('multipart/related; type="application/dicom"; q=0.5')
