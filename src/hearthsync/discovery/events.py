"""What discovery reports, and the one place that keeps the current view.

Every source (the mDNS browser, the static ``--peer`` list) writes into a :class:`PeerView`;
the view turns changes into :class:`PeerFound` / :class:`PeerLost` events and hands them to
callbacks and to :class:`EventStream` subscribers.  Sources never talk to consumers directly,
so a consumer sees one ordered stream whatever found the peer, and "found twice" or "lost
something never found" cannot leak out: the view only emits real changes.

The keys of the view are device ids for peers found by mDNS and ``static:HOST:PORT`` for
static peers, whose device id is unknown until the websocket handshake (DESIGN: sync protocol
step 2) proves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MAX_PEERS",
    "EventStream",
    "PeerEvent",
    "PeerFound",
    "PeerLost",
    "PeerView",
]

log = logging.getLogger(__name__)

#: A household has a handful of robots.  The bound keeps a LAN full of announcements that
#: pass the tag check (a leaked tag, a bug) from growing the view without limit
#: (DESIGN invariant 5: everything from outside the process is size-bounded).
MAX_PEERS = 256


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A peer can be dialled at ``host:port``.

    Reported again for the same ``device_id`` when its address or port changes, so a
    consumer that keeps only the latest ``PeerFound`` per device always dials the right place.
    """

    device_id: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The peer said goodbye, its records were withdrawn, or it was :meth:`PeerView.forget`-ed.

    mDNS never reports a peer that lost power: liveness comes from websocket heartbeats.
    """

    device_id: str


PeerEvent = PeerFound | PeerLost
Callback = Callable[[PeerEvent], None]


class EventStream:
    """An async iterator over one subscriber's events; ends when the view closes.

    Created by :meth:`PeerView.stream`, which registers it at once (not on the first
    ``__anext__``), so no event between subscribing and iterating is missed.
    """

    def __init__(self, view: PeerView) -> None:
        self._view = view
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        self._ended = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> PeerEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._ended = True
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving events; iteration ends after the events already queued."""
        self._view.discard_stream(self)
        self._queue.put_nowait(None)

    def put(self, event: PeerEvent | None) -> None:
        """Called by the view only."""
        self._queue.put_nowait(event)


class PeerView:
    """The peers currently known, keyed by device id (or ``static:HOST:PORT``).

    Sources call :meth:`found` and :meth:`lost`; both are idempotent, so a source may report
    what it sees without remembering what it already reported.
    """

    def __init__(self, preferred: Callable[[str], bool] | None = None) -> None:
        #: keys that take the place of others when the view is full (`found`)
        self._preferred = preferred
        self._peers: dict[str, tuple[str, int]] = {}
        self._callbacks: list[Callback] = []
        self._streams: list[EventStream] = []
        self._closed = False

    def peers(self) -> dict[str, tuple[str, int]]:
        """A copy of the current view: key -> (host, port)."""
        return dict(self._peers)

    def found(self, key: str, host: str, port: int) -> bool:
        """Record ``key`` at ``host:port``; emit :class:`PeerFound` if that is news."""
        if self._closed or self._peers.get(key) == (host, port):
            return False
        if key not in self._peers and len(self._peers) >= MAX_PEERS:
            victim = self._room_for(key)
            if victim is None:
                log.warning("discovery: ignoring %s, already %d peers in view", key, MAX_PEERS)
                return False
            log.warning("discovery: %s takes the place of %s in a full view", key, victim)
            del self._peers[victim]
            self._emit(PeerLost(victim))
        self._peers[key] = (host, port)
        self._emit(PeerFound(key, host, port))
        return True

    def _room_for(self, key: str) -> str | None:
        """The entry a ``preferred`` key takes the place of in a full view: the oldest that
        is not preferred (None: none, or ``key`` is not preferred).  Records anyone on the
        LAN can forge (the tag is in clear in every announcement) filled the view, and a
        robot of the household that restarted after was never reported, so never dialed
        (found in review); the robots a robot knows the certificates of are preferred."""
        if self._preferred is None or not self._is_preferred(key):
            return None
        return next((k for k in self._peers if not self._is_preferred(k)), None)

    def _is_preferred(self, key: str) -> bool:
        assert self._preferred is not None
        try:
            return self._preferred(key)
        except Exception:
            log.exception("discovery: the preference for %s failed", key)
            return False

    def lost(self, key: str) -> bool:
        """Drop ``key``; emit :class:`PeerLost` if it was in the view."""
        if self._closed or self._peers.pop(key, None) is None:
            return False
        self._emit(PeerLost(key))
        return True

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` on every change, on the event loop; returns the unsubscribe.

        A callback that raises is logged and kept: one bad consumer must not stop discovery.
        """
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def stream(self, *, replay: bool = True) -> EventStream:
        """A new :class:`EventStream`; with ``replay`` it starts with the peers already known.

        Replay closes the race between "discovery started" and "consumer subscribed": a
        consumer that subscribes late still hears about every peer exactly once.
        """
        stream = EventStream(self)
        if replay:
            for key, (host, port) in self._peers.items():
                stream.put(PeerFound(key, host, port))
        if self._closed:
            stream.put(None)
        else:
            self._streams.append(stream)
        return stream

    def discard_stream(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        """End every stream and stop emitting; the view keeps its last contents for reading."""
        self._closed = True
        for stream in self._streams:
            stream.put(None)
        self._streams.clear()

    def _emit(self, event: PeerEvent) -> None:
        log.debug("discovery: %s", event)
        for stream in self._streams:
            stream.put(event)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("discovery: callback %r failed on %s", callback, event)
