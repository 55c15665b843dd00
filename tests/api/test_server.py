"""The API as ``hearth run`` serves it (uvicorn on a loopback socket), against real clients
that misbehave: one that never ends its request must not hold the robot."""

from __future__ import annotations

import asyncio

import pytest

from hearthsync import Peer
from hearthsync.api import server
from hearthsync.api.server import api_token, serve_api


def unfinished(token: str) -> bytes:
    """The head of a request whose body never comes; ``Expect: 100-continue`` makes the
    server say when the application starts reading the body."""
    return (
        "POST /preferences HTTP/1.1\r\nHost: robot\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    ).encode()


async def test_the_api_stops_while_a_client_holds_a_request_it_never_ends(
    home: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: SIGTERM to ``hearth run`` while a client held an unfinished request
    body: uvicorn waited for that request forever, and the robot never stopped (no flush, no
    STOPPED, run.json left) until it was killed."""
    monkeypatch.setattr(server, "SHUTDOWN_GRACE_S", 1)
    served = serve_api(home, "127.0.0.1", 0)
    host, port = await served.__aenter__()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(unfinished(api_token(home.path)))
        async with asyncio.timeout(10):  # the application is reading the body
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        async with asyncio.timeout(10) as stopping:
            await served.__aexit__(None, None, None)
        assert not stopping.expired(), "the API did not stop within 10 s"
    finally:
        writer.close()
