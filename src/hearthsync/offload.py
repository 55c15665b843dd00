"""Where blocking work runs: embedding a batch, inserting vectors into an HNSW graph, saving
an index.

A robot runs it on a worker thread (`asyncio.to_thread`, the default): the event loop keeps
serving its peers while numpy, which releases the GIL, uses another core.  usearch's inserts
take the GIL back for every vector, so live inserts run on the loop's thread instead, in short
chunks, once it is idle (`Peer._index_staged`); the worker thread inserts only when nothing
else runs (opening an index, closing).  A
simulation runs it `inline`: it awaits each result before its next event anyway, the hop to
a thread and back cost it about a twentieth of a schedule, and a thread is one more thing
whose timing the seed would not decide.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Offload(Protocol):
    """Run ``func(*args, **kwargs)`` somewhere the event loop can await."""

    def __call__(
        self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[T]: ...


async def inline(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``func`` right here, on the event loop's thread, when awaited."""
    return func(*args, **kwargs)


def thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
    """Start ``func`` on a worker thread now (not when awaited, as `asyncio.to_thread` does):
    the caller can go on with its own work meanwhile, then await the result."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return loop.run_in_executor(None, functools.partial(context.run, func, *args, **kwargs))


THREAD: Offload = thread  #: the default: a worker thread
