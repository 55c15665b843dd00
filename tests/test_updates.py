"""Reading Yrs v1 updates by clocks (`hearthsync.crdt.updates`), and what replicas built on
it promise: whatever order updates come in, and whichever are missing for good, replicas that
received the same updates show the same content."""

from __future__ import annotations

import random
from functools import partial
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, merge_updates

from hearthsync.crdt import statevector, updates
from hearthsync.crdt.kinds import parse
from hearthsync.crdt.replica import EMPTY_UPDATE, Replica
from hearthsync.errors import CorruptDocumentError, RemoteError
from hearthsync.transport.link import merged_for_sending

SPATIAL = parse("home/spatial")


def deltas_of(doc: Doc[Any]) -> list[bytes]:
    found: list[bytes] = []
    doc.observe(lambda event: found.append(event.update))
    return found


def every_kind(doc: Doc[Any]) -> None:
    """Content of every kind a replica may meet: values of every type, nested types, text
    beyond the Basic Multilingual Plane (Yjs counts UTF-16 code units), XML with names."""
    m = doc.get("m", type=Map)
    m["any"] = {"list": [1, -70, 2.5, None, True, False, "s", b"\x00\xff", 2**40]}
    m["nested"] = Map({"k": "v"})
    array = doc.get("a", type=Array)
    array.extend(["x", 1, 3.25])
    del array[1]
    text = doc.get("t", type=Text)
    text += "héllo 😀 world"
    del text[0:2]
    fragment = doc.get("x", type=XmlFragment)
    fragment.children.append(XmlElement("p", {"class": "c"}))
    del m["any"]


def test_runs_count_every_clock_of_every_kind() -> None:
    doc: Doc[Any] = Doc(client_id=7)
    every_kind(doc)
    found, delete_set = updates.runs(doc.get_update())
    assert [(r.client, r.start) for r in found] == [(7, 0)]
    assert found[0].end == statevector.decode(doc.get_state())[7]
    assert delete_set != b"\x00"  # the deletions above
    again: Doc[Any] = Doc()
    again.apply_update(updates.truncate(doc.get_update(), {7: 10**6}))
    assert again.get_state() == doc.get_state()
    for name, kind in (("m", Map), ("a", Array), ("t", Text), ("x", XmlFragment)):
        assert str(again.get(name, type=kind)) == str(doc.get(name, type=kind))
    assert statevector.canonical_delete_set(again.get_update(again.get_state())) == (
        statevector.canonical_delete_set(doc.get_update(doc.get_state()))
    )


def test_two_runs_of_one_client_are_encoded_as_one_section_with_a_skip() -> None:
    """Yrs 0.28 panics on an update naming a client twice.  A relayed, merged update can hold
    two runs of one client (a gap between them); a replica that holds the first, merges both
    and holds aside another client's run beyond a gap re-encodes the two it merges."""
    author: Doc[Any] = Doc(client_id=5)
    deltas = deltas_of(author)
    for i in range(4):
        author.get("m", type=Map)[f"k{i}"] = i
    other: Doc[Any] = Doc(client_id=7)
    other.apply_update(author.get_update())
    later = deltas_of(other)
    for i in range(3):
        other.get("m", type=Map)[f"o{i}"] = i
    merged = merge_updates(deltas[0], deltas[2], later[2])  # 5: 0 and 2, not 1; 7: 2, not 0-1
    found, delete_set = updates.runs(merged)
    assert [(r.client, r.start) for r in found] == [(5, 0), (5, 2), (7, 2)] or sorted(
        (r.client, r.start) for r in found
    ) == [(5, 0), (5, 2), (7, 2)]
    assert updates.encode(merged, [r for r in found if r.client == 5], delete_set) == (
        merge_updates(deltas[0], deltas[2])
    )
    replica = Replica(SPATIAL, client_id=9, lineage=SPATIAL.genesis)
    replica.apply(deltas[0])
    replica.apply(deltas[1])
    replica.apply(merged)  # Yrs panicked here, on the client named twice
    assert statevector.decode(replica.state_vector()) == {5: 3}
    assert replica.beyond  # client 7's run waits for its gap
    replica.apply(later[0])
    replica.apply(later[1])
    assert statevector.decode(replica.state_vector()) == {5: 3, 7: 3}
    assert not replica.beyond


