"""DICOMweb Store (STOW-RS, PS3.18 10.5) into the DICOM node, and the node's status.

``POST /dicomweb/studies[/{study}]`` takes ``multipart/related; type="application/dicom"``; each
instance is answered in the standard store response (PS3.18 10.5.3, Table 10.5.3-1: Referenced
SOP Sequence for those spooled, Failed SOP Sequence with a reason for the others) once it is on
disk. 200: all stored; 202: some; 409: none. The results go to ``DENOISE_FORWARD_TO``; with none
configured the endpoints answer 503, never accept and drop.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header

from app.api.form_body import split_parts
from app.api.schemas import ErrorResponse
from app.errors import InvalidRequest, NodeNotConfigured, UnsupportedImage
from app.node import DicomNode
from app.node.intake import Refused

router = APIRouter(tags=["dicomweb"])

MEDIA_TYPE = "application/dicom+json"
MAX_INSTANCES = 10_000  # per request; a series larger than that comes in several
# Failure Reason (0008,1197) values (PS3.18 10.5.3; the C-STORE statuses of PS3.4 B.2.3)
_PROCESSING_FAILURE = 0x0110
_SOP_CLASS_NOT_SUPPORTED = 0x0122
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700
_STUDY_NOT_SUPPORTED = 0xC122  # the study of the request and the instance differ


def _node(request: Request) -> DicomNode:
    node: DicomNode | None = getattr(request.app.state, "node", None)
    if node is None:
        raise NodeNotConfigured(
            "This service has no DENOISE_FORWARD_TO: it would have nowhere to deliver the denoised "
            "instances, so it stores nothing. Configure a destination, or use POST /v1/denoise."
        )
    return node


def _instances(content_type: str, body: bytes) -> list[bytes]:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/related":
        raise UnsupportedImage('STOW-RS takes multipart/related; type="application/dicom".')
    part_type = options.get(b"type", b"application/dicom").strip(b'"').lower()
    if part_type != b"application/dicom":
        raise UnsupportedImage(
            f"STOW-RS here takes DICOM Part 10 instances (type=\"application/dicom\"), not {part_type.decode()!r}."
        )
    boundary = options.get(b"boundary", b"")
    # Counted before anything is split: each part would be a list entry and a spool write.
    if boundary and body.count(b"--" + boundary) > MAX_INSTANCES + 1:
        raise InvalidRequest(f"A STOW-RS request may hold at most {MAX_INSTANCES} instances; send the series in "
                             "several requests.", code="too_many_instances")
    parts = split_parts(body, boundary)
    if parts is None or not parts:
        raise InvalidRequest("The multipart/related body is malformed or empty; send one part per instance.",
                             code="invalid_multipart")
    return [content for _, content in parts]


def _element(vr: str, *values: object) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _reference(sop_class: str, sop_instance: str, reason: int | None = None) -> dict[str, Any]:
    item = {"00081150": _element("UI", sop_class), "00081155": _element("UI", sop_instance)}
    if reason is not None:
        item["00081197"] = _element("US", reason)
    return item


_STORE_RESPONSE = {"content": {MEDIA_TYPE: {"schema": {"type": "object"}}}}
_STORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "every instance spooled: Referenced SOP Sequence (0008,1199)", **_STORE_RESPONSE},
    202: {"description": "some spooled, some refused: Failed SOP Sequence (0008,1198) with Failure Reason "
          "(0008,1197) and an Error Comment (0000,0902) saying why", **_STORE_RESPONSE},
    409: {"description": "none spooled: the Failed SOP Sequence says why", **_STORE_RESPONSE},
    415: {"model": ErrorResponse, "description": "not multipart/related; type=\"application/dicom\""},
    422: {"model": ErrorResponse, "description": "a malformed or empty multipart body, or more than 10,000 instances"},
    503: {"model": ErrorResponse, "description": "node_not_configured: no DENOISE_FORWARD_TO, nothing is accepted"},
}


@router.post("/dicomweb/studies", summary="STOW-RS: store instances in the DICOM node", responses=_STORE_RESPONSES)
@router.post("/dicomweb/studies/{study}", summary="STOW-RS: store instances of one study in the DICOM node",
             responses=_STORE_RESPONSES)
async def store(request: Request, study: str | None = None) -> JSONResponse:
    node = _node(request)
    instances = _instances(request.headers.get("content-type", ""), await request.body())

    def spool_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        stored, failed = [], []
        for data in instances:
            try:
                received = node.intake.receive(data, study)
                stored.append(_reference(received.sop_class_uid, received.sop_instance_uid))
            except Refused as refusal:
                reason = _SOP_CLASS_NOT_SUPPORTED if refusal.unsupported else (
                    _STUDY_NOT_SUPPORTED if refusal.wrong_study else _CANNOT_UNDERSTAND)
                item = _reference(refusal.sop_class_uid, refusal.sop_instance_uid, reason)
                item["00000902"] = _element("LO", refusal.reason[:64])  # Error Comment: why, in words
                failed.append(item)
            except OSError:
                failed.append(_reference("", "", _OUT_OF_RESOURCES))
        return stored, failed

    stored, failed = await anyio.to_thread.run_sync(spool_all)
    answer: dict[str, Any] = {}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    return JSONResponse(answer, status_code=status, media_type=MEDIA_TYPE)


@router.get("/v1/node", summary="The DICOM node's spool: instances per state, overall and per series",
            responses={503: {"model": ErrorResponse, "description": "node_not_configured: no DENOISE_FORWARD_TO"}})
async def node_status(request: Request) -> dict[str, Any]:
    node = _node(request)
    return await anyio.to_thread.run_sync(node.status)
