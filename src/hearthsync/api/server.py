"""Serving the local HTTP API from ``hearth run`` (uvicorn, in the robot's own event loop).

The API listens on a loopback address only: it is for the robot's own software stack, and its
bearer token is the only thing between a caller and everything the robot knows.  The token is
made once per peer folder (``api.token``, mode 0600, 32 random bytes as text, written whole or
not at all) and read by local clients (``hearth context`` among them) from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hearthsync.api.app import MIN_TOKEN, make_app
from hearthsync.crypto.identity import fsync_dir
from hearthsync.errors import StoreError, ValidationError
from hearthsync.peer import Peer

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"  # noqa: S105 - a file name, not a secret
DEFAULT_PORT = 7421
#: seconds the requests in flight have to end once the robot stops; then they are cancelled
#: (unanswered, so nothing they would have acknowledged is lost)
SHUTDOWN_GRACE_S = 5
#: seconds a request has to arrive whole (head and body), from the connection or the answer
#: before it; then the connection is closed
REQUEST_TIMEOUT_S = 10.0


def api_token(folder: Path) -> str:
    """The API token of the peer in ``folder``, made (mode 0600) the first time it is asked.

    A file holding no token a client could send (empty, or zeros: what a crash while it was
    written left, and then every ``hearth run`` refused to start, naming neither the file nor
    what to do; found in review) is replaced by a new token, with a warning: such a token
    authenticated nobody.  Only a process holding the peer (`Peer.open` locks its folder)
    calls this, so no two make a token at once.
    """
    path = folder / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = None
    except UnicodeDecodeError:
        token = ""  # not text: no client could send it
    except OSError as exc:
        raise StoreError(
            f"cannot read the HTTP API's token {path}: {exc.strerror or exc}; fix it, or remove "
            "it and 'hearth run' makes a new one"
        ) from None
    if token is not None and len(token) >= MIN_TOKEN and token.isprintable():
        return token
    if token is not None:
        log.warning("%s held no usable token (a crash while it was written?): made a new one, "
                    "which local clients read from there", path)  # fmt: skip
    token = secrets.token_urlsafe(32)
    _write_whole(path, token + "\n")
    return token


def _write_whole(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) whole or not at all, and durably: beside it, then renamed."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)  # the rename, durable too


def check_loopback(host: str) -> None:
    """The API never listens beyond this machine: refuse any other address."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValidationError(
            f"the HTTP API listens on this machine only (127.0.0.1 or ::1), not {host!r}",
            field="api",
        )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or on any free port if that one is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for wanted in (port, 0) if port else (0,):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: an answer written in two parts (head, body) must not
        # wait for the client's delayed ACK (Nagle), which costs 40 ms per request on loopback
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, wanted))
        except OSError as exc:
            sock.close()
            log.warning("the HTTP API cannot listen on %s:%d (%s); taking any free port", host,
                        wanted, exc)  # fmt: skip
            continue
        sock.listen(128)
        sock.setblocking(False)
        return sock
    raise ValidationError(f"the HTTP API cannot listen on {host}", field="api")


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1, with a deadline for each request to arrive whole.

    uvicorn gives a request's head no deadline (its keep-alive timeout starts after an answer,
    and any byte stops it): a local process that knows no token could open connections, send
    half a head and keep them, until the robot had no descriptor left for its own software
    (found in review).  The deadline is not moved by what trickles in.
    """

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._await_request()

    def handle_events(self) -> None:
        super().handle_events()
        self._await_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        """Start the deadline while a request is awaited or arriving; stop it once whole."""
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._stop_deadline()
        elif self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._too_late)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_late(self) -> None:
        self._deadline = None
        # a body still awaited: the application is told the client went away, and does nothing
        self.transport.close()


#: what uvicorn says when it cancels the requests still running once `SHUTDOWN_GRACE_S` is up
_CANCELLED = "timeout graceful shutdown exceeded"


class _QuietCancel(logging.Filter):
    """uvicorn's account of a stop that cancelled requests, as one warning of ours.

    It logged an error and then, per request, an error with the traceback of the request's
    cancellation ("Exception in ASGI application"): a stop doing what it should, reported
    as a crash.  The cancelled requests acknowledged nothing (a write is answered only once
    durable), so their clients retry; the warning says how many there were."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and _CANCELLED in str(exc):
            return False  # the traceback of one cancelled request: counted in the line below
        if isinstance(record.msg, str) and record.msg.startswith("Cancel %s running task"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (
                "the HTTP API stopped with %s request(s) unanswered %s s after the stop began: "
                "cancelled, nothing of theirs acknowledged"
            )
            count = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.args = (count, SHUTDOWN_GRACE_S)
        return True


class _Server(uvicorn.Server):
    """uvicorn inside ``hearth run``: the robot, not uvicorn, handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_api(peer: Peer, host: str, port: int) -> AsyncIterator[tuple[str, int]]:
    """Serve ``peer``'s API on ``host:port`` (loopback) while inside; yields where it listens."""
    check_loopback(host)
    app = make_app(peer, api_token(peer.path))
    sock = _bind(host, port)
    bound = sock.getsockname()
    # bounded: uvicorn waits for every request in flight, and a client that never ended its
    # request's body held 'hearth run' after SIGTERM forever (found in review)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S, http=_Protocol,
    )  # fmt: skip
    server = _Server(config)
    quiet = _QuietCancel()
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="hearthsync-api")
    try:
        yield str(bound[0]), int(bound[1])
    finally:
        server.should_exit = True
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            uvicorn_log.removeFilter(quiet)
            sock.close()
