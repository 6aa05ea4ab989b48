"""The service's memory budget: a request is admitted only when its estimated memory fits.

``DENOISE_MEMORY_BUDGET_BYTES`` covers the memory requests can make the process take on top of
its idle size: the models' working memory during their calls, which is bounded by the call size
(``DENOISE_MAX_CALL_PIXELS``) and measured per model at start-up (``working_memory``), is set
aside once; the rest is shared by the requests in progress. Each request's share is estimated from
its header (pixels, frames) before anything of its size is allocated:

* one that could never fit, even alone, is refused at once (413 ``over_memory_budget``, with
  the figures);
* one that does not fit now waits, in arrival order so a large request is not starved by a
  stream of small ones, up to ``DENOISE_ADMISSION_WAIT_S`` or its deadline, then gets 503 with
  Retry-After.

The estimate is what this code allocates, measured (docs/BENCHMARKS.md, "Memory per request"),
not what a model could, so the budget is a bound on the process only together with the call cap.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from app.deadline import Deadline
from app.errors import OverMemoryBudget, ServiceBusy

GIB = 1 << 30
# Without a setting: half of the memory the process may use (its container's limit, else the
# machine's), at most 2 GiB. 2 GiB holds the working memory of two 512 x 512 model calls side by
# side and about a hundred 512 x 512 slices, or one 4096 x 4096 radiograph, at a time.
DEFAULT_SHARE = 0.5
DEFAULT_CAP_BYTES = 2 * GIB
# A cgroup v1 "no limit" is a huge number near 2^63, not "max".
_NO_LIMIT = 1 << 60
# How often a waiting request looks at its deadline and its client.
_POLL_S = 0.1


def memory_limit_bytes(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory this process may use: its cgroup's limit (v2, then v1), else the machine's."""
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget_bytes(limit: int | None = None) -> int:
    limit = memory_limit_bytes() if limit is None else limit
    return min(int(limit * DEFAULT_SHARE), DEFAULT_CAP_BYTES)


def megabytes(value: int) -> str:
    return f"{value / 1e6:.0f} MB"


@dataclass
class MemoryBudget:
    """``total`` bytes, of which ``reserved`` are the models' working memory; the rest is shared
    by the requests admitted."""

    total: int
    reserved: int = 0
    wait_s: float = 60.0
    used: int = field(default=0, init=False)
    _condition: threading.Condition = field(default_factory=threading.Condition, init=False)
    _waiting: deque[int] = field(default_factory=deque, init=False)
    _numbers: itertools.count[int] = field(default_factory=itertools.count, init=False)

    @property
    def capacity(self) -> int:
        """What requests may hold together."""
        return max(0, self.total - self.reserved)

    def grant(self, deadline: Deadline | None = None) -> MemoryGrant:
        return MemoryGrant(self, deadline)

    def _acquire(self, nbytes: int, deadline: Deadline | None, what: str) -> None:
        if nbytes > self.capacity:
            raise OverMemoryBudget(
                f"{what} needs about {megabytes(nbytes)} of memory to process, more than this service "
                f"can give one request ({megabytes(self.capacity)}: DENOISE_MEMORY_BUDGET_BYTES "
                f"{megabytes(self.total)} less {megabytes(self.reserved)} for the models' working "
                "memory); send a smaller image or fewer frames."
            )
        give_up = time.monotonic() + self.wait_s
        if deadline is not None:
            give_up = min(give_up, time.monotonic() + max(0.0, deadline.remaining_s))
        with self._condition:
            number = next(self._numbers)
            self._waiting.append(number)
            try:
                while self._waiting[0] != number or self.used + nbytes > self.capacity:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise ServiceBusy(
                            f"{what} needs about {megabytes(nbytes)} of memory and the requests in "
                            f"progress hold {megabytes(self.used)} of {megabytes(self.capacity)}; "
                            "retry after the time in the Retry-After header.",
                            retry_after_s=max(1, math.ceil(self.wait_s)),
                        )
                    if deadline is not None:
                        deadline.check()
                    self._condition.wait(min(left, _POLL_S))
                self.used += nbytes
            finally:
                self._waiting.remove(number)
                self._condition.notify_all()  # the next in line may fit now

    def _release(self, nbytes: int) -> None:
        with self._condition:
            self.used -= nbytes
            self._condition.notify_all()


@dataclass
class MemoryGrant:
    """One request's share: ``take`` as its sizes become known, everything back on ``release``."""

    budget: MemoryBudget
    deadline: Deadline | None = None
    held: int = 0

    def take(self, nbytes: int, what: str = "The image") -> None:
        self.budget._acquire(nbytes, self.deadline, what)
        self.held += nbytes

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget._release(held)

    def __enter__(self) -> MemoryGrant:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
