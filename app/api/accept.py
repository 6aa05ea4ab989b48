"""What the client's Accept header asks of a DICOM answer (PS3.18 8.7.3.5): the transfer syntax,
as ``application/dicom; transfer-syntax=<uid>`` or, for several instances,
``multipart/related; type="application/dicom"; transfer-syntax=<uid>``."""

from __future__ import annotations


def _parameters(parts: list[str]) -> dict[str, str]:
    pairs = (part.split("=", 1) for part in parts if "=" in part)
    return {name.strip().lower(): value.strip().strip('"') for name, value in pairs}


def _refused(parameters: dict[str, str]) -> bool:
    """q=0: the client says it does not accept this range (RFC 9110 12.4.2)."""
    try:
        return float(parameters.get("q", "1")) == 0.0
    except ValueError:
        return False


def dicom_transfer_syntax(accept: str | None) -> str | None:
    """The transfer syntax of the first DICOM media range in ``accept``; None where there is none
    or it is ``*`` (any: the service's default)."""
    for media_range in (accept or "").split(","):
        kind, *rest = (part.strip() for part in media_range.split(";"))
        parameters = _parameters(rest)
        is_dicom = kind.lower() == "application/dicom" or (
            kind.lower() == "multipart/related" and parameters.get("type", "").lower() == "application/dicom")
        if is_dicom and not _refused(parameters):
            syntax = parameters.get("transfer-syntax")
            return None if not syntax or syntax == "*" else syntax
    return None
