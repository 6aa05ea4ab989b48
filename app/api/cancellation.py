"""Work for a request that stops when its client disconnects.

The work runs in a worker thread with a :class:`~app.deadline.Deadline`; while it runs, a task
waits on the ASGI receive channel. The body is read by then, so the next message is the client's
disconnect (or the answer sent), and the deadline's ``cancelled`` event stops the worker within a
frame or a model call instead of finishing for nobody.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request

from app.deadline import Deadline

# Waiting on the ASGI receive for a disconnect slowed every request (docs/BENCHMARKS.md, "The
# conditioned U-Nets (2026-12-07)", the disconnect watch); a request that ends sooner than this
# never starts to watch.
WATCH_AFTER_S = 0.5

T = TypeVar("T")


async def _cancel_on_disconnect(request: Request, cancelled: threading.Event) -> None:
    await anyio.sleep(WATCH_AFTER_S)
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancelled.set()
            return


async def run_until_done_or_gone(request: Request, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
    """``await work()``, with ``deadline.cancelled`` set if the client disconnects meanwhile."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_disconnect, request, deadline.cancelled)
        try:
            result = await work()
        except Exception as error:  # raised after the group, so it is not wrapped in a group
            failure = error
        finally:
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result
