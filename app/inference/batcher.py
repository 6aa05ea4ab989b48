"""Adaptive micro-batching: concurrent requests for one model share ONNX Runtime calls.

Callers (worker threads running a request's tiling) submit float32 batches of tiles
``(k, 1, h, w)`` and block until their own outputs come back. One collector thread per model
takes the oldest waiting submission and adds later ones of the same tile shape until the batch
holds ``max_batch`` tiles or the oldest has waited ``max_delay_s``, runs them as one call and
hands each caller its own slice of the output, one for one.

Adaptive: the collector only waits for requests it knows are coming. A request announces itself
(``expect()``) when its model is chosen and counts as *preparing* until its tiles are queued; with
nobody preparing, the collector runs what is queued at once, so a lone request adds no batch
delay. Such a lone submission, with nothing queued or running for its model and an execution slot
free, runs in its caller's own thread: the hand-off to the collector and back would be two thread
wake-ups. Under load, requests queue while the previous batch runs and are taken together without
waiting at all.

One-core lanes (CPU): given ``run_narrow`` (the model on a one-thread session), the batcher has
one collector per lane, and what is not alone runs one submission at a time on one core while
other collectors run others on the other cores. On a CPU a call spread over every core
synchronises its threads at every layer, and the service's own decoding and encoding, preempting
one of them, leaves the others spinning; one-thread calls side by side do not wait on each other
(docs/BENCHMARKS.md, the seventh pass). A lone submission still runs on every core.

A batch that fails is run again one submission at a time, so a request whose tile makes the model
fail (an input the graph cannot take) does not fail the innocent requests that shared its batch;
each submission that fails on its own gets its own exception. The queue is bounded in
tiles: a submission that does not fit raises ``ServiceBusy`` (503 with Retry-After) instead of
letting latency grow without end. Model runs of all batchers share the execution lanes
(:mod:`app.inference.lanes`), because each ONNX Runtime session already uses every core it is given.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.errors import ModelUnavailable, ServiceBusy
from app.inference.lanes import Lanes

logger = logging.getLogger(__name__)

# Takes a float32 batch (N, C, h, w), returns (N, 1, h, w).
RunFunction = Callable[[np.ndarray], np.ndarray]


class BatchObserver(Protocol):
    def __call__(
        self, model: str, tiles: int, queued_seconds: list[float], run_seconds: float, *, one_core: bool = False
    ) -> None: ...


@dataclass
class Ticket:
    """One request that will submit work; it counts as preparing unless it has tiles queued."""

    queued: bool = False
    closed: bool = False


# eq=False: the queue removes items by identity. The generated __eq__ would compare the numpy
# inputs, which raises for an item of another tile shape queued ahead and killed the collector.
@dataclass(eq=False)
class _Item:
    inputs: np.ndarray
    enqueued: float
    ticket: Ticket | None
    future: Future[tuple[np.ndarray, float]] = field(default_factory=Future)

    @property
    def tiles(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    @property
    def pixels(self) -> int:
        return self.tiles * int(self.inputs.shape[-2]) * int(self.inputs.shape[-1])


class MicroBatcher:
    def __init__(
        self,
        name: str,
        run: RunFunction,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        max_pixels: int | None = None,
        execution: Lanes | None = None,
        wide_lanes: int = 1,
        run_narrow: RunFunction | None = None,
        narrow_max_tile_pixels: int | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """A batch holds at most ``max_batch`` tiles and, when given, ``max_pixels`` pixels (a
        single larger submission still runs, alone). ``execution`` is shared by every batcher; a call on every core takes ``wide_lanes`` of
        it, a ``run_narrow`` call (one thread) one lane, for tiles of at most
        ``narrow_max_tile_pixels`` (larger ones always run on every core)."""
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be positive, max_delay_s not negative")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self._run = run
        self._execution = execution or Lanes(1)
        self._wide_lanes = wide_lanes
        self._run_narrow = run_narrow
        self._narrow_max_tile_pixels = narrow_max_tile_pixels
        self._observer = observer
        self._condition = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_tiles = 0
        self._preparing = 0
        self._closed = False
        self._seconds_per_tile = 0.0  # running estimate, for Retry-After
        self._stopped_by: BaseException | None = None  # a bug in a model run or the collector
        self._in_hand: list[list[_Item]] = []  # each collector's batch, taken off the queue
        self._running_here = False  # a submission runs in its caller's thread (``_alone``)
        collectors = self._execution.count if run_narrow is not None else 1
        self._workers = [
            threading.Thread(target=self._serve, name=f"batcher-{name}-{n}", daemon=True) for n in range(collectors)
        ]
        for worker in self._workers:
            worker.start()

    # -- callers ---------------------------------------------------------------------------

    def announce(self) -> Ticket:
        """Announce a request that will submit tiles soon, so a forming batch waits for it."""
        with self._condition:
            self._preparing += 1
        return Ticket()

    def withdraw(self, ticket: Ticket) -> None:
        """The request will submit nothing more (idempotent)."""
        with self._condition:
            if ticket.closed:
                return
            if not ticket.queued:
                self._preparing -= 1
            ticket.closed = True
            self._condition.notify_all()

    @contextlib.contextmanager
    def expect(self) -> Iterator[Ticket]:
        """``announce`` on entry, ``withdraw`` on exit."""
        ticket = self.announce()
        try:
            yield ticket
        finally:
            self.withdraw(ticket)

    def check_capacity(self, tiles: int = 1) -> None:
        """Raise ``ServiceBusy`` now if ``tiles`` more would not fit in the queue."""
        with self._condition:
            self._refuse_if_full(tiles)

    def submit(self, inputs: np.ndarray, ticket: Ticket | None = None) -> tuple[np.ndarray, float]:
        """Run ``inputs`` (k, C, h, w) in some batch; returns (outputs, seconds spent queued)."""
        if inputs.ndim != 4:
            raise ValueError(f"expected a batch (k, C, h, w), got shape {inputs.shape}")
        item = _Item(inputs, time.perf_counter(), ticket)
        with self._condition:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            if self._stopped_by is not None:
                raise self._unavailable()
            self._refuse_if_full(item.tiles)
            if ticket is not None and not ticket.queued:
                ticket.queued = True
                self._preparing -= 1
            run_here = self._alone() and self._execution.try_acquire(self._wide_lanes)
            if run_here:
                self._running_here = True
            else:
                self._queue.append(item)
                self._queued_tiles += item.tiles
                self._condition.notify_all()
        if run_here:
            try:
                self._run_batch([item])
            except BaseException as error:  # a bug, as if in the collector: it stops the model
                self._stop(error, [item])
            finally:
                self._execution.release(self._wide_lanes)
                with self._condition:  # what queued meanwhile is the collector's now
                    self._running_here = False
                    self._condition.notify_all()
        try:
            return item.future.result()
        finally:
            if ticket is not None:
                with self._condition:
                    ticket.queued = False
                    if not ticket.closed:  # it may submit again (the next group of tiles)
                        self._preparing += 1

    def _alone(self) -> bool:
        """Nothing queued, in hand, running or announced: no batch could form with this
        submission, so its own thread runs it. A hand-off to the collector and back is two
        thread wake-ups, for nothing (docs/BENCHMARKS.md, "Tuning decisions", a lone model
        call runs in its request's thread)."""
        return not self._queue and not any(self._in_hand) and not self._running_here and self._preparing == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued, then stop the collector thread."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    @property
    def queued_tiles(self) -> int:
        return self._queued_tiles

    @property
    def stopped(self) -> bool:
        """Whether a bug stopped the model's inference (not closed): nothing can run any more."""
        return self._stopped_by is not None

    def _unavailable(self) -> ModelUnavailable:
        return ModelUnavailable(
            f"Model '{self.name}' cannot run: its inference worker stopped on an internal error "
            f"({type(self._stopped_by).__name__}); /readyz reports it. Use another model or restart "
            "the service."
        )

    def _refuse_if_full(self, tiles: int) -> None:
        if self._queued_tiles + tiles <= self.max_queue:
            return
        drain_s = (self._queued_tiles + tiles) * self._seconds_per_tile
        raise ServiceBusy(
            f"The inference queue for model '{self.name}' is full ({self._queued_tiles} tiles "
            "waiting); retry after the time in the Retry-After header, or send fewer requests "
            "at once.",
            retry_after_s=max(1, math.ceil(drain_s)),
        )

    # -- collector -------------------------------------------------------------------------

    def _take(self, batch: list[_Item]) -> None:
        """Move queued items of the batch's shape into ``batch``, oldest first, up to max_batch
        tiles and max_pixels pixels."""
        shape = batch[0].shape if batch else self._queue[0].shape
        tiles = sum(i.tiles for i in batch)
        pixels = sum(i.pixels for i in batch)
        max_pixels = self.max_pixels if self.max_pixels is not None else math.inf
        for item in list(self._queue):
            if item.shape != shape:
                continue
            if batch and (tiles + item.tiles > self.max_batch or pixels + item.pixels > max_pixels):
                break
            self._queue.remove(item)
            self._queued_tiles -= item.tiles
            batch.append(item)
            tiles += item.tiles
            pixels += item.pixels
            if tiles >= self.max_batch or pixels >= max_pixels:
                break

    def _full(self, batch: list[_Item]) -> bool:
        """Whether not even one more tile of the batch's shape fits."""
        if sum(i.tiles for i in batch) >= self.max_batch:
            return True
        if self.max_pixels is None:
            return False
        tile_pixels = batch[0].pixels // batch[0].tiles
        return sum(i.pixels for i in batch) + tile_pixels > self.max_pixels

    def _collect(self) -> list[_Item] | None:
        """The next batch, registered in ``_in_hand``; None once closed and drained, or stopped."""
        with self._condition:
            # While a submission runs in its own thread, later ones queue as they would behind
            # the collector's own model call, and form the next batch when it returns.
            while not self._queue or self._running_here:
                if (self._closed and not self._queue) or self._stopped_by is not None:
                    return None
                self._condition.wait()
            batch: list[_Item] = []
            self._in_hand.append(batch)  # taken off the queue, not yet answered
            if self._run_narrow is not None:
                # Lanes: one submission per call, run at once. A window would only hold it
                # back; another collector takes the next one.
                batch.append(self._queue.popleft())
                self._queued_tiles -= batch[0].tiles
                return batch
            deadline = self._queue[0].enqueued + self.max_delay_s
            while True:
                self._take(batch)
                full = self._full(batch)
                remaining = deadline - time.perf_counter()
                if full or self._preparing == 0 or remaining <= 0 or self._closed:
                    return batch
                self._condition.wait(remaining)

    def _serve(self) -> None:
        try:
            self._serve_until_closed()
        except BaseException as error:
            self._stop(error)

    def _stop(self, error: BaseException, running: list[_Item] | None = None) -> None:
        """A bug would otherwise leave every queued and later request waiting forever: fail them
        now, refuse new ones, and let /readyz say so."""
        stack = "".join(traceback.format_tb(error.__traceback__))  # not the message: it may quote data
        logger.error("batcher %s stopped: %s\n%s", self.name, type(error).__name__, stack)
        with self._condition:
            self._stopped_by = error
            in_hand = [item for batch in self._in_hand for item in batch]
            waiting, self._queue = [*(running or []), *in_hand, *self._queue], deque()
            self._queued_tiles = 0
            self._condition.notify_all()  # the collector ends too
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(self._unavailable())

    def _serve_until_closed(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            if self._run_narrow is not None:
                self._run_in_a_lane(batch)
            else:
                self._execution.acquire(self._wide_lanes)
                try:
                    with self._condition:  # more may have arrived while another model ran
                        if self._queue:
                            self._take(batch)
                    self._run_batch(batch)
                finally:
                    self._execution.release(self._wide_lanes)
            # Answered (a bug raised above leaves it in hand, for _stop to fail its callers); its
            # inputs are not kept alive while the next batch forms.
            with self._condition:
                self._in_hand = [b for b in self._in_hand if b is not batch]
            batch = []

    def _run_in_a_lane(self, batch: list[_Item]) -> None:
        """On every core if nothing else wants the model (and the cores are free) or its tiles
        are large, else on one."""
        with self._condition:
            alone = not self._queue and self._preparing == 0 and not self._running_here
            alone = alone and not any(b for b in self._in_hand if b is not batch)
        narrow = self._run_narrow
        assert narrow is not None  # lanes only exist with a one-thread session
        rows, cols = batch[0].shape[-2:]
        large = self._narrow_max_tile_pixels is not None and rows * cols > self._narrow_max_tile_pixels
        if large:
            self._execution.acquire(self._wide_lanes)
        one_core = not large and not (alone and self._execution.try_acquire(self._wide_lanes))
        if one_core:
            self._execution.acquire(1)
        lanes = 1 if one_core else self._wide_lanes
        try:
            self._run_batch(batch, narrow if one_core else self._run, one_core=one_core)
        finally:
            self._execution.release(lanes)

    def _run_batch(self, batch: list[_Item], run: RunFunction | None = None, *, one_core: bool = False) -> None:
        started = time.perf_counter()
        queued = [started - item.enqueued for item in batch]
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([i.inputs for i in batch])
        try:
            outputs = (run or self._run)(inputs)
            if outputs.shape[0] != inputs.shape[0]:
                raise ValueError(f"model returned {outputs.shape[0]} outputs for {inputs.shape[0]} inputs")
        except Exception as error:  # the model's failure goes to its callers, never up here
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            # One submission's input may be what failed: only the ones that fail alone fail.
            logger.warning(
                "batch of %d tiles from %d submissions for model %s failed (%s); running each alone",
                inputs.shape[0],
                len(batch),
                self.name,
                type(error).__name__,
            )
            for item in batch:
                self._run_batch([item], run, one_core=one_core)
            return
        seconds = time.perf_counter() - started
        tiles = int(inputs.shape[0])
        self._seconds_per_tile = 0.8 * self._seconds_per_tile + 0.2 * seconds / tiles
        first = 0
        for item, waited in zip(batch, queued, strict=True):
            item.future.set_result((outputs[first : first + item.tiles], waited))
            first += item.tiles
        if self._observer is not None:
            try:
                self._observer(self.name, tiles, queued, seconds, one_core=one_core)
            except Exception:  # metrics must never stop the collector
                logger.exception("batch observer failed")
