"""What the DICOM node accepts, from C-STORE and STOW-RS alike: a readable DICOM instance of a
served modality, with the UIDs its result needs; spooled before anyone is told it was stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import DenoiseError
from app.imaging import dicom
from app.imaging.dicom.checks import READ_ERRORS
from app.imaging.dicom.read import check_instance
from app.node.spool import Record, Spool


class Refused(Exception):
    """The instance is not taken: ``reason`` says why; ``unsupported``: a modality not served."""

    def __init__(self, reason: str, unsupported: bool = False, wrong_study: bool = False,
                 sop_class_uid: str = "", sop_instance_uid: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsupported = unsupported
        self.wrong_study = wrong_study
        self.sop_class_uid, self.sop_instance_uid = sop_class_uid, sop_instance_uid


@dataclass(frozen=True)
class Received:
    sop_class_uid: str
    sop_instance_uid: str
    new: bool  # False: a resend of an instance the spool already has


@dataclass
class Intake:
    spool: Spool
    served_modalities: Callable[[], list[str]]
    on_received: Callable[[], None]  # must be safe to call from any thread
    max_pixels: int = 64 * 1024 * 1024  # the service's DENOISE_MAX_PIXELS

    def receive(self, data: bytes, study: str | None = None) -> Received:
        """Spool ``data`` (a Part 10 file) durably, or raise ``Refused``. Blocking: file I/O.

        The header is read and the pixel data checked against it (not decoded) first: a sender
        is never told "stored" for an instance the pipeline would find truncated."""
        if not dicom.is_dicom(data):
            raise Refused("not a DICOM Part 10 file")
        try:
            ds = check_instance(data, self.max_pixels)
        except DenoiseError as error:
            raise Refused(error.detail[:200]) from None
        try:
            sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
            sop_instance = str(ds.get("SOPInstanceUID", "") or "")
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            series_uid = str(ds.get("SeriesInstanceUID", "") or "")
            modality = dicom.modality_of(ds)
        except READ_ERRORS:
            raise Refused("the DICOM header cannot be read") from None
        uids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_instance}
        if not sop_instance or not sop_class:
            raise Refused("no SOP Class or SOP Instance UID", **uids)
        if not study_uid:
            raise Refused("no Study Instance UID (0020,000D)", **uids)
        if study is not None and study_uid != study:
            raise Refused(f"its Study Instance UID is not the study {study} of the request", wrong_study=True, **uids)
        if modality is None or modality not in self.served_modalities():
            tag = str(ds.get("Modality", "") or "missing")
            raise Refused(f"Modality {tag} has no model on this node", unsupported=True, **uids)
        record = Record(sop_instance_uid=sop_instance, study_instance_uid=study_uid,
                        series_instance_uid=series_uid, received_at=time.time())
        _, new = self.spool.receive(data, record)
        if new:
            self.on_received()
        return Received(sop_class, sop_instance, new)
