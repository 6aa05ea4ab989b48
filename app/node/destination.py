"""Where the DICOM node delivers its results: a PACS over DIMSE (C-STORE) or DICOMweb (STOW-RS).

``DENOISE_FORWARD_TO`` names it: ``dicom://AE@host:port`` or ``http(s)://host/path`` (a DICOMweb
root; instances go to ``<root>/studies``). Each ``deliver`` call sends one derived instance and
raises ``DeliveryFailed`` unless the destination confirmed it stored it; the caller retries.
Blocking I/O: called from a worker thread.
"""

from __future__ import annotations

import io
import re
import uuid
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Protocol

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

# An AE title: 1-16 characters of the default repertoire without backslash, not all spaces
# (PS3.5 6.2, VR AE); a host name, an IPv4 address, or an IPv6 one in brackets.
_DICOM_URL = re.compile(
    r"^dicom://(?P<ae>(?=[^@]{1,16}@)[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@/\[\]]+)"
    r":(?P<port>\d{1,5})/?$")
TIMEOUT_S = 30.0


class DeliveryFailed(Exception):
    """The destination did not confirm it stored the instance (down, refused, or unreachable)."""


class Destination(Protocol):
    def deliver(self, data: bytes) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class DimseDestination:
    """A Storage SCP (a PACS) reached by C-STORE from the node's own AE title."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str

    def describe(self) -> str:
        return f"dicom://{self.ae_title}@{self.host}:{self.port}"

    def deliver(self, data: bytes) -> None:
        from pynetdicom import AE

        dataset = pydicom.dcmread(io.BytesIO(data))
        syntax = dataset.file_meta.TransferSyntaxUID
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        # Two contexts: the answer's own syntax (DENOISE_FORWARD_TRANSFER_SYNTAX, compressed
        # perhaps), and the uncompressed ones every SCP must accept (PS3.5 10.1). Whichever the
        # PACS accepts decides how the instance travels.
        uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.add_requested_context(dataset.SOPClassUID, [syntax])
        if syntax not in uncompressed:
            ae.add_requested_context(dataset.SOPClassUID, uncompressed)
        association = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not association.is_established:
            raise DeliveryFailed(f"no association with {self.describe()}")
        try:
            accepted = {str(c.transfer_syntax[0]) for c in association.accepted_contexts
                        if c.abstract_syntax == dataset.SOPClassUID}
            if syntax not in uncompressed and syntax not in accepted:
                # The PACS takes only uncompressed instances: lossless both ways, the same values.
                if syntax.is_compressed:
                    dataset.decompress()
                else:  # deflated: a dataset encoding, which pynetdicom redoes for the context
                    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            status = association.send_c_store(dataset)
        finally:
            association.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        # 0x0000 success; 0xB000, 0xB007, 0xB006: stored with a warning (PS3.4 Table B.2-1).
        if code not in (0x0000, 0xB000, 0xB006, 0xB007):
            raise DeliveryFailed(f"C-STORE to {self.describe()} answered status 0x{code & 0xFFFF:04X}")


@dataclass(frozen=True)
class DicomWebDestination:
    """A DICOMweb server (PS3.18 10.5, Store Transaction): POST <root>/studies."""

    root: str

    def describe(self) -> str:
        return self.root

    def deliver(self, data: bytes) -> None:
        boundary = uuid.uuid4().hex
        body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:
            response = httpx.post(f"{self.root.rstrip('/')}/studies", content=body, headers=headers,
                                  timeout=TIMEOUT_S)
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"STOW-RS to {self.root}: {type(error).__name__}") from None
        # 200: all stored; 202: some with warnings; 409 and the rest: not stored (PS3.18 10.5.3).
        if response.status_code not in (200, 202):
            raise DeliveryFailed(f"STOW-RS to {self.root} answered {response.status_code}")


def parse_destination(url: str, calling_ae_title: str) -> Destination:
    """``dicom://AE@host:port`` or ``http(s)://...``; ValueError naming the accepted forms."""
    match = _DICOM_URL.match(url)
    if match:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} of {url!r} is not 1-65535")
        return DimseDestination(match["ae"].strip(), match["host"].strip("[]"), port, calling_ae_title)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return DicomWebDestination(url)
    raise ValueError(
        f"DENOISE_FORWARD_TO {url!r} is neither dicom://AE@host:port (C-STORE; an AE title of 1-16 "
        "characters, no backslash) nor http(s)://host/path "
        "(a DICOMweb root)"
    )
