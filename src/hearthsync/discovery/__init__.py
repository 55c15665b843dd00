"""Finding the household's other robots on the LAN: mDNS, with static addresses as fallback.

An I/O adapter (DESIGN: components; may import only ``protocol``, ``errors`` and ``ids``).
It tells the peer *where* candidate peers are; *whether* they belong to the household is
decided by the websocket handshake, and *whether they are alive* by its heartbeats.  See
``docs/explanation/discovery.md``.
"""

from hearthsync.discovery.events import EventStream, PeerEvent, PeerFound, PeerLost, PeerView
from hearthsync.discovery.mdns import SERVICE_TYPE, Advertiser, Browser
from hearthsync.discovery.service import Discovery
from hearthsync.discovery.static import STATIC_PREFIX, StaticPeer, StaticPeers, parse_peer

__all__ = [
    "SERVICE_TYPE",
    "STATIC_PREFIX",
    "Advertiser",
    "Browser",
    "Discovery",
    "EventStream",
    "PeerEvent",
    "PeerFound",
    "PeerLost",
    "PeerView",
    "StaticPeer",
    "StaticPeers",
    "parse_peer",
]
