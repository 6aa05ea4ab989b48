"""Execution lanes: how many cores' worth of model calls may run at once, across every model.

A call on the CPU provider with every core (ONNX Runtime's intra-op threads) takes all lanes; a
one-thread call takes one, so on a 2-core node two requests' one-thread calls run side by side,
and a GPU call takes one. A plain counting semaphore cannot take several permits at once without
deadlocking two waiters against each other, hence this small condition-variable counter.
Waiting calls are served first come, first served: otherwise a steady stream of one-lane calls
would keep a call that needs every lane waiting for ever, and two such calls could overtake each
other without end (a 2048 x 2048 radiograph's p99 / p50 at concurrency 4 went from 1.2 to 2.8).
"""

from __future__ import annotations

import threading
from collections import deque


class Lanes:
    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("there must be at least one lane")
        self.count = count
        self._free = count
        self._waiting: deque[object] = deque()  # first come, first served
        self._condition = threading.Condition()

    def try_acquire(self, lanes: int) -> bool:
        """Take ``lanes`` lanes if they are free now and nobody is waiting for lanes."""
        self._check(lanes)
        with self._condition:
            if self._waiting or self._free < lanes:
                return False
            self._free -= lanes
            return True

    def acquire(self, lanes: int) -> None:
        """Take ``lanes`` lanes, after every call that began waiting before this one."""
        self._check(lanes)
        me = object()
        with self._condition:
            self._waiting.append(me)
            try:
                while self._waiting[0] is not me or self._free < lanes:
                    self._condition.wait()
            finally:
                self._waiting.remove(me)
                self._condition.notify_all()  # the next in line may fit in what is left
            self._free -= lanes

    def release(self, lanes: int) -> None:
        with self._condition:
            if self._free + lanes > self.count:
                raise RuntimeError("released more lanes than were taken")
            self._free += lanes
            self._condition.notify_all()

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _check(self, lanes: int) -> None:
        if not 1 <= lanes <= self.count:
            raise ValueError(f"a call takes 1 to {self.count} lanes, not {lanes}")
