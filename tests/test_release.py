"""A closed peer is freed: Yrs holds document observers on the Rust side, out of sight of
Python's garbage collector, so a peer whose subscriptions were not dropped lived for good (the
chaos harness grew by 3 MB a schedule)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from hearthsync.peer import Peer


async def test_a_closed_peer_is_freed(tmp_path: Path) -> None:
    async with Peer.open(tmp_path / "robot", device="robot") as peer:
        await peer.add_user("alice", name="Alice")
        await peer.set_preference("alice", "tea/mug", "green")
        await peer.place("mug", "green mug", region="shelf-2")
        assert peer.users() == ["alice"]  # views and observers are made on first read
        assert peer.placement("mug") is not None
        freed = weakref.ref(peer)
    del peer
    gc.collect()
    assert freed() is None