def test_split_cuts_between_structs_and_the_parts_in_any_order_make_the_whole() -> None:
    doc: Doc[Any] = Doc(client_id=3)
    every_kind(doc)  # every content kind, and deletions
    m = doc.get("m", type=Map)
    for i in range(400):
        m[f"k{i % 150}"] = f"{i:04d}" * 50
    whole = doc.get_update()
    parts = updates.split(whole, 4_000)
    assert len(parts) > 5
    assert all(len(part) <= 4_000 + 300 for part in parts)  # a struct may go over, not a run
    for order in (parts, parts[::-1], random.Random(1).sample(parts, len(parts))):
        replica = Replica(SPATIAL, client_id=9, lineage=SPATIAL.genesis)
        for part in order:
            replica = receive(replica, part)
        assert replica.state_vector() == doc.get_state()
        assert replica.doc.get("m", type=Map).to_py() == m.to_py()
        assert replica.digest() == Replica.digest(adopted(doc))
    assert updates.split(whole, 10**9) == [whole]


def adopted(doc: Doc[Any]) -> Replica:
    replica = Replica(SPATIAL, client_id=8, lineage=SPATIAL.genesis)
    replica.adopt(doc.get_update())
    return replica


def test_the_deletions_of_an_update_with_structs_are_those_of_its_delete_set() -> None:
    """A replica's digest reads its own delete set; Yrs 0.28 never puts structs there, but
    if one did, the digest must not fail as if a peer had sent bad bytes."""
    doc: Doc[Any] = Doc(client_id=7)
    every_kind(doc)
    alone = doc.get_update(doc.get_state())  # no structs: only the delete set
    assert alone[:1] == b"\x00"
    with pytest.raises(RemoteError):
        statevector.canonical_delete_set(doc.get_update())
    assert updates.deletions(doc.get_update()) == statevector.canonical_delete_set(alone)
    assert updates.deletions(alone) == statevector.canonical_delete_set(alone)


def test_a_gap_ends_a_run_and_truncate_cuts_what_lies_beyond() -> None:
    author: Doc[Any] = Doc(client_id=5)
    deltas = deltas_of(author)
    m = author.get("m", type=Map)
    for i in range(6):
        m[f"k{i}"] = i
    merged = merge_updates(deltas[0], deltas[2], deltas[3], deltas[5])
    found, _ = updates.runs(merged)
    assert [(r.start, r.end) for r in found] == [(0, 1), (2, 4), (5, 6)]
    reader: Doc[Any] = Doc()
    reader.apply_update(merged)
    state = statevector.decode(reader.get_state())
    assert state == {5: 1}
    cut: Doc[Any] = Doc()
    cut.apply_update(updates.truncate(reader.get_update(), state))
    assert cut.get("m", type=Map).to_py() == {"k0": 0}


@pytest.mark.parametrize(
    "data",
    [b"\x01\x01\x05", b"\x01\x01\x05\x00\x1f", b"\x01\x01\x05\x00\x28\x01\x01\x6d\x02"],
    ids=["cut-short", "unknown-kind", "cut-in-a-string"],
)
def test_bytes_that_are_not_an_update_are_refused_by_name(data: bytes) -> None:
    with pytest.raises(updates.UpdateFormatError):
        updates.runs(data)


