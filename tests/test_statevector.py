"""State vectors: lib0 decoding, canonical encoding, coverage."""

from __future__ import annotations

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


@given(st.dictionaries(st.integers(0, 2**53), st.integers(0, 2**40), max_size=50))
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
