"""A request's deadline and its cancellation, checked between units of work.

The work runs in a worker thread, which cannot be interrupted from outside; it asks instead, at
every frame and every batch of tiles, whether it should go on. A request stops within one frame
or tile batch of passing its deadline (``DENOISE_REQUEST_TIMEOUT_S``: 504) or of its client
disconnecting (the route sets ``cancelled``), and its memory is freed with it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from app.errors import ClientGone, RequestTimedOut


@dataclass
class Deadline:
    seconds: float
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def remaining_s(self) -> float:
        return self.started + self.seconds - time.monotonic()

    def check(self) -> None:
        """Raise if the work should stop: the client left, or the time is up."""
        if self.cancelled.is_set():
            raise ClientGone("The client disconnected; its work was stopped.")
        if self.remaining_s <= 0:
            raise RequestTimedOut(
                f"The request took longer than this service's limit of {self.seconds:g} s "
                "(DENOISE_REQUEST_TIMEOUT_S) and was stopped; send a smaller image or fewer frames, "
                "or retry when the service is less busy."
            )


def no_deadline() -> Deadline:
    return Deadline(float("inf"))