def read_struct_by_struct(data: bytes) -> tuple[list[updates.Run], bytes]:
    """`updates.runs` as it read before its inline path: every struct by `updates._struct`."""
    try:
        found: list[updates.Run] = []
        clients, pos = updates._uint(data, 0)
        for _ in range(clients):
            count, pos = updates._uint(data, pos)
            client, pos = updates._uint(data, pos)
            clock, pos = updates._uint(data, pos)
            start, first, n = clock, pos, 0
            for _ in range(count):
                at = pos
                length, is_skip, pos = updates._struct(data, pos)
                if is_skip:
                    if clock > start:
                        found.append(updates.Run(client, start, clock, first, at, n))
                    start, first, n = clock + length, pos, -1
                clock += length
                n += 1
            if clock > start:
                found.append(updates.Run(client, start, clock, first, pos, n))
        if pos > len(data):
            raise updates.UpdateFormatError("update ends in the middle of a value")
        updates._check_delete_set(data[pos:])
        return found, data[pos:]
    except IndexError:
        raise updates.UpdateFormatError("update ends in the middle of a value") from None
    except UnicodeDecodeError:
        raise updates.UpdateFormatError("a string is not UTF-8") from None


def outcome(read: Any, data: bytes) -> object:
    try:
        return read(data)
    except updates.UpdateFormatError as exc:
        return ("refused", str(exc))


def updates_of_every_shape(seed: int) -> list[bytes]:
    """Deltas, whole states and diffs of documents holding strings of every length class (a
    length in one, two and three bytes), long keys and root names, values that are not
    strings, nested types and text: the shapes `updates.runs` reads inline and those it
    leaves to `updates._struct`."""
    rng = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(client_id=c) for c in (3, 200, 70_000)]
    found: list[bytes] = []
    for doc in docs:
        doc.observe(lambda event: found.append(event.update))
    for _ in range(rng.randrange(5, 40)):
        doc = rng.choice(docs)
        root = rng.choice(["m", "r" * 130])
        ymap, array = doc.get(root, type=Map), doc.get("a", type=Array)
        with doc.transaction():
            for _ in range(rng.randrange(1, 4)):
                value = rng.choice(
                    ["", "x" * rng.choice([1, 127, 128, 200, 16_383, 16_384]), 7, None, [1, "s"]]
                )
                choice = rng.random()
                if choice < 0.5:
                    ymap[rng.choice(["k", "q" * 128, "é"])] = value
                elif choice < 0.6 and len(ymap):
                    ymap.pop(rng.choice(list(ymap.keys())))
                elif choice < 0.8:
                    array.insert(rng.randrange(len(array) + 1), value)
                elif choice < 0.9 and len(array):
                    del array[rng.randrange(len(array))]
                else:
                    ymap["nested"] = Map({"k": "v"})
        if rng.random() < 0.4:
            a, b = rng.sample(docs, 2)
            b.apply_update(a.get_update(b.get_state()))
    for doc in docs:
        found.append(doc.get_update())
        found += [doc.get_update(other.get_state()) for other in docs]
    return found


@pytest.mark.parametrize("seed", range(40))
def test_the_inline_read_reads_every_update_as_struct_by_struct(seed: int) -> None:
    """`updates.runs` reads the commonest struct inline: whatever the bytes, written by Yrs
    or damaged anyhow, it finds what `updates._struct` alone finds, or refuses them alike."""
    rng = random.Random(seed)
    for update in updates_of_every_shape(seed):
        assert outcome(updates.runs, update) == outcome(read_struct_by_struct, update)
        for _ in range(20):
            damaged = bytearray(update)
            at = rng.randrange(len(damaged))
            if rng.random() < 0.3:
                damaged = damaged[:at]
            else:
                damaged[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 119, rng.randrange(256)])
            data = bytes(damaged)
            assert outcome(updates.runs, data) == outcome(read_struct_by_struct, data)


# ------------------------------------------------------------------ replicas, any order


def receive(replica: Replica, update: bytes) -> Replica:
    """What `DocumentSet.apply_remote` does: apply, and replace a tainted replica."""
    replica.apply(update)
    replica.settle()
    return replica.rebuilt() if replica.tainted else replica


def shown(replica: Replica) -> Any:
    return replica.doc.get("placements", type=Map).to_py()


