"""Static peers: ``--peer HOST:PORT`` for networks where multicast is blocked.

Many access points, guest networks and container bridges drop multicast, so mDNS finds
nothing there.  The fallback is the address list an operator types.  Such a peer's device id is
unknown until the websocket handshake proves it (DESIGN: sync protocol step 2), so the view
keys it as ``static:HOST:PORT`` (IPv6 hosts in brackets: ``static:[fe80::1]:8765``).  The
consumer dials it, learns the device id from ``AUTH``, and from then on knows which device
that address belongs to; if mDNS also finds the same device, the consumer sees two entries
for one robot and dials it once (the protocol already refuses a second connection between the
same two devices).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from hearthsync.discovery.events import PeerView
from hearthsync.errors import ValidationError

__all__ = ["STATIC_PREFIX", "StaticPeer", "StaticPeers", "parse_peer", "parse_peers"]

#: Prefix of the view key of a static peer, whose device id is not known yet.
STATIC_PREFIX = "static:"

#: One RFC 1123 host name label: letters, digits, inner hyphens, at most 63 characters.
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class StaticPeer:
    """A peer address given on the command line: a host name or IP address and a port."""

    host: str
    port: int

    @property
    def key(self) -> str:
        """The placeholder view key, ``static:HOST:PORT``, used until the handshake."""
        return STATIC_PREFIX + str(self)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_peer(text: str) -> StaticPeer:
    """Parse ``host:port``, ``1.2.3.4:port`` or ``[v6 address]:port``.

    Raises :class:`~hearthsync.errors.ValidationError` whose message names the bad part and
    whose ``field`` is ``peer``, ``peer.host`` or ``peer.port``, so a CLI can point at it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("peer address is empty; expected HOST:PORT", field="peer")
    text = text.strip()
    if len(text) > _MAX_TEXT:
        raise ValidationError(f"peer address is too long: {text!r:.60}...", field="peer")
    host, port = _split(text)
    return StaticPeer(host, _parse_port(port, text))


def _split(text: str) -> tuple[str, str]:
    """Split host from port, checking the host; IPv6 needs brackets because it holds colons."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValidationError(f"missing ']' after the IPv6 address in {text!r}", field="peer")
        rest = text[close + 1 :]
        if not rest.startswith(":"):
            raise ValidationError(f"missing ':PORT' after ']' in {text!r}", field="peer.port")
        return _check_ipv6(text[1:close], text), rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValidationError(f"missing ':PORT' in {text!r}; expected HOST:PORT", field="peer.port")
    if ":" in host:
        raise ValidationError(
            f"IPv6 address must be in brackets, e.g. '[{host}]:{port}', got {text!r}",
            field="peer.host",
        )
    return _check_host(host, text), port


def _check_ipv6(host: str, text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        raise ValidationError(
            f"host {host!r} in {text!r} is not an IPv6 address", field="peer.host"
        ) from None


def _check_host(host: str, text: str) -> str:
    """Accept a dotted IPv4 address or an RFC 1123 host name; reject '256.1.1.1' and '-a'."""
    if not host:
        raise ValidationError(f"missing host before ':' in {text!r}", field="peer.host")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValidationError(
                f"host {host!r} in {text!r} is not an IPv4 address", field="peer.host"
            ) from None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValidationError(f"host {host!r} in {text!r} is not a host name", field="peer.host")
    return host


def _parse_port(port: str, text: str) -> int:
    if not port.isascii() or not port.isdigit():
        raise ValidationError(f"port {port!r} in {text!r} is not a number", field="peer.port")
    value = int(port)
    if not 1 <= value <= 65535:
        raise ValidationError(f"port {value} in {text!r} is not in 1-65535", field="peer.port")
    return value


def parse_peers(items: Iterable[str | StaticPeer]) -> list[StaticPeer]:
    """Parse every item (already parsed ones pass through), dropping duplicates, keeping order."""
    parsed = [item if isinstance(item, StaticPeer) else parse_peer(item) for item in items]
    return list(dict.fromkeys(parsed))


class StaticPeers:
    """A discovery source that reports a fixed list of addresses as found.

    ``async with StaticPeers(["10.0.0.5:8765"], view) as s:`` reports each address as
    :class:`~hearthsync.discovery.events.PeerFound` under its ``static:`` key on entry and as
    lost on exit.  Nothing is probed: whether the address answers is the transport's business,
    which retries dialling it like any other peer.
    """

    def __init__(self, peers: Iterable[str | StaticPeer], view: PeerView | None = None) -> None:
        self.addresses = parse_peers(peers)
        self.view = view if view is not None else PeerView()

    async def __aenter__(self) -> Self:
        for peer in self.addresses:
            self.view.found(peer.key, peer.host, peer.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for peer in self.addresses:
            self.view.lost(peer.key)
