"""Updates a robot of the household may send that no hearthsync robot writes: signed,
decrypted, and malformed.  Each is refused (`CorruptDocumentError`, which closes that link)
before anything changes, and the robot goes on serving (found in review)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from hearthsync.crdt import updates
from hearthsync.crdt.statevector import write_varuint
from hearthsync.errors import CorruptDocumentError
from hearthsync.peer import Peer

SPATIAL = "home/spatial"


def writes(*values: int) -> list[bytes]:
    """Client 5 setting ``m["k"]`` to each value in turn: one delta each (each but the first
    deletes the value it overwrites)."""
    author: Doc[Any] = Doc(client_id=5)
    ymap = author.get("placements", type=Map)
    deltas = []
    for value in values:
        state = author.get_state()
        with author.transaction():
            ymap["k"] = value
        deltas.append(author.get_update(state))
    return deltas


def nested(depth: int) -> bytes:
    """An update of one map entry whose value is ``depth`` arrays, one in the other."""
    out = bytearray()
    for number in (1, 1, 77, 0):  # one client, one struct, client 77 from clock 0
        write_varuint(number, out)
    out += b"\x28\x01\x0aplacements\x01k\x01" + b"\x75\x01" * depth + b"\x7e\x00"
    return bytes(out)


def shortest_broken(update: bytes) -> bytes:
    """``update`` (ending in a range's length of 1) with that length written in two bytes."""
    assert update.endswith(b"\x01")
    return update[:-1] + b"\x81\x00"


async def test_a_deletion_written_long_does_not_pass_for_no_deletion(peer: Peer) -> None:
    """`updates.deletes_nothing` tells from an update's last byte (links merge the deltas that
    delete nothing; SPEC §6.4): a length written ``81 00`` (1 in two bytes) made a deleting
    update look delete-free, and it was kept and passed on as it came."""
    first, second = writes(1, 2)
    hostile = shortest_broken(second)
    assert updates.deletes_nothing(hostile)  # what the links would believe
    await peer.apply_update(SPATIAL, first, origin="x")
    before = (peer.state_vector(SPATIAL), peer.docs.digest(SPATIAL))
    with pytest.raises(CorruptDocumentError, match="shortest"):
        await peer.apply_update(SPATIAL, hostile, origin="x")
    assert (peer.state_vector(SPATIAL), peer.docs.digest(SPATIAL)) == before
    await peer.apply_update(SPATIAL, second, origin="x")  # the same, well written
    assert peer._docs.get(SPATIAL).doc.get("placements", type=Map).to_py() == {"k": 2}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "delete_set",
    [b"\x01\x05\x01\x00\x01\x00", b"\x02\x05\x01\x00\x01\x4d\x00", b"\x01\x05\x02\x00\x01\x03\x00"],
    ids=["a-zero-byte-after", "a-client-deleting-nothing-last", "a-range-of-nothing-last"],
)
def test_an_update_is_read_only_if_its_last_byte_tells_whether_it_deletes(
    delete_set: bytes,
) -> None:
    """Each ends in a zero byte, so `updates.deletes_nothing` would take it for delete-free."""
    _, second = writes(1, 2)
    assert second.endswith(b"\x01\x05\x01\x00\x01")  # deletes clock 0 of client 5
    with pytest.raises(updates.UpdateFormatError):
        updates.runs(second[:-5] + delete_set)


@pytest.mark.parametrize("empty", [True, False], ids=["into-an-empty-document", "held-aside"])
async def test_bytes_after_an_update_are_refused_and_change_nothing(
    peer: Peer, tmp_path: Path, empty: bool
) -> None:
    """Yrs reads an update and ignores what follows it.  Into an empty document such an update
    was merged, stored, and every read of the document after raised `UpdateFormatError` (its
    rebuild read the bytes as part of the delete set); held aside (beyond a gap), it raised
    the same out of `apply_update`, having held it aside all the same."""
    first, _, third = writes(1, 2, 3)
    if not empty:
        await peer.apply_update(SPATIAL, first, origin="x")
    with pytest.raises(CorruptDocumentError, match="trailing"):
        await peer.apply_update(SPATIAL, third + b"\x00", origin="x")
    if empty:
        assert SPATIAL not in peer.document_ids()
        await peer.apply_update(SPATIAL, first, origin="x")
    replica = peer._docs.get(SPATIAL)  # type: ignore[arg-type]
    assert replica is not None
    assert replica.beyond == []
    assert peer.receive_update(SPATIAL, third, origin="x") is not None  # new: held aside now
    assert len(replica.beyond) == 1
    peer.docs.digest(SPATIAL)  # readable


@pytest.mark.parametrize(
    "hostile",
    [
        b"\x01\x02\x4d\x00\x08\x01\x01m\x01\x7e\x00\x00\x00",  # an item, then GC of length 0
        b"\x01\x01\x4d\x00\x0a\x00\x00",  # a Skip of length 0
    ],
    ids=["gc", "skip"],
)
async def test_a_gc_of_no_length_is_refused_before_yrs_panics(peer: Peer, hostile: bytes) -> None:
    """Yrs 0.28 panics on it (``attempt to divide by zero``): `PanicException`, which derives
    from `BaseException`, went past every handler of the link."""
    with pytest.raises(CorruptDocumentError, match="no length"):
        await peer.apply_update(SPATIAL, hostile, origin="x")
    assert SPATIAL not in peer.document_ids()


def test_values_nested_deeply_are_refused_before_yrs_reads_them(tmp_path: Path) -> None:
    """Yrs reads nested values recursively: 30,000 arrays one in the other (60 KB) overflowed
    its stack and killed the process (SIGSEGV), an empty document's or not.  Run apart, so
    that a regression fails this test rather than the test run."""
    script = f"""
import asyncio
from hearthsync.errors import CorruptDocumentError
from hearthsync.peer import Peer

async def main() -> None:
    async with Peer.open({str(tmp_path / "r")!r}, device="r") as peer:
        for existing in (False, True):
            if existing:
                await peer.place("mug", "shelf", region="kitchen")
            try:
                await peer.apply_update({SPATIAL!r}, bytes.fromhex({nested(30_000).hex()!r}))
            except CorruptDocumentError as exc:
                print("refused:", exc.reason)

asyncio.run(main())
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.count("refused: value nested too deeply") == 2


async def test_many_deletions_of_what_has_not_arrived_are_held_aside_in_linear_time(
    peer: Peer,
) -> None:
    """Each deletion of clocks not seen yet is held aside; each was checked against every one
    held before it: 20,000 ranges (a 49 KB envelope) kept the event loop for 40 s."""
    first, _ = writes(1, 2)
    await peer.apply_update(SPATIAL, first, origin="x")
    ranges = 20_000
    hostile = bytearray(b"\x00")
    for number in (1, 77, ranges):
        write_varuint(number, hostile)
    for index in range(ranges):
        write_varuint(2 * index, hostile)
        write_varuint(1, hostile)
    started = time.perf_counter()
    await peer.apply_update(SPATIAL, bytes(hostile), origin="x")
    assert time.perf_counter() - started < 10  # 0.5 s on a laptop with the fix
    replica = peer._docs.get(SPATIAL)  # type: ignore[arg-type]
    assert replica is not None
    assert len(replica.beyond) == ranges
    # the same again holds nothing new, and a deletion within one held is not held twice
    assert peer.receive_update(SPATIAL, bytes(hostile), origin="y") is None
    assert peer.receive_update(SPATIAL, b"\x00\x01\x4d\x01\x02\x01", origin="y") is None