def history(seed: int, writes: int) -> tuple[list[bytes], Any]:
    """Two robots moving the same few objects, syncing now and then: one delta per move."""
    rng = random.Random(seed)
    robots = [Replica(SPATIAL, client_id=c, lineage=SPATIAL.genesis) for c in (11, 22)]
    deltas: list[bytes] = []
    for i in range(writes):
        robot = rng.choice(robots)
        ymap = robot.doc.get("placements", type=Map)
        key = rng.choice(["mug", "keys", "remote"])
        if rng.random() < 0.15 and key in ymap:
            _, delta = robot.transact(partial(ymap.pop, key))
        else:
            _, delta = robot.transact(partial(ymap.__setitem__, key, f"{key}-{i}"))
        assert delta is not None
        deltas.append(delta)
        if rng.random() < 0.5:  # they sync: later moves have the other robot's as origins
            for a, b in ((robots[0], robots[1]), (robots[1], robots[0])):
                b.doc.apply_update(a.doc.get_update(b.doc.get_state()))
    for a, b in ((robots[0], robots[1]), (robots[1], robots[0])):
        b.doc.apply_update(a.doc.get_update(b.doc.get_state()))
    return deltas, shown(robots[0])


def test_a_merged_update_beyond_a_gap_shows_what_the_same_updates_one_by_one_show() -> None:
    """Found by Hypothesis: robot 22 overwrote the keys (its third edit, the first two not
    here yet) while robot 11 overwrote them too.  Yrs shows robot 22's entry beyond the gap,
    deletes robot 11's and drops its content; the rebuilt replica must show robot 11's."""
    writes = [
        b"\x01\x01\x0b\x00(\x01\nplacements\x04keys\x01w\x06keys-1\x00",
        b"\x01\x01\x0b\x01\xa8\x0b\x00\x01w\x06keys-2\x01\x0b\x01\x00\x01",
        b"\x01\x01\x16\x02\xa8\x0b\x00\x01w\x06keys-4\x01\x0b\x01\x00\x01",
    ]
    merged = Replica(SPATIAL, client_id=101, lineage=SPATIAL.genesis)
    merged = receive(merged, merge_updates(*writes))
    one_by_one = Replica(SPATIAL, client_id=102, lineage=SPATIAL.genesis)
    for update in writes:
        one_by_one = receive(one_by_one, update)
    assert shown(merged) == shown(one_by_one) == {"keys": "keys-2"}
    assert merged.digest() == one_by_one.digest()
    assert len(merged.beyond) == len(one_by_one.beyond) == 1
    # a local write waits for the rebuild: it must not take robot 22's entry as its origin
    tainted = Replica(SPATIAL, client_id=103, lineage=SPATIAL.genesis)
    tainted.apply(merge_updates(*writes))
    with pytest.raises(RuntimeError, match="rebuild"):
        tainted.transact(lambda: tainted.doc.get("placements", type=Map).pop("keys"))
    assert shown(tainted.rebuilt()) == {"keys": "keys-2"}


def overwrites() -> list[bytes]:
    """Robot 5 moves the mug, then the keys, then the mug again: one delta per move."""
    five = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    placements = five.doc.get("placements", type=Map)
    moves = [("mug", 1), ("keys", 2), ("mug", 3)]
    found = [five.transact(partial(placements.__setitem__, *move))[1] for move in moves]
    assert all(found)
    return [d for d in found if d is not None]


@pytest.mark.parametrize("merged", [False, True])
def test_an_overwrite_beyond_a_gap_that_never_fills_leaves_the_value_it_overwrites(
    merged: bool,
) -> None:
    """Found by the chaos harness (seeds 2055, 490824): a robot revoked with a gap behind it
    (its second move refused everywhere) sent its third.  Yrs deleted the mug's first place
    at once and showed its second never: the mug's place was lost on every robot, for good."""
    first, second, third = overwrites()
    robot = Stored()
    for update in [merge_updates(first, third)] if merged else [first, third]:
        robot.receive(update)
    assert shown(robot.replica) == {"mug": 1}
    assert len(robot.replica.beyond) == 1
    robot.compact()
    robot.reopen()  # the wait survives a restart
    assert shown(robot.replica) == {"mug": 1}
    robot.receive(second)  # the gap fills: the third move shows, and the first is deleted
    assert shown(robot.replica) == {"mug": 3, "keys": 2}
    assert robot.replica.beyond == []
    author = Replica(SPATIAL, client_id=6, lineage=SPATIAL.genesis)
    author.load([first, second, third])
    assert robot.replica.digest() == author.digest()


