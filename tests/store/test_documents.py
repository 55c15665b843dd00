"""The durable document set: reopen equality, compaction, corruption, group commit."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import zstandard
from pycrdt import Array, Doc, Map, merge_updates

from hearthsync.compression import decompress
from hearthsync.crdt import statevector as sv
from hearthsync.crdt.handles import Log, SlotMap
from hearthsync.crdt.kinds import parse
from hearthsync.crdt.replica import EMPTY_UPDATE, Replica
from hearthsync.errors import ClosedError, CorruptDocumentError, StoreError
from hearthsync.ids import DocId
from hearthsync.model import Condition, InteractionEvent, Pose, Preference, Region
from hearthsync.peer import HISTORY, Peer
from hearthsync.store.documents import CHANGES_PER_TRANSACTION, DocumentSet
from hearthsync.store.embedding import HashingEmbedder
from hearthsync.store.sqlite import SqliteStore
from tests.conftest import MONDAY_MS, FakeWall

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DAY = 86_400_000


async def fill_every_kind(peer: Peer) -> None:
    """Write at least one record into every kind of document."""
    await peer.set_profile("alice", languages=["en", "zh"], accessibility=["large print"])
    await peer.set_calibration("alice", proactivity=0.3, personal_space_m=1.2)
    await peer.set_preference(
        "alice", "beverage/coffee", "oat latte", condition=Condition(days="weekday")
    )
    await peer.set_preference(
        "alice", "beverage/coffee", "cortado", condition=Condition(days="weekend")
    )
    await peer.set_health("alice", "medication/metformin", {"dose_mg": 500, "at": ["08:00"]})
    for day in range(40):  # spans two monthly event documents
        await peer.record_event(
            "alice", "COMMAND", "beverage", text=f"coffee on day {day}", ts=MONDAY_MS + day * DAY
        )
    await peer.set_region("shelf-2", "Second shelf", tags=["good-shelf"])
    await peer.place("green-mug", "Green mug", region="shelf-2", pose=Pose(x=1.0, y=2.0))
    await peer.place("green-mug", "Green mug", region="sink")
    await peer.set_routine("bob-late", "Bob is up late", user="bob", after="23:00")
    await peer.relate("alice", "owns", "green-mug")


def snapshot_of(peer: Peer) -> dict[str, tuple[bytes, object]]:
    """Every document's state vector and decoded content."""
    result: dict[str, tuple[bytes, object]] = {}
    for doc_id, replica in peer._docs.replicas.items():
        mirror: Doc = Doc()
        mirror.apply_update(replica.encode_state())
        content = {
            name: mirror.get(name, type=kind).to_py() for name, kind in _roots(replica.info.kind)
        }
        result[doc_id] = (replica.state_vector(), content)
    return result


def _roots(kind: object) -> tuple:
    from hearthsync.crdt.handles import ROOTS

    return ROOTS[kind]  # type: ignore[index]


@pytest.mark.parametrize("compact", [False, True], ids=["log", "compacted"])
async def test_every_kind_reopens_identical(
    peer: Peer, peer_path: Path, wall: FakeWall, compact: bool
) -> None:
    await fill_every_kind(peer)
    if compact:
        assert await peer.compact() > 0
    before = snapshot_of(peer)
    kinds = {replica.info.kind for replica in peer._docs.replicas.values()}
    assert len(kinds) == 8, (
        kinds
    )  # household, spatial, graph, profile, prefs, calib, health, events
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.corrupt == {}
        assert snapshot_of(reopened) == before
        assert (
            reopened.preference("alice", "beverage/coffee", Condition(days="weekend")).value
            == "cortado"
        )  # type: ignore[union-attr]
        assert len(reopened.events("alice")) == 40
        assert [c.to_region for c in reopened.spatial_changes("green-mug")] == ["shelf-2", "sink"]


async def test_acknowledged_write_is_in_sqlite_when_await_returns(
    peer: Peer, peer_path: Path
) -> None:
    await peer.set_preference("alice", "beverage/tea", "green")
    # killed right after the ack (nothing more is flushed), the file holds the delta: it was
    # committed, not waiting in memory.  (While the peer runs, no other connection may read
    # its file: it holds it in exclusive locking mode.)
    await peer.crash()
    conn = sqlite3.connect(peer_path / "hearth.db")
    rows = conn.execute("SELECT count(*) FROM updates WHERE doc_id = 'user/alice/prefs'").fetchone()
    conn.close()
    assert rows[0] >= 1


