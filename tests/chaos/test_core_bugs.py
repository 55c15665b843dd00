"""Reproducers of core bugs the chaos harness found (see known_core_bugs.py), through the public
`Peer` API, each ``xfail(strict=True)`` until the core fixes it.

Both come from one root: pycrdt merges an update whose author's earlier update is missing (a
clock gap), shows its content and applies its deletions, yet its state vector does not count
it, and the delta it hands to the store and to the other robots holds only the deletions.
In the chaos runs this happens whenever drops or reordering lose one update of an author while
a later one arrives (directly, or relayed by a robot that had it).

Replay in the harness: ``hearth chaos --seed 16 --schedules 1 --peers 5 --edits 50`` (found
with an earlier plan format; any long run of ``hearth chaos --peers 5`` meets both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearthsync.chaos import TinyEmbedder
from hearthsync.peer import Peer

SPATIAL = "home/spatial"


@pytest.fixture
async def robots(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    """An author, a robot that relays what it gets, and a reader: real stores."""
    embedder = TinyEmbedder()
    async with (
        Peer.open(tmp_path / "author", device="author", embedder=embedder) as author,
        Peer.open(tmp_path / "relay", device="relay", embedder=embedder) as relay,
        Peer.open(tmp_path / "reader", device="reader", embedder=embedder) as reader,
    ):
        yield author, relay, reader


def durable_deltas(peer: Peer) -> list[bytes]:
    """Every delta of the spatial document ``peer`` commits from now on (what it forwards)."""
    deltas: list[bytes] = []
    peer.on_durable(lambda batch: deltas.extend(d for doc, d, _ in batch if doc == SPATIAL))
    return deltas


async def author_moves_the_mug(author: Peer) -> list[bytes]:
    """The mug moves three times; between the first two, the keys move (the update a flaky
    link will lose)."""
    deltas = durable_deltas(author)
    await author.place("mug", "one", region="shelf")
    await author.place("keys", "gap", region="hook")
    await author.place("mug", "two", region="sink")
    await author.place("mug", "three", region="table")
    assert len(deltas) == 4
    return deltas


@pytest.mark.xfail(
    strict=True,
    raises=KeyError,
    reason="core bug 'slot-index-after-delete-only-update' (crdt/handles.py SlotMap): a "
    "delete-only delta leaves the slot index naming a key the map no longer holds",
)
async def test_a_register_survives_an_update_that_only_deletes_its_value(
    robots: tuple[Peer, Peer, Peer],
) -> None:
    author, relay, reader = robots
    first, _lost, second, third = await author_moves_the_mug(author)
    relayed = durable_deltas(relay)
    for delta in (first, second, third):  # the relay never gets the keys' move
        await relay.apply_update(SPATIAL, delta)
    await reader.apply_update(SPATIAL, first)
    placed = reader.placement("mug")
    assert placed is not None
    assert placed.label == "one"
    await reader.apply_update(SPATIAL, second)  # straight from the author
    await reader.apply_update(SPATIAL, relayed[-1])  # the relay's delta of the third move
    reader.placement("mug")  # KeyError: the slot is in the index, not in the map
    await reader.place("mug", "four", region="hall")  # KeyError inside the group commit
    again = reader.placement("mug")
    assert again is not None
    assert again.label == "four"


@pytest.mark.xfail(
    strict=True,
    reason="core bug 'content-beyond-a-clock-gap': merged content the state vector does not "
    "count, so the inventory (which compares state vectors) never repairs the difference",
)
async def test_equal_state_vectors_mean_equal_content(robots: tuple[Peer, Peer, Peer]) -> None:
    author, relay, reader = robots
    first, _lost, second, _ = await author_moves_the_mug(author)
    await relay.apply_update(SPATIAL, first)
    await relay.apply_update(SPATIAL, second)  # beyond the lost update: shown, not counted
    await reader.apply_update(SPATIAL, first)
    same_state = relay.state_vector(SPATIAL) == reader.state_vector(SPATIAL)  # what inventories see
    shown = [p.label if p else None for p in (relay.placement("mug"), reader.placement("mug"))]
    # fixed either way: the state vectors tell them apart, or the content is the same
    assert not same_state or shown[0] == shown[1], f"equal state vectors, content {shown}"
