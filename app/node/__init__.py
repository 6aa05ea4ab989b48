"""The DICOM node: instances received over DIMSE (C-STORE) or DICOMweb (STOW-RS) are spooled
durably, denoised by the same pipeline as ``/v1/denoise``, and delivered to the site's PACS.

Off unless ``DENOISE_FORWARD_TO`` names a destination; the Storage SCP only where
``DENOISE_DICOM_PORT`` is set as well. Modules: ``spool`` (the durable states), ``intake`` (what is
accepted), ``worker`` (denoise, then deliver with retries), ``destination`` (C-STORE SCU or
STOW-RS), ``scp`` (the Storage SCP).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from app.imaging.dicom.transfer import check_offered
from app.node.destination import Destination, parse_destination
from app.node.intake import Intake
from app.node.scp import StorageSCP
from app.node.spool import STATES, Spool
from app.node.worker import NodeWorker
from app.pipeline import DenoisePipeline
from app.settings import Settings

logger = logging.getLogger(__name__)


class DicomNode:
    def __init__(self, settings: Settings, pipeline: DenoisePipeline, destination: Destination) -> None:
        self.spool = Spool(settings.spool_dir)
        self.destination = destination
        self.worker = NodeWorker(self.spool, pipeline, destination, settings.delivery_retry_max_s,
                                 settings.forward_transfer_syntax)
        self._token: Any = None
        self.intake = Intake(self.spool, pipeline.registry.modalities, self._wake_from_any_thread,
                             settings.max_pixels)
        self.scp: StorageSCP | None = None
        if settings.dicom_port is not None:
            self.scp = StorageSCP(self.intake, settings.dicom_ae_title, settings.dicom_host, settings.dicom_port,
                                  settings.dicom_allowed_aes, settings.dicom_allowed_hosts)

    def _wake_from_any_thread(self) -> None:
        if self._token is None:
            return
        try:
            anyio.from_thread.run_sync(self.worker.wake, token=self._token)
        except RuntimeError:  # already on the loop's thread
            self.worker.wake()

    async def start(self, group: anyio.abc.TaskGroup) -> None:
        self._token = anyio.lowlevel.current_token()
        group.start_soon(self.worker.run)
        if self.scp is not None:
            await anyio.to_thread.run_sync(self.scp.start)
        logger.info("DICOM node delivering to %s; spool %s", self.destination.describe(), self.spool.root)

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()

    def status(self) -> dict[str, Any]:
        """Counts per state, for the whole spool and per series (blocking: reads the spool)."""
        per_series: dict[str, Counter[str]] = {}
        totals: Counter[str] = Counter()
        last_errors: dict[str, str] = {}
        for state in STATES:
            for item in self.spool.items(state):
                totals[state] += 1
                per_series.setdefault(item.record.series_instance_uid, Counter())[state] += 1
                if item.record.last_error:
                    last_errors[item.record.series_instance_uid] = item.record.last_error
        return {
            "destination": self.destination.describe(),
            "states": {state: totals[state] for state in STATES},
            "delivery_failures": self.worker.delivery_failures,
            "series": [{"series_instance_uid": uid, **{s: counts[s] for s in STATES},
                        **({"last_error": last_errors[uid]} if uid in last_errors else {})}
                       for uid, counts in per_series.items()],
        }


def build_node(settings: Settings, pipeline: DenoisePipeline) -> DicomNode | None:
    """The node the settings ask for, or None (no DENOISE_FORWARD_TO)."""
    if settings.forward_to is None:
        if settings.dicom_port is not None:
            raise ValueError("DENOISE_DICOM_PORT is set but DENOISE_FORWARD_TO is not: the node would "
                             "receive instances it could deliver nowhere")
        return None
    if settings.forward_transfer_syntax is not None:
        check_offered(settings.forward_transfer_syntax)  # a syntax results cannot be written in stops start-up
    return DicomNode(settings, pipeline, parse_destination(settings.forward_to, settings.dicom_ae_title))
