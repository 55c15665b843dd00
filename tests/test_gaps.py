"""Updates merged across a gap in their author's clock (found by the chaos harness).

Yrs 0.28 shows such an update's content at once, yet its state vector does not count it, a
diff leaves it out, and what two replicas show then depends on the order updates came in.  A
replica holds that content aside instead (`Replica.beyond`): kept across a restart, passed on
in diffs, shown once the gap fills.  The entries it overwrites show until it does; its other
deletions apply at once, as Yjs applies them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Map, merge_updates

from hearthsync.crdt.replica import Replica
from hearthsync.peer import Peer

SPATIAL = "home/spatial"


@pytest.fixture
async def robots(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    async with (
        Peer.open(tmp_path / "author", device="author") as author,
        Peer.open(tmp_path / "relay", device="relay") as relay,
        Peer.open(tmp_path / "reader", device="reader") as reader,
    ):
        yield author, relay, reader


async def moves(author: Peer) -> list[bytes]:
    """The mug moves twice; in between, the keys move: the update a flaky link loses."""
    deltas: list[bytes] = []
    author.on_durable(lambda batch: deltas.extend(d for doc, d, _ in batch if doc == SPATIAL))
    await author.place("mug", "one", region="shelf")
    await author.place("keys", "gap", region="hook")
    await author.place("mug", "two", region="sink")
    return deltas


def replica(peer: Peer) -> Replica:
    found = peer._docs.get(SPATIAL)  # type: ignore[arg-type]
    assert found is not None
    return found


async def test_content_beyond_a_gap_is_held_aside_kept_and_passed_on(
    robots: tuple[Peer, Peer, Peer], tmp_path: Path
) -> None:
    author, relay, reader = robots
    first, keys, second = await moves(author)
    for peer in (relay, reader):
        await peer.apply_update(SPATIAL, first)
        assert peer.placement("mug").label == "one"  # type: ignore[union-attr]
    await relay.apply_update(SPATIAL, second)  # beyond the gap: held aside, not shown,
    assert len(replica(relay).beyond) == 1
    # and "one", which it overwrites, shows until "two" does: were it deleted now, a gap
    # that never fills (its author revoked) would lose the mug's place on every robot
    assert relay.placement("mug").label == "one"  # type: ignore[union-attr]
    assert relay.state_vector(SPATIAL) == reader.state_vector(SPATIAL)
    # they show the same, yet an inventory tells them apart: the reader needs the move
    # before the gap fills, wherever it fills
    assert relay.docs.digest(SPATIAL) != reader.docs.digest(SPATIAL)

    # what is held aside survives a restart: the relay kept the update as it came
    await relay.close()
    async with Peer.open(tmp_path / "relay") as again:
        assert len(replica(again).beyond) == 1
        assert again.placement("mug").label == "one"  # type: ignore[union-attr]
        # the reader asks (SYNC_STEP1 with its state vector): the answer carries it all
        await reader.apply_update(SPATIAL, again.diff(SPATIAL, reader.state_vector(SPATIAL)))
        assert reader.placement("mug").label == "one"  # type: ignore[union-attr]
        assert len(replica(reader).beyond) == 1
        assert reader.docs.digest(SPATIAL) == again.docs.digest(SPATIAL)
        # the same answer again changes nothing and is not passed on
        assert reader.receive_update(SPATIAL, again.diff(SPATIAL, b"\x00")) is None

        # the missing update arrives: the gap fills, and what was held aside shows
        for peer in (again, reader):
            await peer.apply_update(SPATIAL, keys)
            assert replica(peer).beyond == []
            assert peer.state_vector(SPATIAL) == author.state_vector(SPATIAL)
            assert peer.docs.digest(SPATIAL) == author.docs.digest(SPATIAL)
            assert peer.placement("keys").label == "gap"  # type: ignore[union-attr]
            assert peer.placement("mug").label == "two"  # type: ignore[union-attr]


async def test_a_register_survives_an_update_that_only_deletes_its_value(
    robots: tuple[Peer, Peer, Peer],
) -> None:
    """Beyond a gap, an update deletes the value it replaces while the replacement is not
    readable yet: the slot index must follow the map, and writes to the register go on."""
    author, relay, reader = robots
    deltas: list[bytes] = []
    author.on_durable(lambda batch: deltas.extend(d for doc, d, _ in batch if doc == SPATIAL))
    for label in ("one", "gap", "two", "three"):
        obj = "keys" if label == "gap" else "mug"
        await author.place(obj, label, region="shelf")
    first, _lost, second, third = deltas
    for delta in (first, second, third):
        await relay.apply_update(SPATIAL, delta)
    await reader.apply_update(SPATIAL, first)
    assert reader.placement("mug").label == "one"  # type: ignore[union-attr]
    await reader.apply_update(SPATIAL, second)
    await reader.apply_update(SPATIAL, third)
    reader.placement("mug")  # reads, whatever it shows
    await reader.place("mug", "four", region="hall")
    assert reader.placement("mug").label == "four"  # type: ignore[union-attr]


async def test_content_beyond_a_gap_is_not_readable_right_after_a_catch_up(
    robots: tuple[Peer, Peer, Peer],
) -> None:
    """Found in review: a catch-up merged into an empty document was sorted only after its
    commit, so a read (or an observer) in between saw the mug's second move beyond the gap."""
    author, _, reader = robots
    first, _keys, second = await moves(author)
    done = reader.receive_update(SPATIAL, merge_updates(first, second))
    # before the commit: 'two' waits beyond the gap, and 'one' shows until it does
    assert reader.placement("mug").label == "one"  # type: ignore[union-attr]
    assert done is not None
    await done
    assert reader.placement("mug").label == "one"  # type: ignore[union-attr]
    reader.receive_update(SPATIAL, _keys)
    await reader.commit()
    mug = reader.placement("mug")
    assert mug is not None
    assert mug.label == "two"