async def test_a_large_batch_to_one_document_is_applied_in_slices(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """One batch, one SQLite transaction, but at most `CHANGES_PER_TRANSACTION` writes per
    pycrdt transaction: Yrs slows down per insert as one transaction grows."""
    committed: list[list[str]] = []
    peer.on_durable(lambda batch: committed.append([doc_id for doc_id, _, _ in batch]))
    count = 2 * CHANGES_PER_TRANSACTION + 44
    events = await asyncio.gather(
        *(
            peer.record_event("alice", "OBSERVATION", "kitchen", text=f"cup {i}")
            for i in range(count)
        )
    )
    assert len(committed) == 1  # group commit as ever
    month = committed[0][0]
    assert committed[0] == [month, month, month]  # three deltas: 256, 256 and 44 writes
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert [e.id for e in reopened.events("alice")] == [e.id for e in events]


async def test_concurrent_writes_are_group_committed(peer: Peer) -> None:
    before = peer._docs.batches_committed
    await asyncio.gather(*(peer.set_preference("alice", f"bench/k{i}", i) for i in range(500)))
    batches = peer._docs.batches_committed - before
    assert 1 <= batches < 50, batches  # 500 acknowledged writes, a handful of transactions
    assert len(peer.preferences("alice", "bench/")) == 500


async def test_compaction_folds_the_log_and_shrinks_the_file(peer: Peer, peer_path: Path) -> None:
    peer._docs.compact_min_log_bytes = 10**12  # only the explicit compaction below
    rng = random.Random(2)  # values that do not compress: the log's growth is real bytes
    for _ in range(40):
        values = ["".join(rng.choices(LETTERS, k=160)) for _ in range(100)]
        await asyncio.gather(
            *(peer.set_preference("alice", f"k/{i}", v) for i, v in enumerate(values))
        )
    await peer.flush()
    db = peer_path / "hearth.db"
    await peer._sqlite.reclaim()
    grown = db.stat().st_size
    await peer.compact()
    sizes = await peer._sqlite.sizes()
    assert sizes["user/alice/prefs"][1] == 0  # no log entries left
    assert db.stat().st_size < grown / 2, (db.stat().st_size, grown)
    state = len(peer._docs.replicas["user/alice/prefs"].encode_state())
    assert db.stat().st_size < 3 * state + 64 * 1024  # pages freed, not just rows deleted


async def test_automatic_compaction_keeps_the_log_smaller_than_the_snapshot(peer: Peer) -> None:
    for round_ in range(30):
        await asyncio.gather(*(peer.set_preference("alice", f"k/{i}", round_) for i in range(50)))
    snapshot, _, log = (await peer._sqlite.sizes())["user/alice/prefs"]
    assert snapshot > 0
    assert log < 2 * max(snapshot, 16_384)  # at most one batch past the threshold


@pytest.mark.parametrize(
    ("codec", "blob", "reason"),
    [
        (0, "deadbeef", ""),  # not a Yrs update: Yrs says why, in its own words
        (1, "28b52ffd2004", "compressed update"),  # a Zstandard frame cut short
        (7, "00", "unknown codec 7"),
    ],
)
async def test_corrupt_document_is_reported_and_the_others_load(
    peer: Peer, peer_path: Path, wall: FakeWall, codec: int, blob: str, reason: str
) -> None:
    await fill_every_kind(peer)
    await peer.close()
    conn = sqlite3.connect(peer_path / "hearth.db")
    conn.execute(
        f"UPDATE updates SET data = x'{blob}', codec = ? WHERE doc_id = 'user/alice/prefs'",
        (codec,),
    )
    conn.commit()
    conn.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert set(reopened.corrupt) == {"user/alice/prefs"}
        assert reason in reopened.corrupt["user/alice/prefs"]
        assert reopened.corrupt["user/alice/prefs"]  # a reason, never an empty string
        assert reopened.profile("alice") is not None
        assert len(reopened.events("alice")) == 40
        with pytest.raises(CorruptDocumentError, match="user/alice/prefs"):
            await reopened.set_preference("alice", "beverage/tea", "green")


async def test_a_document_larger_than_an_envelope_carries_compacts_and_reopens(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """Found in review: the store read its own snapshots back under the envelopes' bound
    (`MAX_UPDATE_BYTES`, 64 MiB), so once a document outgrew it (a month of large events)
    the snapshot compaction wrote made it corrupt at the next open, every acknowledged write
    in it lost."""
    from pycrdt import Text

    from hearthsync.compression import MAX_UPDATE_BYTES

    doc_id = DocId("home/graph")
    big = "hearth " * (MAX_UPDATE_BYTES // 7 + 1)

    def grow(replica: Replica) -> None:
        replica.doc.get("bulk", type=Text).insert(0, big)

    await peer._docs.write(doc_id, grow)
    await peer.relate("alice", "owns", "green-mug")
    state = peer._docs.replica(doc_id).state_vector()
    assert await peer.compact() >= 1
    await peer.close()
    conn = sqlite3.connect(peer_path / "hearth.db")
    (stored,) = conn.execute("SELECT snapshot FROM docs WHERE doc_id = ?", (doc_id,)).fetchone()
    conn.close()
    assert zstandard.frame_content_size(stored) > MAX_UPDATE_BYTES  # compressed, and past it

    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.corrupt == {}
        assert reopened._docs.replica(doc_id).state_vector() == state
        assert reopened.relationships("alice")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE updates SET data = 'garbage'", "an update log row of the wrong type"),
        ("UPDATE docs SET client_id = 'x'", "a document row of the wrong type"),
        ("UPDATE docs SET snapshot = 'garbage', snapshot_codec = 0", "a snapshot of the wrong"),
    ],
)
async def test_a_row_of_the_wrong_type_is_a_corrupt_document_and_the_others_load(
    peer: Peer, peer_path: Path, wall: FakeWall, sql: str, reason: str
) -> None:
    # SQLite's loose typing lets a text sit where a blob or a number belongs
    await fill_every_kind(peer)
    await peer.compact()  # a snapshot for every document
    await peer.set_preference("alice", "beverage/tea", "green")  # and a log row
    await peer.close()
    conn = sqlite3.connect(peer_path / "hearth.db")
    conn.execute(f"{sql} WHERE doc_id = 'user/alice/prefs'")
    conn.commit()
    conn.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert set(reopened.corrupt) == {"user/alice/prefs"}
        assert reason in reopened.corrupt["user/alice/prefs"]
        assert len(reopened.events("alice")) == 40


async def test_a_format_1_store_is_upgraded_in_place(tmp_path: Path, wall: FakeWall) -> None:
    """A store written before updates were compressed opens, keeps everything, and writes on."""
    path = tmp_path / "old"
    async with Peer.open(path, device="kitchen", wall=wall) as peer:
        await peer.add_user("alice", name="Alice")
        await peer.set_preference("alice", "tea/mug", "green")
        before = peer.state_vector("user/alice/prefs")
    # what format 1 looked like: no codec columns, no record column
    conn = sqlite3.connect(path / "hearth.db")
    rows = conn.execute("SELECT seq, doc_id, codec, data FROM updates").fetchall()
    snapshots = conn.execute("SELECT doc_id, snapshot_codec, snapshot FROM docs").fetchall()
    conn.executescript(
        """
        CREATE TABLE docs1 AS SELECT doc_id, scope, subject, lineage, client_id, snapshot FROM docs;
        CREATE TABLE updates1 (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, data BLOB NOT NULL);
        DROP TABLE docs; DROP TABLE updates;
        ALTER TABLE vectors DROP COLUMN record;
        ALTER TABLE docs1 RENAME TO docs; ALTER TABLE updates1 RENAME TO updates;
        UPDATE meta SET value = '1' WHERE key = 'format';
        """
    )
    conn.executemany(
        "INSERT INTO updates VALUES (?, ?, ?)",
        [(seq, doc_id, decompress(codec, data)) for seq, doc_id, codec, data in rows],
    )
    conn.executemany(
        "UPDATE docs SET snapshot = ? WHERE doc_id = ?",
        [(decompress(codec, blob), doc) for doc, codec, blob in snapshots if blob is not None],
    )
    conn.commit()
    blobs = conn.execute("SELECT data FROM updates UNION ALL SELECT snapshot FROM docs").fetchall()
    assert any(b"green" in blob for (blob,) in blobs if blob)  # stored as is, as format 1 did
    conn.close()
    async with Peer.open(path, wall=wall) as peer:
        assert peer.state_vector("user/alice/prefs") == before
        assert peer.preference("alice", "tea/mug").value == "green"  # type: ignore[union-attr]
        await peer.set_preference("alice", "tea/milk", "oat")
    conn = sqlite3.connect(path / "hearth.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("2",)
    conn.close()
    async with Peer.open(path, wall=wall) as peer:
        assert peer.preference("alice", "tea/milk").value == "oat"  # type: ignore[union-attr]


def fail_the_next_commit(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next batch ``peer`` commits fails as a full or failing disk fails it; later ones
    are written."""
    real_commit = peer._sqlite.commit
    calls = {"n": 0}

    async def failing_once(batch: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("write on hearth.db failed: disk I/O error")
        await real_commit(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(peer._sqlite, "commit", failing_once)


async def test_failed_commit_is_not_acknowledged_and_not_lost(
    peer: Peer, peer_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_the_next_commit(peer, monkeypatch)
    with pytest.raises(StoreError, match="disk I/O error"):
        await peer.set_preference("alice", "beverage/tea", "green")
    await peer.set_preference("alice", "beverage/juice", "orange")
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        # memory held the unacknowledged write; the disk must agree with memory after retry
        assert reopened.preference("alice", "beverage/tea").value == "green"  # type: ignore[union-attr]
        assert reopened.preference("alice", "beverage/juice").value == "orange"  # type: ignore[union-attr]


def test_concurrent_register_writes_resolve_by_hybrid_time_not_by_yrs() -> None:
    """Two robots write the same preference while partitioned; the later HLC wins everywhere."""
    info = parse("user/alice/prefs")
    robots = [Replica(info, client_id=cid, lineage=info.genesis) for cid in (7, 3)]
    maps = [SlotMap(robot, "prefs", Preference) for robot in robots]
    early = Preference.build(
        user="alice",
        key="tea/mug",
        value="blue",
        set_at="0000000000001000.00000.AAAA",
        device="AAAA",
    )
    late = Preference.build(
        user="alice",
        key="tea/mug",
        value="green",
        set_at="0000000000002000.00000.BBBB",
        device="BBBB",
    )
    robots[0].transact(lambda: maps[0].put("tea/mug#", late, "BBBB"))
    robots[1].transact(lambda: maps[1].put("tea/mug#", early, "AAAA"))
    assert [m.get("tea/mug#").value for m in maps] == ["green", "blue"]  # type: ignore[union-attr]
    for a, b in ((0, 1), (1, 0)):
        robots[b].apply(robots[a].doc.get_update(robots[b].state_vector()))
    assert [m.get("tea/mug#").value for m in maps] == ["green", "green"]  # type: ignore[union-attr]
    assert [len(m.versions("tea/mug#")) for m in maps] == [2, 2]


def test_views_write_the_deltas_pycrdt_writes() -> None:
    """`SlotMap.put` and `Log.append` insert through the open Yrs transaction, without
    pycrdt's wrappers: the deltas are byte for byte those of pycrdt's own ``__setitem__`` and
    ``append``; outside a transaction they call those, as before."""
    pref = Preference.build(
        user="alice", key="tea/mug", value="blue", set_at="0000000000001000.00000.AAAA",
        device="AAAA",
    )  # fmt: skip
    event = InteractionEvent.build(
        id="ev-0000000003e8aaaaaaaaaaaaaaaaaaaa", user="alice", type="COMMAND", domain="tea",
        text="a mug of tea", ts=1000,
    )  # fmt: skip
    infos = (parse("user/alice/prefs"), parse("user/alice/events/2026-03"))
    ours = [Replica(info, client_id=7, lineage=info.genesis) for info in infos]
    theirs = [Replica(info, client_id=7, lineage=info.genesis) for info in infos]
    slots, log = SlotMap(ours[0], "prefs", Preference), Log(ours[1], "events", InteractionEvent)
    prefs, events = theirs[0].doc.get("prefs", type=Map), theirs[1].doc.get("events", type=Array)
    stored_pref = pref.encode(without=frozenset({"user", "key", "device"}))
    stored_event = event.encode(without=frozenset({"user"}))
    for count in (3, 1):  # several writes in one transaction, then one alone
        for mine, pycrdts, a, b in (
            (lambda: slots.put("tea/mug#", pref, "AAAA"),
             lambda: prefs.__setitem__("tea/mug#\x1fAAAA", stored_pref), *ours[:1], *theirs[:1]),
            (lambda: log.append(event), lambda: events.append(stored_event), ours[1], theirs[1]),
        ):  # fmt: skip
            _, delta = a.transact(lambda mine=mine, n=count: [mine() for _ in range(n)])
            _, expected = b.transact(lambda pycrdts=pycrdts, n=count: [pycrdts() for _ in range(n)])
            assert delta is not None
            assert delta == expected
    log.append(event)  # no transaction open: pycrdt's own append makes one
    events.append(stored_event)
    assert ours[1].doc.get_update() == theirs[1].doc.get_update()
    assert [e.text for e in log] == ["a mug of tea"] * 5


async def test_client_id_is_persisted_per_document(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    await peer.set_preference("alice", "a/b", 1)
    ids = {d: r.client_id for d, r in peer._docs.replicas.items()}
    assert len(set(ids.values())) == len(ids)  # one client id per (device, document)
    await peer.close()
    async with Peer.open(peer_path, wall=wall, rng=random.Random(99)) as reopened:
        assert {d: r.client_id for d, r in reopened._docs.replicas.items()} == ids


async def test_updates_from_another_replica_merge_durably(
    peer: Peer, peer_path: Path, wall: FakeWall, tmp_path: Path
) -> None:
    """Two robots exchange diffs by hand (what sync will do) and converge, durably."""
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall:
        await hall.add_user("alice", name="Alice")
        await hall.set_preference("alice", "beverage/tea", "green")
        await peer.set_preference("alice", "beverage/coffee", "oat latte")
        committed: list[tuple[str, bytes, str]] = []
        peer.on_durable(committed.extend)
        for doc_id in hall.document_ids():
            await peer.apply_update(
                doc_id, hall.diff(doc_id, peer.state_vector(doc_id)), origin="hall"
            )
        for doc_id in peer.document_ids():
            await hall.apply_update(doc_id, peer.diff(doc_id, hall.state_vector(doc_id)))
        for robot in (peer, hall):
            assert {p.value for p in robot.preferences("alice")} == {"green", "oat latte"}
        for doc_id in hall.document_ids():  # Yrs encodes in hash order: compare decoded
            assert sv.decode(peer.state_vector(doc_id)) == sv.decode(hall.state_vector(doc_id))
        assert ("user/alice/prefs", "hall") in {(doc_id, origin) for doc_id, _, origin in committed}
        # a duplicate changes nothing and is not written again
        before = peer._docs.batches_committed
        await peer.apply_update("user/alice/prefs", hall.diff("user/alice/prefs"))
        assert peer._docs.batches_committed == before
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert {p.value for p in reopened.preferences("alice")} == {"green", "oat latte"}


async def test_an_update_that_came_compressed_is_stored_as_it_came(
    peer: Peer, peer_path: Path, wall: FakeWall, tmp_path: Path
) -> None:
    """The Zstandard frame an update arrived in is what the log keeps: not compressed again
    on the commit's path (a 10,000-edit catch-up would spend 0.7 ms of it doing so)."""
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall:
        await hall.add_user("alice", name="Alice")
        for i in range(50):
            await hall.set_preference("alice", f"tea/{i}", "green")
        update = hall.diff("user/alice/prefs")
    # another level than the store's own: bytes the store would not have made itself
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(update)
    done = peer.receive_update("user/alice/prefs", update, origin="hall", packed=frame)
    assert done is not None
    await done
    stored = (
        await peer._sqlite._rows(
            "SELECT codec, data FROM updates WHERE doc_id = 'user/alice/prefs' ORDER BY seq DESC"
        )
    )[0]
    assert stored[1] == frame
    assert decompress(stored[0], stored[1]) == update
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert len(reopened.preferences("alice")) == 50


async def test_a_garbage_update_changes_nothing(peer: Peer) -> None:
    before = set(peer.document_ids())
    with pytest.raises(CorruptDocumentError, match="user/bob/prefs"):
        await peer.apply_update("user/bob/prefs", b"\x07garbage")
    assert set(peer.document_ids()) == before
    await peer.set_preference("bob", "tea/mug", "blue")  # the peer still serves
    assert peer.preference("bob", "tea/mug") is not None


def _update_of_authors(count: int, root: str = "prefs") -> bytes:
    """One update holding a struct of each of ``count`` authors."""
    parts = []
    for client in range(1000, 1000 + count):
        doc: Doc = Doc(client_id=client)
        doc[root] = Map({f"k{client}": "v"})
        parts.append(doc.get_update())
    return merge_updates(*parts)


@pytest.mark.parametrize("doc_id", ["user/bob/prefs", "user/bob/health"])  # held, and new
async def test_an_update_naming_more_authors_than_a_document_may_hold_changes_nothing(
    peer: Peer, peer_path: Path, wall: FakeWall, doc_id: str
) -> None:
    """Found in review: such an update (from a misbehaving robot) was merged and stored, then
    every read of the document's state vector raised: the caller got an error for an update
    that was durable, the flusher died (later writes waited for good), and the store never
    opened again."""
    await peer.set_preference("bob", "tea/mug", "blue")
    before = {d: peer.state_vector(d) for d in peer.document_ids()}
    update = _update_of_authors(sv.MAX_ENTRIES + 1)

    with pytest.raises(CorruptDocumentError, match="authors, over 4096"):
        await peer.apply_update(doc_id, update)

    assert {d: peer.state_vector(d) for d in peer.document_ids()} == before
    async with asyncio.timeout(10):
        await peer.set_preference("bob", "tea/cup", "white")  # the flusher still serves
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.corrupt == {}
        assert reopened.preference("bob", "tea/cup") is not None


async def test_authors_held_aside_count_toward_the_bound_of_a_document(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """Found in review: the authors of what a document holds aside (here, overwrites waiting
    for the entry they overwrite) were not counted.  Three updates of 1,400 authors each
    passed, held aside; then the entry they wait for came, they all showed, and the
    document held more authors than a state vector may name: every read of it raised."""
    doc_id = "user/bob/prefs"
    first: Doc = Doc(client_id=1)
    first["prefs"] = Map({"k": "x"})
    origin = first.get_update()
    waiting = []
    for client in range(1000, 1000 + 3 * 1400):
        doc: Doc = Doc(client_id=client)
        doc.apply_update(origin)
        state = doc.get_state()
        doc.get("prefs", type=Map)["k"] = f"v{client}"
        waiting.append(doc.get_update(state))
    for start in (0, 1400):
        await peer.apply_update(doc_id, merge_updates(*waiting[start : start + 1400]))
    with pytest.raises(CorruptDocumentError, match="4200 authors, over 4096"):  # 2,800 held
        await peer.apply_update(doc_id, merge_updates(*waiting[2800:]))
    await peer.apply_update(doc_id, origin)
    assert len(sv.decode(peer.state_vector(doc_id))) == 1 + 2 * 1400
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.corrupt == {}
        assert len(sv.decode(reopened.state_vector(doc_id))) == 1 + 2 * 1400


async def test_a_stored_update_naming_too_many_authors_is_a_corrupt_document(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """Stored before merging refused it, it kept the whole store from opening (found in
    review): now that document is reported, and the others load."""
    await fill_every_kind(peer)
    await peer.close()
    conn = sqlite3.connect(peer_path / "hearth.db")
    conn.execute(
        "UPDATE updates SET data = ?, codec = 0 WHERE doc_id = 'user/alice/prefs'",
        (_update_of_authors(sv.MAX_ENTRIES + 2),),
    )
    conn.commit()
    conn.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert set(reopened.corrupt) == {"user/alice/prefs"}
        assert "4098 clients" in reopened.corrupt["user/alice/prefs"]
        assert len(reopened.events("alice")) == 40


async def test_event_log_cache_follows_local_and_remote_appends(
    peer: Peer, wall: FakeWall, tmp_path: Path
) -> None:
    await peer.record_event("alice", "COMMAND", "tea", text="local one", ts=MONDAY_MS)
    assert [e.text for e in peer.events("alice")] == ["local one"]  # cache built
    await peer.record_event("alice", "COMMAND", "tea", text="local two", ts=MONDAY_MS + 1)
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall:
        await hall.add_user("alice", name="Alice")
        await hall.record_event("alice", "COMMAND", "tea", text="from the hall", ts=MONDAY_MS + 2)
        doc_id = "user/alice/events/2026-03"
        await peer.apply_update(doc_id, hall.diff(doc_id, peer.state_vector(doc_id)))
    texts = [e.text for e in peer.events("alice")]
    assert texts == ["local one", "local two", "from the hall"]


async def test_a_cancelled_writer_does_not_cancel_the_batch(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    loser = peer.set_preference("alice", "a/cancelled", 1)  # both queued, in one batch
    keeper = peer.set_preference("alice", "a/kept", 2)
    waiting = asyncio.ensure_future(asyncio.wait_for(loser, timeout=60))
    await asyncio.sleep(0)  # the waiter starts waiting (no event to wait on here)
    waiting.cancel()  # cancels the wait and its future, never the batch-mate's
    await keeper  # acknowledged although its batch-mate's caller gave up
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert loser.cancelled()
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.preference("alice", "a/kept") is not None
        # giving up waiting does not take a write back: it was queued, so it landed
        assert reopened.preference("alice", "a/cancelled") is not None


async def exchange(src: Peer, dst: Peer) -> None:
    for doc_id in src.document_ids():
        await dst.apply_update(doc_id, src.diff(doc_id, dst.state_vector(doc_id)), origin="x")


async def restored_from_a_backup(tmp_path: Path, wall: FakeWall) -> tuple[Path, Path]:
    """Robot a, restored from a backup taken before its last edit, which robot b holds: a's
    client id of Alice's preferences is one b has seen more of.  Returns both folders."""
    import shutil

    a_path, b_path, backup = tmp_path / "a", tmp_path / "b", tmp_path / "backup"
    async with Peer.open(a_path, device="a", wall=wall) as a, Peer.open(b_path, device="b") as b:
        await a.add_user("alice", name="Alice")
        await a.set_preference("alice", "k/1", "v1")
        await exchange(a, b)
    shutil.copytree(a_path, backup)
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        await a.set_preference("alice", "k/2", "v2")  # b sees this; the backup will not have it
        await exchange(a, b)
    shutil.rmtree(a_path)
    shutil.copytree(backup, a_path)  # the restore
    return a_path, b_path


async def test_a_store_restored_from_a_backup_takes_a_new_client_id(
    tmp_path: Path, wall: FakeWall
) -> None:
    """DESIGN invariant 2: reusing a client id the household has seen more of corrupts it."""
    a_path, b_path = await restored_from_a_backup(tmp_path, wall)
    doc = "user/alice/prefs"
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        stale = a._docs.replicas[DocId(doc)].client_id
        a.docs.peer_state(DocId(doc), b.state_vector(doc))  # first contact with b
        fresh = a._docs.replicas[DocId(doc)].client_id
        assert fresh != stale
        await a.set_preference("alice", "k/3", "v3")  # before catching up with b
        await exchange(b, a)
        await exchange(a, b)
        for robot in (a, b):
            assert {p.key: p.value for p in robot.preferences("alice")} == {
                "k/1": "v1",
                "k/2": "v2",
                "k/3": "v3",
            }
        assert sv.decode(a.state_vector(doc)) == sv.decode(b.state_vector(doc))
    async with Peer.open(a_path, wall=wall) as a:
        assert a._docs.replicas[DocId(doc)].client_id == fresh  # the new id was persisted


async def test_a_new_client_id_survives_a_failed_commit(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch that would have stored a restored robot's new client id fails: the id is
    stored by the next one, not lost (the reopened store would write under the old id again,
    and two robots would hold different edits under one id: equal state vectors, different
    content, for good)."""
    a_path, b_path = await restored_from_a_backup(tmp_path, wall)
    doc = "user/alice/prefs"
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        a.docs.peer_state(DocId(doc), b.state_vector(doc))
        fresh = a._docs.replicas[DocId(doc)].client_id
        fail_the_next_commit(a, monkeypatch)
        with pytest.raises(StoreError):
            await a.set_preference("alice", "k/3", "v3")
        await a.set_preference("alice", "k/4", "v4")
    async with Peer.open(a_path, wall=wall) as a:
        assert a._docs.replicas[DocId(doc)].client_id == fresh


async def test_a_corrupt_household_is_reported_and_a_peer_replaces_it(
    tmp_path: Path, wall: FakeWall
) -> None:
    """One unreadable row of the household document: the robot still opens (it reported it
    by id, but could not start at all), lists the users it holds profiles of, and the next
    sync replaces the document with what the other robot holds, durably."""
    import sqlite3

    a_path, b_path = tmp_path / "a", tmp_path / "b"
    async with Peer.open(a_path, device="a", wall=wall) as a, Peer.open(b_path, device="b") as b:
        await a.add_user("alice", name="Alice")
        await a.set_preference("alice", "beverage/tea", "green")
        await exchange(a, b)
        await b.add_user("bob", name="Bob")
    db = sqlite3.connect(a_path / "hearth.db")
    assert db.execute(
        "UPDATE updates SET data = x'0badbadbad', codec = 0 WHERE doc_id = 'household'"
    ).rowcount
    db.commit()
    db.close()
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        assert set(a.corrupt) == {"household"}
        assert a.users() == ["alice"]  # whose profile it holds
        assert a.preference("alice", "beverage/tea") is not None
        await exchange(b, a)
        assert a.corrupt == {}
        assert a.users() == ["alice", "bob"]
    async with Peer.open(a_path, wall=wall) as a:
        assert a.corrupt == {}
        assert a.users() == ["alice", "bob"]


async def an_events_document_corrupt_on_a(
    tmp_path: Path, wall: FakeWall, texts: tuple[str, ...]
) -> tuple[Path, Path, str]:
    """Robots a and b, closed: both hold Alice's events ``texts``, b also "a new one", and
    a's stored events document no longer decodes.  Returns both folders and the document."""
    a_path, b_path = tmp_path / "a", tmp_path / "b"
    doc = "user/alice/events/2026-03"
    async with Peer.open(a_path, device="a", wall=wall) as a, Peer.open(b_path, device="b") as b:
        await a.add_user("alice", name="Alice")
        for i, text in enumerate(texts):
            await a.record_event("alice", "COMMAND", "drink", text=text, ts=MONDAY_MS + i)
        await exchange(a, b)
        await b.record_event("alice", "COMMAND", "drink", text="a new one", ts=MONDAY_MS + 9)
    db = sqlite3.connect(a_path / "hearth.db")
    assert db.execute(
        "UPDATE updates SET data = x'0badbadbad', codec = 0 WHERE doc_id = ?", (doc,)
    ).rowcount
    db.commit()
    db.close()
    return a_path, b_path, doc


async def test_a_corrupt_events_document_replaced_by_a_peer_is_not_embedded_twice(
    tmp_path: Path, wall: FakeWall
) -> None:
    """Its events' embeddings are stored here already: the replaced document embeds only the
    events that have none, or recall would return every event twice."""
    a_path, b_path, doc = await an_events_document_corrupt_on_a(
        tmp_path, wall, ("green tea please", "coffee with oat milk", "lights on")
    )
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        assert set(a.corrupt) == {doc}
        await a.apply_update(doc, b.diff(doc), origin="b")
        await a.flush()
        assert a.corrupt == {}
        texts = [hit.event.text for hit in await a.recall("alice", "green tea", k=8)]
        assert sorted(texts) == sorted(
            ["green tea please", "coffee with oat milk", "lights on", "a new one"]
        )


async def test_an_event_merged_from_another_robot_is_recalled_before_its_batch_lands(
    tmp_path: Path, wall: FakeWall
) -> None:
    """A merged event is listed at once, in memory; its embedding lands with the batch that
    makes it durable.  Recall in between missed it (found as a flaky sync test): it now waits
    for that batch, as it would for the robot's own writes."""
    doc = "user/alice/events/2026-03"
    async with (
        Peer.open(tmp_path / "a", device="a", wall=wall) as a,
        Peer.open(tmp_path / "b", device="b", wall=wall) as b,
    ):
        for robot in (a, b):
            await robot.add_user("alice", name="Alice")
        await a.record_event("alice", "COMMAND", "mug", text="use the green mug", ts=MONDAY_MS)
        await exchange(a, b)
        await a.record_event("alice", "COMMAND", "shelf", text="the good shelf", ts=MONDAY_MS + 1)
        landing = b.receive_update(doc, a.diff(doc, b.state_vector(doc)), origin="a")
        assert landing is not None
        assert not landing.done()  # merged in memory, not yet durable
        assert [e.text for e in b.events("alice")] == ["use the green mug", "the good shelf"]
        hits = await b.recall("alice", "the good shelf", k=1)
        assert [hit.event.text for hit in hits] == ["the good shelf"]
        await landing


async def test_the_rescan_of_a_replaced_document_survives_a_failed_commit(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a corrupt events document replaced by a peer embeds what it lacks by
    a rescan; when that batch failed, the rescan waited for another update of the same
    document, which might never come, and the event it listed was never recalled."""
    a_path, b_path, doc = await an_events_document_corrupt_on_a(
        tmp_path, wall, ("green tea please",)
    )
    async with Peer.open(a_path, wall=wall) as a, Peer.open(b_path) as b:
        fail_the_next_commit(a, monkeypatch)
        with pytest.raises(StoreError, match="disk I/O error"):
            await a.apply_update(doc, b.diff(doc), origin="b")
        assert "a new one" in [e.text for e in a.events("alice")]
        texts = [hit.event.text for hit in await a.recall("alice", "a new one", k=1)]
        assert texts == ["a new one"]
    async with Peer.open(a_path, wall=wall) as a:  # and stored
        texts = [hit.event.text for hit in await a.recall("alice", "a new one", k=1)]
        assert texts == ["a new one"]


async def test_after_a_close_whose_last_batch_failed_nothing_waits_for_good(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: events carried from a failed batch made recall wait for a batch
    that a closed peer never commits, and a barrier (`Peer.flush`, `status`, `compact`)
    woke a flusher that had ended: both hung for good."""

    async def failing(batch: object) -> None:
        raise StoreError("write on hearth.db failed: disk I/O error")

    monkeypatch.setattr(peer._sqlite, "commit", failing)
    with pytest.raises(StoreError):
        await peer.record_event("alice", "COMMAND", "drink", text="tea", ts=MONDAY_MS)
    with pytest.raises(StoreError):
        await peer.close()
    async with asyncio.timeout(10):  # fails loudly, rather than hang
        found = await peer.recall("alice", "tea", k=1)
        with pytest.raises(ClosedError, match="closed, and what it holds in memory is not stored"):
            await peer.flush()
    assert found == []  # the event was never stored, nor embedded


async def test_recall_on_a_peer_committing_by_hand_waits_for_the_batch_in_flight(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: without a flusher (``auto_commit=False``) recall stopped waiting for
    the commit in flight that embeds an event `events` already lists."""
    doc = "user/alice/events/2026-03"
    async with (
        Peer.open(tmp_path / "a", device="a", wall=wall) as a,
        Peer.open(tmp_path / "b", device="b", wall=wall, auto_commit=False) as b,
    ):
        await a.add_user("alice", name="Alice")
        await a.record_event("alice", "COMMAND", "mug", text="use the green mug", ts=MONDAY_MS)
        b.receive_update("household", a.diff("household"), origin="a")
        b.receive_update(doc, a.diff(doc), origin="a")
        await b.commit()
        await a.record_event("alice", "COMMAND", "shelf", text="the good shelf", ts=MONDAY_MS + 1)
        b.receive_update(doc, a.diff(doc, b.state_vector(doc)), origin="a")
        gate = asyncio.Event()
        entered = _watched_commits(b, monkeypatch, gate)
        committing = asyncio.create_task(b.commit())
        async with asyncio.timeout(10):
            await entered.wait()  # the batch is in flight, its commit held
        assert [e.text for e in b.events("alice")] == ["use the green mug", "the good shelf"]
        waiting = asyncio.create_task(b._docs.embedded(f"alice.{HISTORY}"))  # what recall does
        try:
            for _ in range(5):  # loop turns, not time: it waits on the batch, with no I/O
                await asyncio.sleep(0)
            assert not waiting.done()
        finally:
            gate.set()  # or the close waits for the held commit for good
            await committing
        async with asyncio.timeout(10):
            await waiting
        hits = await b.recall("alice", "the good shelf", k=1)
        assert [hit.event.text for hit in hits] == ["the good shelf"]


async def test_a_write_made_while_a_close_by_hand_runs_is_answered(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: without a flusher, a close commits what is queued, then makes a last
    batch; a write made while that last batch ran was never answered, neither stored nor
    refused."""
    peer = await Peer.start(tmp_path / "a", device="a", wall=wall, auto_commit=False)
    docs = peer._docs
    first = docs.write(DocId("household"), lambda _: 1)
    real = docs._sqlite.commit
    entered: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def held(batch: object) -> None:
        gate = asyncio.Event()
        entered.put_nowait(gate)
        await gate.wait()
        await real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(docs._sqlite, "commit", held)
    closing = asyncio.create_task(peer.close())
    async with asyncio.timeout(10):
        (await entered.get()).set()  # the close's commit, with the first write
        second = docs.write(DocId("household"), lambda _: 2)  # still taken: not closed yet
        (await entered.get()).set()  # the last batch, with the second
        third = docs.write(DocId("household"), lambda _: 3)
        await closing
        assert (await first, await second) == (1, 2)
        with pytest.raises(ClosedError):
            await third


def _a_batch_held_in_flight(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Future[Region], asyncio.Event]:
    """A write whose batch's commit never returns (a disk that hangs), and the event set once
    that batch is in flight (by hand: once a commit or a close takes it)."""
    in_flight = asyncio.Event()

    async def hangs(batch: object) -> None:
        in_flight.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(peer._sqlite, "commit", hangs)
    return peer.set_region("kitchen", "Kitchen"), in_flight


@pytest.mark.parametrize("auto_commit", [True, False], ids=["flusher", "by-hand"])
async def test_a_close_cancelled_while_its_batch_is_in_flight_answers_its_writers(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch, auto_commit: bool
) -> None:
    """Found in review: a close cancelled while a batch was in flight (the flusher's, or its
    own last one) left that batch's writers, and any barrier that joined it, waiting for
    good: a cancellation is not an ``Exception``, and only those were handed to them."""
    peer = await Peer.start(tmp_path / "a", device="a", wall=wall, auto_commit=auto_commit)
    docs = peer._docs
    written, in_flight = _a_batch_held_in_flight(peer, monkeypatch)
    closing = asyncio.create_task(docs.close())
    async with asyncio.timeout(10):
        await in_flight.wait()
        barrier = asyncio.create_task(docs.write_barrier())
        await asyncio.sleep(0)  # it joins the batch in flight
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(ClosedError, match="cancelled"):
            await written
        with pytest.raises(ClosedError):  # by hand, it made a batch of its own: refused
            await barrier
    assert docs._carry  # not stored; nor dropped from memory while the set lives
    monkeypatch.undo()
    await peer.close()  # the rest of the close: the store's connection, the folder's lock


async def test_a_client_id_renewed_after_the_last_batch_is_refused_not_awaited(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a client id renewed (a session's doing) while the last batch of a
    close ran queued a batch no flusher would take, and a flush then waited for good."""
    docs = peer._docs
    entered, gate = asyncio.Event(), asyncio.Event()
    real = docs._sqlite.commit

    async def held(batch: object) -> None:
        entered.set()
        await gate.wait()
        await real(batch)  # type: ignore[arg-type]

    fail_the_next_commit(peer, monkeypatch)  # a failed batch: the close makes a last one
    with pytest.raises(StoreError):
        await peer.record_event("alice", "COMMAND", "x", text="tea", ts=MONDAY_MS)
    monkeypatch.setattr(docs._sqlite, "commit", held)
    closing = asyncio.create_task(peer.close())
    household = DocId("household")
    async with asyncio.timeout(10):
        await entered.wait()  # the last batch in flight
        replica = docs.replicas[household]
        seen = sv.decode(replica.state_vector()).get(replica.client_id, 0)
        assert docs.renew_if_stale(household, {replica.client_id: seen + 5})
        gate.set()
        await closing
        with pytest.raises(ClosedError):
            await peer.flush()


class ContendedLock(asyncio.Lock):
    """A lock that says when someone starts waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.contended.set()
        return await super().acquire()


async def test_a_barrier_made_while_the_last_batch_waits_for_the_lock_is_answered(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: at close, the flusher's last try at a failed batch waits for the lock
    (a compaction, a purge may hold it); a barrier made meanwhile joined that batch, which
    never answered it."""
    docs = peer._docs
    lock = ContendedLock()
    monkeypatch.setattr(docs, "_lock", lock)

    async def no_compaction(force: bool = False) -> int:  # the flusher goes idle at once
        return 0

    monkeypatch.setattr(docs, "_maybe_compact", no_compaction)
    fail_the_next_commit(peer, monkeypatch)
    with pytest.raises(StoreError):
        await peer.record_event("alice", "COMMAND", "drink", text="tea", ts=MONDAY_MS)
    await lock.acquire()  # as a compaction or a purge holds it
    closing = asyncio.create_task(docs.close())
    async with asyncio.timeout(10):
        await lock.contended.wait()  # the flusher, at its last batch, waits for it
    assert docs._queue.done is None
    assert docs._carry
    barrier = asyncio.create_task(docs.write_barrier())
    await asyncio.sleep(0)
    assert docs._queue.done is not None  # it joined the batch to come
    lock.release()
    async with asyncio.timeout(10):
        await closing  # the carried event is committed by the last batch
        await barrier
    assert not docs._carry


async def test_a_failing_embedder_does_not_lose_acknowledged_events(
    peer: Peer, peer_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(texts: object) -> object:
        raise MemoryError("the model did not fit")

    monkeypatch.setattr(peer._docs._embedder, "embed", broken)
    await peer.record_event("alice", "COMMAND", "tea", text="first", ts=MONDAY_MS)
    monkeypatch.undo()
    await peer.record_event("alice", "COMMAND", "tea", text="second", ts=MONDAY_MS + 1)
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert [e.text for e in reopened.events("alice")] == ["first", "second"]


async def test_events_of_a_failed_commit_are_embedded_once_with_the_batch_that_lands_them(
    peer: Peer, peer_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the batch's embedding runs beside its transactions: a commit that fails after it
    # finished must neither lose the events' vectors nor store them twice
    fail_the_next_commit(peer, monkeypatch)
    with pytest.raises(StoreError, match="disk I/O error"):
        await peer.record_event("alice", "COMMAND", "tea", text="green tea", ts=MONDAY_MS)
    await peer.record_event("alice", "COMMAND", "tea", text="oat latte", ts=MONDAY_MS + 1)
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        ids = {e.text: e.id for e in reopened.events("alice")}
        assert set(ids) == {"green tea", "oat latte"}
        rows = await reopened._docs._sqlite._rows("SELECT event_id FROM vectors")
        assert sorted(str(row[0]) for row in rows) == sorted(ids.values())
        found = await reopened.recall("alice", "green tea", k=1)
        assert [r.event.text for r in found] == ["green tea"]


async def test_an_embedding_the_index_cannot_hold_leaves_the_event_durable_and_the_store_open(
    peer: Peer, peer_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = peer._docs._embedder.embed

    def poisoned(texts: list[str]) -> np.ndarray:
        matrix = real(texts)
        matrix[[i for i, text in enumerate(texts) if "poison" in text]] = np.nan
        return matrix

    monkeypatch.setattr(peer._docs._embedder, "embed", poisoned)
    heard: list[str] = []
    peer.on_durable(lambda batch: heard.extend(doc for doc, _, _ in batch))
    await peer.record_event("alice", "COMMAND", "tea", text="poison", ts=MONDAY_MS)  # acknowledged
    assert heard == ["user/alice/events/2026-03"]  # and sync hears of it
    await peer.record_event("alice", "COMMAND", "tea", text="fine tea", ts=MONDAY_MS + 1)
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert [e.text for e in reopened.events("alice")] == ["poison", "fine tea"]
        found = await reopened.recall("alice", "fine tea", k=5)
        assert [r.event.text for r in found] == ["fine tea"]


async def test_a_commit_retries_what_a_failed_batch_left_and_does_not_repeat_its_error(
    peer: Peer, peer_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_the_next_commit(peer, monkeypatch)
    with pytest.raises(StoreError, match="disk I/O error"):
        await peer.set_preference("alice", "beverage/tea", "green")
    await peer.commit()  # tries the carried delta again, and it lands
    assert peer._docs._carry == []
    await peer.compact()
    await peer.crash()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.preference("alice", "beverage/tea").value == "green"  # type: ignore[union-attr]


async def test_a_close_whose_last_commit_fails_still_lets_go_of_the_documents(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Yrs holds the observers where Python's collector cannot see them: a set not released
    # stays alive, with every replica, for good
    monkeypatch.setattr(peer._sqlite, "commit", _always_failing)
    replicas = list(peer._docs.replicas.values())
    write = peer.set_preference("alice", "beverage/tea", "green")
    with pytest.raises(StoreError):
        await peer.close()
    with pytest.raises(StoreError):
        await write  # never acknowledged
    assert replicas
    assert all(replica._closed for replica in replicas)


async def _always_failing(batch: object) -> None:
    raise StoreError("write on hearth.db failed: disk I/O error")


async def _held_commits(
    peer: Peer, monkeypatch: pytest.MonkeyPatch, failing: set[int]
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the ``failing``-th commits of the store wait for the first event returned, then
    fail; the second is set once one of them is waiting (its batch in flight)."""
    real_commit = peer._sqlite.commit
    gate, waiting = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def held(batch: object) -> None:
        calls.append(len(calls) + 1)
        if len(calls) in failing:
            waiting.set()
            await gate.wait()
            raise StoreError("write on hearth.db failed: disk I/O error")
        await real_commit(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(peer._sqlite, "commit", held)
    return gate, waiting


async def _alices_updates(tmp_path: Path, wall: FakeWall) -> tuple[bytes, bytes]:
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall:
        await hall.add_user("alice", name="Alice")
        await hall.set_preference("alice", "tea/mug", "green")
        return hall.diff("user/alice/prefs"), hall.diff("household")


async def test_a_repeat_of_an_update_carried_into_a_batch_in_flight_waits_for_that_batch(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a repeat answered "already durable" is acknowledged to its sender: it must not be,
    # while the batch that carries it after a failure can still fail
    prefs, household = await _alices_updates(tmp_path, wall)
    peer = await Peer.start(tmp_path / "kitchen", device="kitchen", wall=wall, auto_commit=False)
    gate, waiting = await _held_commits(peer, monkeypatch, failing={1, 2})
    gate.set()
    assert peer.receive_update("user/alice/prefs", prefs, origin="hall") is not None
    with pytest.raises(StoreError):
        await peer.commit()  # the delta is carried
    gate.clear()
    waiting.clear()
    peer.receive_update("household", household, origin="hall")
    retry = asyncio.ensure_future(peer.commit())  # carries the prefs delta, and is held
    await asyncio.wait_for(waiting.wait(), 5)
    repeat = peer.receive_update("user/alice/prefs", prefs, origin="hall")
    assert repeat is not None
    assert not repeat.done()
    gate.set()
    with pytest.raises(StoreError):
        await retry
    assert repeat.exception() is not None  # never acknowledged
    await peer.crash()


async def test_a_second_commit_while_one_is_in_flight_keeps_the_first_in_flight(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefs, household = await _alices_updates(tmp_path, wall)
    peer = await Peer.start(tmp_path / "kitchen", device="kitchen", wall=wall, auto_commit=False)
    gate, waiting = await _held_commits(peer, monkeypatch, failing={1})
    peer.receive_update("user/alice/prefs", prefs, origin="hall")
    first = asyncio.ensure_future(peer.commit())
    await asyncio.wait_for(waiting.wait(), 5)
    peer.receive_update("household", household, origin="hall")
    second = asyncio.ensure_future(peer.commit())  # as a purge's write barrier makes one
    await asyncio.sleep(0)  # one turn: its first step runs (it took the queue there, before)
    repeat = peer.receive_update("user/alice/prefs", prefs, origin="hall")
    assert repeat is not None
    assert not repeat.done()  # the first batch has not landed
    gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], StoreError)
    await peer.crash()


async def test_a_failing_compaction_does_not_stop_the_writer(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_full(*args: object) -> None:
        raise StoreError("write on hearth.db failed: database or disk is full")

    monkeypatch.setattr(peer._sqlite, "compact", disk_full)
    for round_ in range(30):  # enough log to make compaction due, and fail, several times
        await asyncio.gather(*(peer.set_preference("alice", f"k/{i}", round_) for i in range(50)))
    async with asyncio.timeout(10):
        await peer.set_preference("alice", "still/writing", True)
    assert peer.preference("alice", "still/writing") is not None


async def test_a_duplicate_is_durable_only_once_what_it_repeats_is(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated update brings nothing new, but its acknowledgement carries the state vector
    after it: that must not reach the peer while what it covers could still be lost."""
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall:
        await hall.add_user("alice", name="Alice")
        await hall.set_preference("alice", "tea/mug", "green")
        update = hall.diff("user/alice/prefs")
    peer = await Peer.start(tmp_path / "kitchen", device="kitchen", wall=wall, auto_commit=False)
    try:
        first = peer.receive_update("user/alice/prefs", update, origin="hall")
        again = peer.receive_update("user/alice/prefs", update, origin="hall")
        assert first is not None
        assert again is not None  # not None: that read "durable here", and was acknowledged
        assert not again.done()
        real_commit = peer._sqlite.commit

        async def full_once(batch: object) -> None:
            monkeypatch.setattr(peer._sqlite, "commit", real_commit)
            raise StoreError("write on hearth.db failed: database or disk is full")

        monkeypatch.setattr(peer._sqlite, "commit", full_once)
        with pytest.raises(StoreError):
            await peer.commit()
        assert again.done()  # failed with its batch: the peer sends it again
        carried = peer.receive_update("user/alice/prefs", update, origin="hall")
        assert carried is not None  # the merge rides, carried, with the next batch
        assert not carried.done()
        await peer.commit()
        assert carried.done()
        assert carried.exception() is None
        assert peer.receive_update("user/alice/prefs", update, origin="hall") is None
    finally:
        await peer.close()


async def test_a_commit_made_by_the_caller_is_not_failed_by_the_compaction_after_it(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``auto_commit=False`` (the simulation) the compaction after a commit runs inside
    `Peer.commit`: its failure is logged, as the flusher's is, not raised for a durable batch."""
    path = tmp_path / "robot"
    peer = await Peer.start(path, device="kitchen", wall=wall, auto_commit=False)
    try:
        peer._docs.compact_min_log_bytes = 0  # due after every batch

        async def disk_full(*args: object) -> None:
            raise StoreError("write on hearth.db failed: database or disk is full")

        monkeypatch.setattr(peer._sqlite, "compact", disk_full)
        added = asyncio.ensure_future(peer.add_user("alice", name="Alice"))
        await asyncio.sleep(0)  # the write queues; only the commit below lands it
        await peer.commit()
        await added
        written = peer.set_preference("alice", "beverage/tea", "green")
        await peer.commit()
        assert (await written).value == "green"
    finally:
        await peer.crash()  # nothing flushed: what is on disk is what the commits made
    async with Peer.open(path, wall=wall) as reopened:
        assert reopened.preference("alice", "beverage/tea").value == "green"  # type: ignore[union-attr]


async def test_a_local_write_builds_on_the_rebuilt_replica_not_on_content_beyond_a_gap(
    tmp_path: Path,
) -> None:
    """An update merged unread showed robot 22's entry beyond a gap in its clock; a local
    write in the same batch must not take that entry as its origin (it would then wait, held
    aside with it, once the replica is rebuilt: the robot's own write unseen)."""
    writes = [  # robot 11 sets the keys twice; robot 22 overwrites them in its third edit
        b"\x01\x01\x0b\x00(\x01\nplacements\x04keys\x01w\x06keys-1\x00",
        b"\x01\x01\x0b\x01\xa8\x0b\x00\x01w\x06keys-2\x01\x0b\x01\x00\x01",
        b"\x01\x01\x16\x02\xa8\x0b\x00\x01w\x06keys-4\x01\x0b\x01\x00\x01",
    ]
    sqlite = await SqliteStore.open(tmp_path / "store.db")
    docs = DocumentSet(sqlite, HashingEmbedder(), random.Random(7))
    await docs.load()
    spatial = DocId("home/spatial")
    try:
        docs.apply_remote(spatial, merge_updates(*writes))

        def mine(replica: Replica) -> None:
            replica.doc.get("placements", type=Map)["keys"] = "mine"

        await docs.write(spatial, mine)
        replica = docs.settled(spatial)  # what an inventory, a diff or a view reads next
        assert replica is not None
        assert replica.doc.get("placements", type=Map).to_py() == {"keys": "mine"}
        assert sv.decode(replica.state_vector()).get(replica.client_id) == 1  # not held aside
        assert len(replica.beyond) == 1  # only robot 22's entry waits for its gap
    finally:
        await docs.close()
        await sqlite.close()


async def test_reads_never_leave_a_statement_open_for_a_checkpoint(peer: Peer) -> None:
    """Every read runs to completion in one hop to the connection's thread: a read begun
    as two hops (execute, then fetch) left its statement active while the compaction after a
    batch checkpointed the WAL, which failed with "database table is locked"."""
    for i in range(20):
        await peer.record_event("alice", "COMMAND", "misc", text=f"task {i}", ts=MONDAY_MS + i)
    sqlite = peer._sqlite

    async def read_after(hops: int) -> None:
        for _ in range(hops):  # start the read at every point of the reclaim's own hops
            await sqlite._conn.execute_fetchall("SELECT 1")
        await sqlite.recalled(list(range(1, 21)))

    for hops in range(6):
        await asyncio.gather(sqlite.reclaim(), read_after(hops))


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    """A background task (a purge) that reaches the store after a crash closed it is told
    `ClosedError`, which it expects, not aiosqlite's ``ValueError`` (which it logged as a
    failure: found by the stricter chaos checkers, seed 490819)."""
    from hearthsync.errors import ClosedError

    sqlite = await SqliteStore.open(tmp_path / "store.db")
    await sqlite.commit_meta({"k": "v"})
    assert await sqlite.get_meta("k") == "v"
    await sqlite.close()
    with pytest.raises(ClosedError, match="closed"):
        await sqlite.get_meta("k")
    with pytest.raises(ClosedError, match="closed"):
        await sqlite.commit_meta({"k": "w"})


def _watched_commits(
    peer: Peer, monkeypatch: pytest.MonkeyPatch, gate: asyncio.Event | None = None
) -> asyncio.Event:
    """An event set as each batch's commit starts; the commit goes on to the real one once
    ``gate`` is set, if one is given."""
    real = peer._sqlite.commit
    entered = asyncio.Event()

    async def watched(batch: object) -> None:
        entered.set()
        if gate is not None:
            await gate.wait()
        await real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(peer._sqlite, "commit", watched)
    return entered


async def test_a_commit_by_hand_cancelled_while_its_transaction_runs_lands_once(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a commit by hand cancelled (a caller's timeout, a purge cancelled by
    a close) while its transaction ran on the connection's thread landed all the same, yet
    was carried as if it had not: its new document rows, inserted again, failed every later
    batch (UNIQUE constraint), and the store took nothing more until restarted."""
    peer = await Peer.start(tmp_path / "a", device="a", wall=wall, auto_commit=False)
    try:
        entered = _watched_commits(peer, monkeypatch)
        written = peer.set_region("kitchen", "Kitchen")  # the first write to home/spatial
        committing = asyncio.create_task(peer.commit())
        async with asyncio.timeout(10):
            await entered.wait()  # its transaction is on the connection's thread
            committing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await committing
            assert (await written).id == "kitchen"  # it landed: answered as stored
            assert not peer._docs._carry
            assert not peer._docs._new
            later = peer.set_region("hall", "Hall")
            await peer.commit()
            assert (await later).id == "hall"
    finally:
        await peer.close()
    async with Peer.open(tmp_path / "a", wall=wall) as reopened:
        assert sorted(region.id for region in reopened.regions()) == ["hall", "kitchen"]


async def test_a_cancelled_commit_by_hand_stores_an_embedding_once(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the events of a batch cancelled while it landed were embedded again
    with the next batch, under new rows, and recall found the event twice."""
    path = tmp_path / "a"
    peer = await Peer.start(path, device="a", wall=wall, auto_commit=False)
    try:
        added = asyncio.ensure_future(peer.add_user("alice", name="Alice"))
        await asyncio.sleep(0)  # it queues its write
        await peer.commit()
        await added
        entered = _watched_commits(peer, monkeypatch)
        recorded = peer.record_event("alice", "COMMAND", "tea", text="green tea", ts=MONDAY_MS)
        committing = asyncio.create_task(peer.commit())
        async with asyncio.timeout(10):
            await entered.wait()
            committing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await committing
            await recorded
            await peer.commit()
    finally:
        await peer.close()
    async with Peer.open(path, wall=wall) as reopened:
        rows = await reopened._docs._sqlite._rows("SELECT event_id FROM vectors")
        assert len(rows) == 1
        hits = await reopened.recall("alice", "green tea", k=5)
        assert [hit.event.text for hit in hits] == ["green tea"]


async def test_an_empty_update_for_a_corrupt_document_changes_nothing(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """Found in review: an update holding nothing, for a document this robot could not read,
    took it off the corrupt list and had the next batch delete its rows."""
    await peer.set_preference("alice", "beverage/tea", "green")
    await peer.close()
    db = sqlite3.connect(peer_path / "hearth.db")
    assert db.execute(
        "UPDATE updates SET data = x'0badbadbad', codec = 0 WHERE doc_id = 'user/alice/prefs'"
    ).rowcount
    db.commit()
    db.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert set(reopened.corrupt) == {"user/alice/prefs"}
        assert reopened.receive_update("user/alice/prefs", EMPTY_UPDATE, origin="b") is None
        assert set(reopened.corrupt) == {"user/alice/prefs"}
        await reopened.set_region("kitchen", "Kitchen")  # any batch
    db = sqlite3.connect(peer_path / "hearth.db")
    rows = db.execute("SELECT count(*) FROM docs WHERE doc_id = 'user/alice/prefs'").fetchone()
    db.close()
    assert rows == (1,)  # its rows kept, for a robot that can replace them


async def test_a_batch_whose_embedding_cannot_start_carries_its_deltas(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: `_flush` emptied the carry before its try, so a failure starting the
    embedding (an executor shut down) dropped the batch's remote deltas, held in memory only;
    a repeat of the update was then answered "durable" at once, and never was."""
    src = await Peer.start(tmp_path / "b", device="b", wall=wall)
    await src.add_user("alice", name="Alice")
    await src.record_event("alice", "COMMAND", "tea", text="green tea", ts=MONDAY_MS)
    doc = "user/alice/events/2026-03"
    household, events = src.diff("household"), src.diff(doc)
    await src.close()
    path = tmp_path / "a"
    peer = await Peer.start(path, device="a", wall=wall, auto_commit=False)
    docs = peer._docs
    real = docs._offload

    def refuses(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(docs, "_offload", real)  # once
        raise RuntimeError("cannot schedule new futures after shutdown")

    assert peer.receive_update("household", household, origin="b") is not None
    await peer.commit()
    monkeypatch.setattr(docs, "_offload", refuses)
    assert peer.receive_update(doc, events, origin="b") is not None
    with pytest.raises(RuntimeError):
        await peer.commit()
    assert [e.text for e in peer.events("alice")] == ["green tea"]  # in memory
    async with asyncio.timeout(10):  # sent again: durable only with the next batch
        repeated = asyncio.ensure_future(peer.apply_update(doc, events, origin="b"))
        await peer.commit()
        await repeated
    await peer.close()
    async with Peer.open(path, wall=wall) as reopened:
        assert [e.text for e in reopened.events("alice")] == ["green tea"]  # and on disk


async def test_a_peer_close_cancelled_while_a_purge_runs_still_closes_its_documents(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: `Peer.close` waits for the purges running before it closes the
    documents; cancelled there, it closed the store but left the document set open: its
    flusher ran on, writes were taken, and no replica was let go."""
    docs = peer._docs
    gate = asyncio.Event()
    entered = _watched_commits(peer, monkeypatch, gate)
    peer._forgetting._start("alice", always=True)  # a purge in the background
    closing = asyncio.create_task(peer.close())
    async with asyncio.timeout(10):
        await entered.wait()  # the purge's first write is in flight; close waits for it
        closing.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await closing
    assert docs._closed
    assert docs._flusher is not None
    assert docs._flusher.done()


@pytest.mark.parametrize(
    ("synchronous", "level"), [(None, 2), ("FULL", 2), ("NORMAL", 1), ("OFF", 0)]
)
async def test_a_store_is_a_wal_synced_as_asked_full_by_default(
    tmp_path: Path, synchronous: Literal["FULL", "NORMAL", "OFF"] | None, level: int
) -> None:
    """A committed batch survives a power cut only if SQLite syncs it: WAL with
    ``synchronous=FULL`` unless the caller asks for less.  A kill (`tests/test_crash.py`)
    cannot tell them apart, so the settings themselves are checked (found by a mutant:
    opening every store with ``synchronous=OFF`` passed every test)."""
    path = tmp_path / "hearth.db"
    for _ in range(2):  # a new file, then the same file reopened
        if synchronous is None:
            store = await SqliteStore.open(path)
        else:
            store = await SqliteStore.open(path, synchronous=synchronous)
        try:
            assert await store._rows("PRAGMA synchronous") == [(level,)]
            assert await store._rows("PRAGMA journal_mode") == [("wal",)]
            assert await store._rows("PRAGMA auto_vacuum") == [(2,)]  # incremental
        finally:
            await store.close()


async def test_a_peer_syncs_every_commit_by_default(peer: Peer) -> None:
    assert await peer._sqlite._rows("PRAGMA synchronous") == [(2,)]  # FULL
    assert await peer._sqlite._rows("PRAGMA journal_mode") == [("wal",)]


async def test_a_compaction_whose_snapshot_fails_keeps_the_log(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """A document's snapshot and the deletion of its log are one transaction: if writing the
    snapshot fails (a full disk), the log stays, and every acknowledged write reopens even
    after a crash (found by a mutant: the log deleted in a transaction of its own, before
    the snapshot, passed every test)."""
    await peer.set_preference("alice", "beverage/tea", "green")
    before, logs = snapshot_of(peer), await peer._sqlite.sizes()
    # on the peer's own connection, gone with it: SQLite fails the snapshot's UPDATE itself
    await peer._sqlite._run(
        "CREATE TEMP TRIGGER snapshot_fails BEFORE UPDATE OF snapshot ON docs "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    with pytest.raises(StoreError, match="disk I/O error"):
        await peer.compact()
    assert await peer._sqlite.sizes() == logs  # every log kept, no snapshot written
    await peer.crash()
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.corrupt == {}
        assert snapshot_of(reopened) == before
        assert reopened.users() == ["alice", "bob"]
        assert reopened.preference("alice", "beverage/tea").value == "green"  # type: ignore[union-attr]


async def test_a_crash_stores_nothing_of_a_document_that_just_arrived(
    peer: Peer, peer_path: Path, tmp_path: Path, wall: FakeWall
) -> None:
    """`crash` drops what was not committed, as a kill does, and leaves nothing of the peer
    running: not even the row of a document another robot's update just created (found by a
    mutant: a crash that did not stop the flusher passed every test)."""
    async with Peer.open(tmp_path / "b", device="b", wall=wall) as b:
        await b.relate("alice", "owns", "green-mug")
        update = b.diff("home/graph", peer.state_vector("home/graph"))
    assert "home/graph" not in peer.document_ids()
    landing = peer._docs.apply_remote(DocId("home/graph"), update, origin="b")
    assert landing is not None
    await peer.crash()
    with pytest.raises(ClosedError):
        await landing
    running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert running == []
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert "home/graph" not in reopened.document_ids()


@pytest.mark.parametrize("stop", ["close", "crash"])
async def test_a_write_to_a_stopped_peer_is_refused_not_left_waiting(
    peer: Peer, stop: Literal["close", "crash"]
) -> None:
    """Found by a mutant: a write queued after the flusher had ended was never answered, and
    no test saw it (its caller would wait for good, thinking it still might land)."""
    await getattr(peer, stop)()
    async with asyncio.timeout(10):
        with pytest.raises(ClosedError):
            await peer.set_preference("alice", "beverage/tea", "green")


async def test_a_new_client_id_is_stored_though_nothing_is_written_under_it(
    tmp_path: Path, wall: FakeWall
) -> None:
    """A restored robot's new client id is a batch of its own when nothing else is written:
    durable once a flush returns, though the robot crashes right after (found by a mutant: a
    store that skipped a batch without updates passed every test; reopened, the robot would
    write under the old id again, which the household has seen more of: invariant 2)."""
    a_path, b_path = await restored_from_a_backup(tmp_path, wall)
    doc = DocId("user/alice/prefs")
    async with Peer.open(b_path) as b:
        state = b.state_vector(doc)
    a = await Peer.start(a_path, wall=wall)
    try:
        assert a._docs.renew_if_stale(doc, sv.decode(state))
        fresh = a._docs.replicas[doc].client_id
        await a.flush()
    finally:
        await a.crash()
    async with Peer.open(a_path, wall=wall) as a:
        assert a._docs.replicas[doc].client_id == fresh
