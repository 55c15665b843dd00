"""``--peer HOST:PORT``: parsing with errors that name the bad part, and the static source."""

from __future__ import annotations

import pytest

from hearthsync.discovery import (
    Discovery,
    PeerFound,
    PeerLost,
    StaticPeer,
    StaticPeers,
    parse_peer,
)
from hearthsync.errors import ValidationError
from tests.discovery.support import TAG, Recorder


@pytest.mark.parametrize(
    ("text", "host", "port", "key"),
    [
        ("10.0.0.5:8765", "10.0.0.5", 8765, "static:10.0.0.5:8765"),
        ("kitchen-robot.local:80", "kitchen-robot.local", 80, "static:kitchen-robot.local:80"),
        ("localhost:65535", "localhost", 65535, "static:localhost:65535"),
        ("  hub:1 ", "hub", 1, "static:hub:1"),
        ("[::1]:8765", "::1", 8765, "static:[::1]:8765"),
        ("[FE80::0001]:9", "fe80::1", 9, "static:[fe80::1]:9"),  # normalised, one spelling
        ("[fe80::1%eth0]:9", "fe80::1%eth0", 9, "static:[fe80::1%eth0]:9"),
    ],
)
def test_valid_peer_addresses(text: str, host: str, port: int, key: str) -> None:
    peer = parse_peer(text)
    assert peer == StaticPeer(host, port)
    assert peer.key == key
    assert parse_peer(str(peer)) == peer  # what we print parses back


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("", "peer", "empty"),
        ("   ", "peer", "empty"),
        ("hub", "peer.port", "missing ':PORT'"),
        ("hub:", "peer.port", "port '' in 'hub:' is not a number"),
        ("hub:http", "peer.port", "port 'http'"),
        ("hub:-1", "peer.port", "port '-1'"),
        ("hub:٨٠", "peer.port", "is not a number"),  # Arabic-Indic digits pass str.isdigit
        ("hub:0", "peer.port", "port 0 in 'hub:0' is not in 1-65535"),
        ("hub:65536", "peer.port", "port 65536"),
        (":8765", "peer.host", "missing host"),
        ("::1:8765", "peer.host", "must be in brackets"),
        ("[::1]8765", "peer.port", "missing ':PORT' after ']'"),
        ("[::1:8765", "peer", "missing ']'"),
        ("[kitchen]:8765", "peer.host", "host 'kitchen' in '[kitchen]:8765' is not an IPv6"),
        ("256.1.1.1:80", "peer.host", "host '256.1.1.1' in '256.1.1.1:80' is not an IPv4"),
        ("kitchen_robot:80", "peer.host", "host 'kitchen_robot'"),
        ("-robot:80", "peer.host", "is not a host name"),
        ("a..b:80", "peer.host", "is not a host name"),
        ("x" * 301 + ":80", "peer", "too long"),
    ],
)
def test_invalid_peer_addresses_name_the_bad_part(text: str, field: str, says: str) -> None:
    with pytest.raises(ValidationError, match=r".") as caught:
        parse_peer(text)
    assert caught.value.field == field
    assert says in str(caught.value)


async def test_static_peers_are_reported_under_placeholder_keys() -> None:
    events = Recorder()
    source = StaticPeers(["10.0.0.5:8765", "[::1]:9000", "10.0.0.5:8765"])
    source.view.subscribe(events)
    async with source:
        assert source.view.peers() == {
            "static:10.0.0.5:8765": ("10.0.0.5", 8765),
            "static:[::1]:9000": ("::1", 9000),
        }
    assert events.events() == [
        PeerFound("static:10.0.0.5:8765", "10.0.0.5", 8765),
        PeerFound("static:[::1]:9000", "::1", 9000),
        PeerLost("static:10.0.0.5:8765"),
        PeerLost("static:[::1]:9000"),
    ]


async def test_discovery_without_mdns_reports_only_static_peers() -> None:
    async with Discovery(
        "hub", 8765, TAG, static=["10.0.0.5:8765", StaticPeer("10.0.0.6", 8765)], enable_mdns=False
    ) as discovery:
        stream = discovery.events()  # subscribed late: replay still reports both
        assert [await anext(stream), await anext(stream)] == [
            PeerFound("static:10.0.0.5:8765", "10.0.0.5", 8765),
            PeerFound("static:10.0.0.6:8765", "10.0.0.6", 8765),
        ]
        assert discovery.ignored() == {}
        discovery.forget("static:10.0.0.5:8765")  # nothing would ever report it again
        assert "static:10.0.0.5:8765" in discovery.peers()
    assert [event async for event in stream] == [
        PeerLost("static:10.0.0.5:8765"),
        PeerLost("static:10.0.0.6:8765"),
    ]


def test_a_bad_static_peer_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValidationError, match="port 'x'") as caught:
        Discovery("hub", 8765, TAG, static=["10.0.0.5:8765", "10.0.0.6:x"])
    assert caught.value.field == "peer.port"