def test_another_robots_removal_sent_on_by_a_link_applies_at_once() -> None:
    """Found in review: robot 7 held robot 5's second move of the mug (beyond a gap that never
    fills) and then removed the mug.  Its link merged the two into one update, where the
    removal looked like the move's own overwrite and waited with it: the robots downstream
    showed the mug, robot 7 did not.  A link sends a delta that deletes on its own."""
    first, _lost, third = overwrites()
    seven = Stored(7)
    for update in (first, third):
        seven.receive(update)
    placements = seven.replica.doc.get("placements", type=Map)
    _, removal = seven.replica.transact(partial(placements.pop, "mug"))
    assert removal is not None
    sent = merged_for_sending([(str(SPATIAL.doc_id), third), (str(SPATIAL.doc_id), removal)])
    assert [delta for _, delta in sent] == [third, removal]
    downstream = Stored(8)
    downstream.receive(first)
    for _, delta in sent:
        downstream.receive(delta)
    assert shown(downstream.replica) == shown(seven.replica) == {}
    assert downstream.replica.digest() == seven.replica.digest()
    # deltas that delete nothing still go together, in order per document
    assert updates.deletes_nothing(first)
    assert not updates.deletes_nothing(removal)
    together = merged_for_sending([("d", first), ("d", _lost), ("d", removal), ("d", first)])
    assert [d for _, d in together] == [bytes(merge_updates(first, _lost)), removal, first]


def test_a_split_update_carries_each_overwrite_with_its_entry() -> None:
    """Found in review: a split put the whole delete set in the last part.  Where that part
    arrived and an earlier part waited beyond a gap, the entry the earlier part overwrites was
    deleted at once, for good if the gap never filled."""
    five = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    placements = five.doc.get("placements", type=Map)
    first = five.transact(partial(placements.__setitem__, "mug", 1))[1]
    five.transact(partial(placements.__setitem__, "keys", 2))  # never leaves robot 5

    def big() -> None:
        placements["mug"] = 3
        for i in range(6):
            placements[f"k{i}"] = "x" * 40

    _, third = five.transact(big)
    assert first is not None
    assert third is not None
    parts = updates.split(third, 60)
    assert len(parts) > 2
    whole, split = Stored(101), Stored(102)
    for robot, arriving in ((whole, [first, third]), (split, [first, *parts])):
        for update in arriving:
            robot.receive(update)
        assert shown(robot.replica) == {"mug": 1}
    assert whole.replica.digest() == split.replica.digest()


def test_a_renewed_replica_keeps_the_deletions_that_wait_with_what_it_holds() -> None:
    """Found in review: renewing a replica's client id (a robot restored from a backup) went
    through a snapshot, which keeps held items without their deletions.  An event log whose
    author removed an event and appended the next in one transaction then showed the removed
    event again once the gap filled."""

    def events(replica: Replica) -> Any:
        return replica.doc.get("events", type=Array)

    five = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    _, first = five.transact(lambda: events(five).append("e0"))
    placements = five.doc.get("placements", type=Map)
    _, gap = five.transact(partial(placements.__setitem__, "keys", 2))

    def remove_and_append() -> None:  # e1 goes after e0, which it removes
        del events(five)[0]
        events(five).append("e1")

    _, third = five.transact(remove_and_append)
    robot = Stored()
    for update in (first, third):
        assert update is not None
        robot.receive(update)
    assert events(robot.replica).to_py() == ["e0"]
    robot.replica = robot.replica.renewed(77)
    assert robot.replica.client_id == 77
    assert gap is not None
    robot.receive(gap)
    assert events(robot.replica).to_py() == events(five).to_py() == ["e1"]


