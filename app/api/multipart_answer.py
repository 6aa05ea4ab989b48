"""Several results in one answer: ``multipart/related`` (RFC 2387), as DICOMweb answers a
retrieve of several instances (PS3.18 8.7.3.2): each part its own media type and headers, in the
order the files were sent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

MEDIA_TYPE = "multipart/related"


def accepts(accept: str | None) -> bool:
    """Whether a client's Accept header allows a multipart/related answer (no header: anything)."""
    if accept is None or not accept.strip():
        return True
    for media_range in accept.split(","):
        kind, *rest = (part.strip() for part in media_range.split(";"))
        parameters = dict(p.split("=", 1) for p in rest if "=" in p)
        parameters = {k.strip().lower(): v.strip().strip('"').lower() for k, v in parameters.items()}
        if parameters.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue  # q=0: explicitly not acceptable (RFC 9110 12.4.2)
        if kind.lower() in ("*/*", "multipart/*"):
            return True
        if kind.lower() == MEDIA_TYPE and parameters.get("type", "application/dicom") == "application/dicom":
            return True
    return False


def encode(parts: Sequence[tuple[dict[str, str], bytes]], media_type: str) -> tuple[bytes, str]:
    """(body, Content-Type) of ``parts``, each (headers, content), all of ``media_type``."""
    boundary = uuid.uuid4().hex
    delimiter = f"--{boundary}\r\n".encode()
    chunks: list[bytes] = []
    for headers, content in parts:
        lines = [f"Content-Type: {media_type}", *(f"{name}: {value}" for name, value in headers.items())]
        chunks += [delimiter, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), content, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    root_type = media_type.split(";")[0].strip()  # the type parameter names the parts' type alone
    return b"".join(chunks), f'{MEDIA_TYPE}; type="{root_type}"; boundary={boundary}'
