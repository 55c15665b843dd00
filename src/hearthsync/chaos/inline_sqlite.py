"""SQLite on the simulation's own thread: the same files and SQL, without a thread hop.

`hearthsync.store.sqlite` runs every statement on aiosqlite's worker thread, which is right
for a robot (the event loop never waits on the disk) and wasteful for the simulation, which
awaits every commit before it takes its next event anyway: the hop (a queue, a thread wake-up,
a ``call_soon_threadsafe`` back) cost about an eighth of a schedule, and it was the one thing
in a schedule whose timing the seed did not decide.

`inline_sqlite` makes the stores opened inside it run their statements where they are awaited.
Everything else (the files, the schema, the transactions, ``synchronous``) is the store's own.
It relies on how aiosqlite dispatches work (one private method, ``_execute``); if a future
aiosqlite changes that, `supported` is false and stores open as usual, only slower.  A store
hook for this would be better (see docs/how-to/chaos.md).
"""

from __future__ import annotations

import contextlib
import sqlite3
import types
from collections.abc import Callable, Iterator
from typing import Any

import aiosqlite
import aiosqlite.core

import hearthsync.store.sqlite as store_module


class _InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements run on the caller's thread, when awaited."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> _InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:  # no worker thread to start
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def _connect(database: Any, *, iter_chunk_size: int = 64, **kwargs: Any) -> _InlineConnection:
    return _InlineConnection(lambda: sqlite3.connect(database, **kwargs), iter_chunk_size)


_STORE_NAME = "aiosqlite"  #: the name under which the store module holds aiosqlite


def supported() -> bool:
    """Whether this aiosqlite dispatches work the way `_InlineConnection` overrides, and the
    store still opens its connection with ``aiosqlite.connect``."""
    connection = aiosqlite.core.Connection
    held = getattr(store_module, _STORE_NAME, None)
    return held is aiosqlite and all(
        hasattr(connection, name) for name in ("_execute", "_connect", "stop", "close")
    )


@contextlib.contextmanager
def inline_sqlite() -> Iterator[None]:
    """Stores opened inside this block run SQLite inline (see the module doc)."""
    if not supported():
        yield
        return
    shim = types.SimpleNamespace(connect=_connect, Connection=_InlineConnection)
    setattr(store_module, _STORE_NAME, shim)
    try:
        yield
    finally:
        setattr(store_module, _STORE_NAME, aiosqlite)