def test_a_removal_that_waited_for_an_origin_applies_once_it_comes() -> None:
    """Found in review: robot 5 appended e1 after robot 7's e0 and removed e0, in one
    transaction.  A robot that got that update before e0 held e1 (its origin missing) with the
    removal; when e0 came, Yrs integrated e1 on its own, and the removal was dropped with the
    piece: e0 showed for good (a forgotten user's move, in the shared history)."""

    def changes(replica: Replica) -> Any:
        return replica.doc.get("changes", type=Array)

    seven = Replica(SPATIAL, client_id=7, lineage=SPATIAL.genesis)
    five = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    _, e0 = seven.transact(lambda: changes(seven).append("e0"))
    assert e0 is not None
    five.apply(e0)

    def append_and_remove() -> None:
        changes(five).append("e1")
        del changes(five)[0]

    _, both = five.transact(append_and_remove)
    assert both is not None
    in_order, late, caught_up = Stored(9), Stored(10), Stored(11)
    in_order.receive(e0)
    in_order.receive(both)
    late.receive(EMPTY_UPDATE)  # not empty: read before it is merged (`_merge_or_hold`)
    late.receive(both)
    late.receive(e0)
    caught_up.receive(both)  # into an empty document: merged whole, sorted after
    caught_up.receive(e0)
    for robot in (in_order, late, caught_up):
        assert changes(robot.replica).to_py() == changes(five).to_py() == ["e1"]
        assert robot.replica.digest() == in_order.replica.digest()
        assert robot.replica.beyond == []


