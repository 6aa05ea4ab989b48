"""The DICOM node's Storage SCP (pynetdicom): C-STORE in, C-ECHO answered.

An instance is acknowledged (status 0x0000) only once the spool has it on disk; if it cannot be
written the sender hears 0xA700 (out of resources) and keeps it. Associations are accepted from
the allowed calling AE titles and hosts only (none configured: any). pynetdicom answers in its
own threads; the handler spools and wakes the worker, nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from app.node.intake import Intake, Refused

logger = logging.getLogger(__name__)

_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
_SOP_CLASS_NOT_SUPPORTED = 0x0122


class StorageSCP:
    def __init__(self, intake: Intake, ae_title: str, host: str, port: int,
                 allowed_aes: tuple[str, ...] = (), allowed_hosts: tuple[str, ...] = ()) -> None:
        self.intake = intake
        self.allowed_hosts = set(allowed_hosts)
        self.ae = AE(ae_title=ae_title)
        # Every storage class in every transfer syntax a modality may propose: the compressed
        # ones too (pynetdicom's defaults are uncompressed only, which would turn a JPEG or
        # JPEG 2000 series away at association); what cannot be decoded is refused per
        # instance by the service's own reader, with its reason.
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        if allowed_aes:
            self.ae.require_calling_aet = list(allowed_aes)
        self.address = (host, port)
        self._server: Any = None

    def start(self) -> None:
        handlers: list[tuple[Any, Callable[..., Any]]] = [
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open)]
        self._server = self.ae.start_server(self.address, block=False, evt_handlers=handlers)
        logger.info("DICOM node listening on %s:%d as %s", *self.address, self.ae.ae_title)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _on_open(self, event: Any) -> None:
        address = event.address[0]
        if self.allowed_hosts and address not in self.allowed_hosts:
            logger.warning("DICOM association from %s refused: not in DENOISE_DICOM_ALLOWED_HOSTS", address)
            event.assoc.abort()

    def _on_store(self, event: Any) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # a dataset pynetdicom cannot write back is one we cannot read either
            return _CANNOT_UNDERSTAND
        try:
            self.intake.receive(data)
        except Refused as refusal:
            logger.info("C-STORE refused: %s", refusal.reason)
            return _SOP_CLASS_NOT_SUPPORTED if refusal.unsupported else _CANNOT_UNDERSTAND
        except OSError:
            logger.exception("C-STORE could not be spooled")
            return _OUT_OF_RESOURCES
        return 0x0000
