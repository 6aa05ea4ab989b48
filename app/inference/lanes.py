"""Execution lanes: how many cores' worth of model calls may run at once, across every model.

A call on the CPU provider with every core (ONNX Runtime's intra-op threads) takes all lanes; a
one-thread call takes one, so on a 2-core node two requests' one-thread calls run side by side,
and a GPU call takes one. A plain counting semaphore cannot take several permits at once without
deadlocking two waiters against each other, hence this small condition-variable counter. A call
waiting for every lane goes first: one-lane calls wait behind it, or a steady stream of them
would keep it waiting for ever.
"""

from __future__ import annotations

import threading


class Lanes:
    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("there must be at least one lane")
        self.count = count
        self._free = count
        self._waiting_for_all = 0
        self._condition = threading.Condition()

    def try_acquire(self, lanes: int) -> bool:
        """Take ``lanes`` lanes if they are free now."""
        self._check(lanes)
        with self._condition:
            if not self._may_take(lanes):
                return False
            self._free -= lanes
            return True

    def acquire(self, lanes: int) -> None:
        """Take ``lanes`` lanes, waiting until they are free."""
        self._check(lanes)
        with self._condition:
            every = lanes == self.count
            self._waiting_for_all += every
            try:
                while not self._may_take(lanes, waiting_for_all=every):
                    self._condition.wait()
            finally:
                self._waiting_for_all -= every
            self._free -= lanes

    def release(self, lanes: int) -> None:
        with self._condition:
            if self._free + lanes > self.count:
                raise RuntimeError("released more lanes than were taken")
            self._free += lanes
            self._condition.notify_all()

    def _may_take(self, lanes: int, waiting_for_all: bool = False) -> bool:
        others_waiting_for_all = self._waiting_for_all - waiting_for_all
        return self._free >= lanes and (lanes == self.count or others_waiting_for_all == 0)

    @property
    def free(self) -> int:
        return self._free

    def _check(self, lanes: int) -> None:
        if not 1 <= lanes <= self.count:
            raise ValueError(f"a call takes 1 to {self.count} lanes, not {lanes}")