def test_origins_are_the_items_an_update_inserts_after() -> None:
    first, _, third = overwrites()
    found, delete_set = updates.runs(third)
    assert updates.origins(third, found[0]) == [(2, (5, 0))]  # the first move: it overwrites
    assert updates.deleted_ranges(delete_set) == {5: [(0, 1)]}
    assert updates.deleted_ranges(updates.without(delete_set, {(5, 0)})) == {}
    three = updates.delete_set_of({5: [(0, 3)], 7: [(4, 5)]})[1:]
    assert updates.deleted_ranges(updates.without(three, {(5, 1), (9, 9)})) == {
        5: [(0, 1), (2, 3)],
        7: [(4, 5)],
    }
    assert updates.origins(first, updates.runs(first)[0][0]) == []  # into an empty map


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    writes=st.integers(2, 14),
    data=st.data(),
)
def test_replicas_given_the_same_updates_in_any_order_show_the_same(
    seed: int, writes: int, data: st.DataObject
) -> None:
    deltas, final = history(seed, writes)
    lost = data.draw(st.sets(st.integers(0, len(deltas) - 1), max_size=len(deltas) // 2))
    kept = [d for i, d in enumerate(deltas) if i not in lost]
    replicas = []
    for client in (101, 102, 103):
        # some arrive merged, as a robot relays what it got together (gaps and all)
        groups = data.draw(
            st.lists(st.lists(st.sampled_from(kept), min_size=2, max_size=4), max_size=3)
            if kept
            else st.just([])
        )
        order = data.draw(st.permutations([*kept, *(merge_updates(*g) for g in groups)]))
        repeats = data.draw(st.lists(st.sampled_from(kept), max_size=3)) if kept else []
        replica = Replica(SPATIAL, client_id=client, lineage=SPATIAL.genesis)
        for update in [*order, *repeats]:
            replica = receive(replica, update)
        replicas.append(replica)
    first = replicas[0]
    for other in replicas[1:]:
        assert other.state_vector() == first.state_vector() or statevector.decode(
            other.state_vector()
        ) == statevector.decode(first.state_vector())
        assert shown(other) == shown(first)
        assert other.digest() == first.digest()
    # what was lost arrives (from a robot that had it): everything shows as the authors do
    for update in (deltas[i] for i in sorted(lost, reverse=True)):
        first = receive(first, update)
    assert shown(first) == final
    assert first.beyond == []


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), writes=st.integers(2, 14), data=st.data())
def test_replicas_given_the_same_updates_as_links_batch_them_show_the_same(
    seed: int, writes: int, data: st.DataObject
) -> None:
    """Each update reaches each robot once, in any order, within batches a link merges as it
    sends them (`merged_for_sending`), and no copy of it comes alone: found in review, merged
    without care a removal looked like an overwrite held beyond a gap, and waited with it."""
    deltas, final = history(seed, writes)
    lost = data.draw(st.sets(st.integers(0, len(deltas) - 1), max_size=len(deltas) // 2))
    kept = [d for i, d in enumerate(deltas) if i not in lost]
    replicas = []
    for client in (101, 102, 103):
        order = data.draw(st.permutations(kept))
        cuts = data.draw(st.lists(st.integers(0, len(order)), max_size=4))
        bounds = sorted({0, len(order), *cuts})
        replica = Replica(SPATIAL, client_id=client, lineage=SPATIAL.genesis)
        for start, end in pairwise(bounds):
            for _, update in merged_for_sending([("d", u) for u in order[start:end]]):
                replica = receive(replica, update)
        replicas.append(replica)
    first = replicas[0]
    for other in replicas[1:]:
        assert shown(other) == shown(first)
        assert other.digest() == first.digest()
    for update in (deltas[i] for i in sorted(lost)):
        first = receive(first, update)
    assert shown(first) == final
    assert first.beyond == []


class Stored:
    """A replica and what its store keeps: what `apply` returns, or a compaction's snapshot."""

    def __init__(self, client_id: int = 9) -> None:
        self.client_id = client_id
        self.snapshot: bytes | None = None
        self.log: list[bytes] = []
        self.replica = Replica(SPATIAL, client_id=client_id, lineage=SPATIAL.genesis)

    def receive(self, update: bytes) -> None:
        kept = self.replica.apply(update)
        self.replica.settle()
        if self.replica.tainted:
            self.replica = self.replica.rebuilt()
        if kept is not None:
            self.log.append(kept)

    def compact(self) -> None:
        self.snapshot, self.log = self.replica.encode_state(), []

    def reopen(self) -> None:
        """As `DocumentSet` loads a document: its snapshot, then its log."""
        self.replica = Replica(SPATIAL, client_id=self.client_id, lineage=SPATIAL.genesis)
        self.replica.load(self.log, snapshot=self.snapshot)


def forgotten_mug() -> tuple[bytes, bytes, bytes]:
    """Robot 7 places the mug; robot 5, having seen it, removes it (an update that only
    deletes) and writes the keys.  Returns (robot 5's keys, its deletion, robot 7's mug)."""
    seven = Replica(SPATIAL, client_id=7, lineage=SPATIAL.genesis)
    five = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    _, mug = seven.transact(lambda: seven.doc.get("placements", type=Map).__setitem__("mug", 7))
    _, keys = five.transact(lambda: five.doc.get("placements", type=Map).__setitem__("keys", 5))
    assert mug is not None
    assert keys is not None
    five.apply(mug)
    _, removal = five.transact(lambda: five.doc.get("placements", type=Map).pop("mug"))
    assert removal is not None
    assert updates.runs(removal)[0] == []  # deletes only
    return keys, removal, mug


@pytest.mark.parametrize("compacted", [False, True])
def test_a_deletion_that_arrives_before_what_it_deletes_survives_a_restart(
    compacted: bool,
) -> None:
    """Found in review: Yrs keeps such a deletion pending and out of every encoding, and an
    update bringing only it looked like nothing new: neither stored nor passed on.  After a
    restart (or a compaction) the mug showed again where robots that never restarted hid it."""
    keys, removal, mug = forgotten_mug()
    live, restarted = Stored(), Stored()
    for robot in (live, restarted):
        robot.receive(keys)
        robot.receive(removal)
    assert restarted.log[-1] == removal  # kept, and so passed on
    assert restarted.replica.beyond == [updates.delete_set_of({7: [(0, 1)]})]
    if compacted:
        restarted.compact()
    restarted.reopen()
    for robot in (live, restarted):
        robot.receive(mug)
        assert shown(robot.replica) == {"keys": 5}
        assert robot.replica.beyond == []
    assert restarted.replica.digest() == live.replica.digest()


def test_a_deletion_held_aside_is_in_the_digest() -> None:
    """Found in review: a catch-up answer is offered on, not relayed (`Session.relays`), and
    a deletion of what has not arrived yet changed no digest, so the offer did not tell the
    other robot about it; once the mug arrived there, it showed where it was removed here."""
    keys, removal, _mug = forgotten_mug()
    holder, other = Stored(), Stored()
    for robot in (holder, other):
        robot.receive(keys)
    holder.receive(removal)
    assert shown(holder.replica) == shown(other.replica)
    assert holder.replica.digest() != other.replica.digest()
    other.receive(removal)
    assert holder.replica.digest() == other.replica.digest()


def test_updates_whose_gaps_filled_are_not_kept_in_memory() -> None:
    """Found in review: while one run was held aside for good (a revoked robot's gap), every
    update ever held aside stayed in memory, whole."""
    revoked = Replica(SPATIAL, client_id=66, lineage=SPATIAL.genesis)
    author = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    first = revoked.transact(lambda: revoked.doc.get("placements", type=Map).update({"a": 1}))
    beyond = revoked.transact(lambda: revoked.doc.get("placements", type=Map).update({"b": 2}))
    moves = [
        author.transact(partial(author.doc.get("placements", type=Map).__setitem__, "k", i))[1]
        for i in range(201)
    ]
    assert first[1] is not None
    assert beyond[1] is not None
    robot = Replica(SPATIAL, client_id=9, lineage=SPATIAL.genesis)
    robot.apply(beyond[1])  # held aside for good: its author's first edit never comes
    robot.apply(moves[0])
    for i in range(1, 200, 2):
        assert robot.apply(moves[i + 1]) is not None  # held aside until...
        assert robot.apply(moves[i]) is not None  # ...the gap before it fills
    assert len(robot.beyond) == 1
    assert len(robot._held) == 1


def test_a_string_that_is_not_utf8_is_a_corrupt_update() -> None:
    """Found in review: it raised `UnicodeDecodeError`, which no caller expects."""
    author = Replica(SPATIAL, client_id=5, lineage=SPATIAL.genesis)
    first = author.transact(lambda: author.doc.get("t", type=Text).insert(0, "ab"))[1]
    second = author.transact(lambda: author.doc.get("t", type=Text).insert(2, "cd"))[1]
    assert first is not None
    assert second is not None
    robot = Replica(SPATIAL, client_id=9, lineage=SPATIAL.genesis)
    robot.apply(first)
    with pytest.raises(CorruptDocumentError):
        robot.apply(second.replace(b"cd", b"\xff\xfe"))
    assert robot.doc.get("t", type=Text).to_py() == "ab"


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), writes=st.integers(2, 14), data=st.data())
def test_restarts_and_compactions_in_any_order_change_nothing_shown(
    seed: int, writes: int, data: st.DataObject
) -> None:
    """Updates in any order, with the store reopened (from its log, or from a compaction's
    snapshot) at any point: in the end the replica shows what the authors show, holds
    nothing aside, and has the digest of a replica that never restarted."""
    deltas, final = history(seed, writes)
    order = data.draw(st.permutations(deltas))
    steps = data.draw(
        st.lists(
            st.sampled_from(["", "reopen", "compact"]), min_size=len(order), max_size=len(order)
        )
    )
    robot, steady = Stored(), Stored(client_id=10)
    for update, step in zip(order, steps, strict=True):
        robot.receive(update)
        steady.receive(update)
        if step == "compact":
            robot.compact()
        if step:
            robot.reopen()
    robot.reopen()
    assert shown(robot.replica) == shown(steady.replica) == final
    assert robot.replica.beyond == steady.replica.beyond == []
    assert robot.replica.digest() == steady.replica.digest()