async def test_a_compaction_right_after_a_catch_up_keeps_what_it_shows(tmp_path: Path) -> None:
    """Found in review: a compaction between a catch-up's acknowledgement and the flusher's
    sorting of it saved what Yrs showed beyond the gap, in which the entry it overwrote had
    lost its value, and replaced the update log that still held it."""
    writes = [  # robot 22's edit overwrites robot 11's second, beyond robot 22's gap
        b"\x01\x01\x0b\x00(\x01\nplacements\x04keys\x01w\x06keys-1\x00",
        b"\x01\x01\x0b\x01\xa8\x0b\x00\x01w\x06keys-2\x01\x0b\x01\x00\x01",
        b"\x01\x01\x16\x02\xa8\x0b\x00\x01w\x06keys-4\x01\x0b\x01\x00\x01",
    ]

    def raw(peer: Peer) -> object:
        return replica(peer).doc.get("placements", type=Map).to_py()

    async with Peer.open(tmp_path / "r", device="r") as robot:
        done = robot.receive_update(SPATIAL, merge_updates(*writes))
        assert done is not None
        await done
        await robot.compact()
        before = raw(robot)
    async with Peer.open(tmp_path / "r") as robot:
        assert raw(robot) == before == {"keys": "keys-2"}


async def test_a_catch_up_sends_what_is_held_aside_apart_from_the_document(
    robots: tuple[Peer, Peer, Peer],
) -> None:
    """The relay holds the mug's second move aside, and has since removed the mug's first
    place itself.  Its answer to the reader's catch-up sends the document and the held move
    apart: merged into one update, the removal would look like the held move's overwrite and
    wait with it on the reader, which would show the mug where the relay does not, for good."""
    author, relay, reader = robots
    first, _keys, second = await moves(author)
    for peer in (relay, reader):
        await peer.apply_update(SPATIAL, first)
    await relay.apply_update(SPATIAL, second)
    placements = replica(relay).doc.get("placements", type=Map)
    (slot,) = [key for key in placements.keys() if key.startswith("mug")]  # noqa: SIM118
    removal = relay.receive_update(SPATIAL, _removal(replica(relay), slot))
    assert removal is not None
    await removal
    assert relay.placement("mug") is None

    answer = relay.docs.diff(SPATIAL, reader.state_vector(SPATIAL))  # type: ignore[arg-type]
    assert len(answer) == 2  # the document, then the move held aside
    for update in answer:
        await reader.apply_update(SPATIAL, update)
    assert reader.placement("mug") is None
    assert len(replica(reader).beyond) == 1
    assert reader.docs.digest(SPATIAL) == relay.docs.digest(SPATIAL)  # type: ignore[arg-type]


def _removal(held: Replica, slot: str) -> bytes:
    """An update of another robot (client 99) removing ``slot`` from ``held``'s placements."""
    other = Replica(held.info, client_id=99, lineage=held.lineage)
    other.load([held.doc.get_update()])
    _, delta = other.transact(lambda: other.doc.get("placements", type=Map).pop(slot))
    assert delta is not None
    return delta
