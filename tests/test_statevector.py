"""State vectors: lib0 decoding, canonical encoding, coverage."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Map

from hearthsync.crdt import statevector as sv
from hearthsync.errors import RemoteError


def test_decodes_what_yrs_encodes() -> None:
    doc: Doc = Doc(client_id=300)
    other: Doc = Doc(client_id=7)
    with other.transaction():
        other.get("m", type=Map)["a"] = "1"
    doc.apply_update(other.get_update())
    with doc.transaction():
        doc.get("m", type=Map)["b"] = "2"
        doc.get("m", type=Map)["c"] = "3"
    assert sv.decode(doc.get_state()) == {7: 1, 300: 2}
    assert sv.covers({7: 1, 300: 2}, {7: 1})
    assert not sv.covers({7: 1}, {7: 1, 300: 2})


@given(st.dictionaries(st.integers(0, sv.MAX_CLIENT), st.integers(0, sv.MAX_CLOCK), max_size=50))
def test_canonical_encoding_round_trips(vector: dict[int, int]) -> None:
    data = sv.encode(vector)
    assert sv.decode(data) == vector
    assert sv.canonical(data) == data


@given(st.binary(max_size=64))
def test_garbage_raises_only_remote_error(data: bytes) -> None:
    try:
        decoded = sv.decode(data)
    except RemoteError:
        return
    assert sv.decode(sv.encode(decoded)) == decoded  # whatever is accepted means one thing


@pytest.mark.parametrize("data", [b"", b"\x01\x05", b"\x01\x05\x06\x07", b"\xff" * 11])
def test_malformed_vectors_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteError):
        sv.decode(data)


def pairs(*entries: tuple[int, int]) -> bytes:
    """The lib0 encoding of ``entries`` as written, in any range (what a peer may send)."""
    out = bytearray()
    sv.write_varuint(len(entries), out)
    for client, clock in entries:
        sv.write_varuint(client, out)
        sv.write_varuint(clock, out)
    return bytes(out)


@pytest.mark.parametrize(
    "entries",
    [
        ((5, 2**32),),  # Yrs clocks are u32
        ((5, 2**64 - 1),),
        ((5, 2**69),),
        ((2**53, 1),),  # beyond any client id Yrs draws
        ((2**64 - 1, 1),),
        ((2**69, 1),),
        ((5, 1), (7, 2**69)),
    ],
)
def test_clocks_and_client_ids_no_yrs_document_holds_are_refused(
    entries: tuple[tuple[int, int], ...],
) -> None:
    """An ACK claiming clock 2**69 for a robot's own client id made it renew that id (found in
    review): such a vector is refused as malformed, like any other that is not a state vector."""
    with pytest.raises(RemoteError, match="is over"):
        sv.decode(pairs(*entries))
    with pytest.raises(RemoteError):
        sv.canonical(pairs(*entries))


def test_the_largest_clock_and_client_id_yrs_uses_are_accepted() -> None:
    assert sv.decode(pairs((sv.MAX_CLIENT, sv.MAX_CLOCK))) == {sv.MAX_CLIENT: sv.MAX_CLOCK}
    assert sv.MAX_CLOCK == 2**32 - 1
    assert max(Doc().client_id for _ in range(100)) <= sv.MAX_CLIENT  # what pycrdt draws


def test_large_vectors_from_peers_are_not_kept_once_decoded() -> None:
    """Every decoded vector used to be kept (16,384 of them): a peer sending distinct 41 KB
    vectors in ACKs pinned 0.4 MB per frame, 7 GB in all.  Only small ones are kept now."""
    rnd = random.Random(1)
    vectors = [
        pairs(*sorted((rnd.randrange(2**31, 2**32), 1) for _ in range(sv.MAX_ENTRIES)))
        for _ in range(30)
    ]
    assert all(len(data) > sv.CACHED_BYTES for data in vectors)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in vectors:
            assert len(sv.decode(data)) == sv.MAX_ENTRIES
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"{kept / 1e6:.1f} MB kept after decoding {len(vectors)} vectors"


@pytest.mark.parametrize("entries", [1, 1_000])
def test_decoded_vectors_are_read_only(entries: int) -> None:
    """Small vectors are shared between callers (remembered); large ones are not, and are
    just as read-only."""
    data = pairs(*((client, 3) for client in range(1, entries + 1)))
    decoded = sv.decode(data)
    with pytest.raises(TypeError):
        decoded[1] = 4  # type: ignore[index]
    assert sv.decode(data) == decoded
