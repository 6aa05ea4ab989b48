"""The DICOM node's worker: spooled instances through the pipeline, results to the destination.

One task on the event loop. It denoises what was received (through ``DenoisePipeline.run``, the
same micro-batcher as ``/v1/denoise``, a few at a time so their tiles share model calls), then
delivers what was denoised, oldest first. A delivery that fails waits before the next attempt,
1 s doubling up to ``retry_max_s``, and holds the ones after it back (the destination is down);
an instance the service refuses for good (a 4xx: not an image, a modality not served) goes to
``failed`` with the reason. Everything is read back from the spool, so a restart resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from app.errors import DenoiseError, ModelUnavailable, RequestTimedOut, ServiceBusy
from app.node.destination import DeliveryFailed, Destination
from app.node.spool import Item, Spool
from app.pipeline import DenoisePipeline, DenoiseRequest

logger = logging.getLogger(__name__)

AT_ONCE = 4  # instances denoised side by side: their tiles can share model calls
IDLE_POLL_S = 1.0
# Failures that pass: the service was busy, or the model briefly unavailable. Others are final.
_TRANSIENT = (ServiceBusy, ModelUnavailable, RequestTimedOut)


@dataclass
class NodeWorker:
    spool: Spool
    pipeline: DenoisePipeline
    destination: Destination
    retry_max_s: float = 300.0
    transfer_syntax: str | None = None  # of the results (DENOISE_FORWARD_TRANSFER_SYNTAX)
    delivered: int = 0
    delivery_failures: int = 0
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _down_until: float = 0.0
    _failures_in_row: int = 0

    def wake(self) -> None:
        """Something was received (called on the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self.spool.resume)
        while True:
            worked = await self._denoise_due()
            worked = await self._deliver_due() or worked
            if not worked:
                with anyio.move_on_after(IDLE_POLL_S):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _denoise_due(self) -> bool:
        due = await anyio.to_thread.run_sync(lambda: list(self.spool.due("received", time.time()))[:AT_ONCE])
        if not due:
            return False
        async with anyio.create_task_group() as group:
            for item in due:
                group.start_soon(self._denoise, item)
        return True

    async def _denoise(self, item: Item) -> None:
        try:
            data = await anyio.to_thread.run_sync(self.spool.read, item)
            outcome = await self.pipeline.run(
                DenoiseRequest(data=data, metrics="none", transfer_syntax=self.transfer_syntax))
        except _TRANSIENT as error:
            await anyio.to_thread.run_sync(self.spool.retry_later, item, error.detail, self._wait(item))
            return
        except DenoiseError as error:
            logger.warning("instance %s refused for good: %s", item.key, error.code)
            item.record.last_error = f"{error.code}: {error.detail}"
            await anyio.to_thread.run_sync(self._fail, item)
            return
        except Exception as error:  # never stop the worker; the instance waits and is tried again
            logger.exception("instance %s: unexpected error while denoising", item.key)
            await anyio.to_thread.run_sync(self.spool.retry_later, item, type(error).__name__, self._wait(item))
            return
        await anyio.to_thread.run_sync(self.spool.advance, item, "denoised", outcome.content, item.record)

    def _fail(self, item: Item) -> None:
        self.spool.advance(item, "failed", self.spool.read(item), item.record, item.record.last_error)

    async def _deliver_due(self) -> bool:
        if time.time() < self._down_until:
            return False
        due = await anyio.to_thread.run_sync(lambda: list(self.spool.due("denoised", time.time())))
        for item in due:
            try:
                data = await anyio.to_thread.run_sync(self.spool.read, item)
                await anyio.to_thread.run_sync(self.destination.deliver, data)
            except (DeliveryFailed, OSError) as error:
                # The destination is down: every instance waits, not only this one, so a long
                # series does not knock once per instance. The wait doubles while it stays down.
                self.delivery_failures += 1
                self._failures_in_row += 1
                wait = float(min(self.retry_max_s, 2.0 ** (self._failures_in_row - 1)))
                self._down_until = time.time() + wait
                logger.warning("delivery to %s failed (%s); next attempt in %.0f s",
                               self.destination.describe(), error, wait)
                await anyio.to_thread.run_sync(self.spool.retry_later, item, str(error), 0.0)
                return True
            self._failures_in_row = 0
            item.record.delivered_to = self.destination.describe()
            await anyio.to_thread.run_sync(self.spool.advance, item, "delivered", None, item.record)
            self.delivered += 1
        return bool(due)

    def _wait(self, item: Item) -> float:
        return float(min(self.retry_max_s, 2.0 ** item.record.attempts))
