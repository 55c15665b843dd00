"""Hypothesis: ``decode`` survives anything a peer can send, and the codec round-trips.

What these tests prove, for every input Hypothesis generates:

* ``decode`` raises ``ProtocolError`` and nothing else (not msgpack's errors, not ``ValueError``,
  ``TypeError`` or ``KeyError``) on arbitrary bytes and on valid frames that were bit-flipped,
  truncated, extended, spliced, or given a value of the wrong msgpack family at any position;
* whatever ``decode`` accepts is canonical (``encode(decode(b)) == b``) and means to msgpack
  exactly what it means to us (the reader agrees with ``msgpack.unpackb``);
* every valid frame round-trips (``decode(encode(f)) == f``);
* adversarial frames up to the 4 MiB limit decode within Hypothesis' deadline and allocate a
  bounded amount of memory.
"""

from __future__ import annotations

import re
import tracemalloc
import typing
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearthsync.errors import ProtocolError
from hearthsync.protocol import (
    MAX_FRAME_LEN,
    MAX_INVENTORY_ENTRIES,
    Ack,
    Auth,
    Error,
    Frame,
    Hello,
    Inventory,
    InventoryEntry,
    Ping,
    Pong,
    SyncDone,
    SyncStep1,
    SyncStep2,
    Update,
    decode,
    encode,
)
from hearthsync.protocol.codec import wire_fields

FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])

uints = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1]),
)
ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300).map(
    lambda s: s[:256]
)
texts = st.text(max_size=100).map(lambda s: s.encode()[:256].decode("utf-8", "ignore"))


def blobs(min_len: int, max_len: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_len, max_size=min(max_len, 700))


entries = st.builds(InventoryEntry, ids, ids, blobs(8, 8))
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, uints, uints, blobs(1, 1024), blobs(32, 32)),
    st.builds(Auth, blobs(64, 64)),
    st.builds(Inventory, st.lists(entries, max_size=6).map(tuple)),
    st.builds(SyncStep1, ids, ids, blobs(0, 65_536)),
    st.builds(SyncStep2, ids, blobs(1, 2**21)),
    st.builds(SyncDone, ids),
    st.builds(Update, blobs(1, 2**21)),
    st.builds(Ack, ids, blobs(0, 65_536)),
    st.builds(Ping, uints),
    st.builds(Pong, uints),
    st.builds(Error, st.integers(100, 999), texts),
)


def decode_or_refuse(data: bytes) -> Frame | None:
    """Decode ``data``; a refusal must be a ProtocolError, an acceptance must be canonical."""
    try:
        frame = decode(data)
    except ProtocolError as exc:
        refusal = exc
    else:
        assert encode(frame) == data
        assert msgpack.unpackb(data, raw=False) == wire_list(frame)
        return frame
    assert refusal.code in {400, 413, 501}
    assert re.match(r"(frame|[A-Z][A-Z_0-9]+)[.:]", str(refusal)), str(refusal)
    return None


def wire_list(frame: Frame) -> list[Any]:
    """The frame as msgpack.unpackb sees it: ``[type, *fields]``, entries as lists."""
    values: list[Any] = [int(frame.TYPE)]
    for name, _ in wire_fields(type(frame)):
        value = getattr(frame, name)
        if name == "entries":
            value = [[e.doc_id, e.lineage, e.sv_hash] for e in value]
        values.append(value)
    return values


# --- (c) round trip ------------------------------------------------------------------------


@FUZZ
@given(frames)
def test_every_valid_frame_round_trips_and_msgpack_agrees(frame: Frame) -> None:
    data = encode(frame)
    assert decode(data) == frame
    assert msgpack.unpackb(data, raw=False) == wire_list(frame)
    assert msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True) == data


# --- (a) arbitrary bytes --------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(st.integers(0x90, 0x95), st.integers(0, 12), st.binary(max_size=120))
def test_plausible_prefixes_decode_or_raise_protocol_error(
    arity: int, kind: int, rest: bytes
) -> None:
    decode_or_refuse(bytes([arity, kind]) + rest)


# --- (b) mutations of valid frames ---------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(frames)))
    where = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "replace", "insert", "splice"]))
    if how == "flip":
        data[where] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del data[where:]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif how == "replace":
        data[where] = draw(st.integers(0, 255))
    elif how == "insert":
        data[where:where] = draw(st.binary(min_size=1, max_size=4))
    else:
        data[where:] = encode(draw(frames))[where:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_frames_decode_or_raise_protocol_error(data: bytes) -> None:
    decode_or_refuse(data)


WRONG = {
    "uint": [None, True, False, 1.5, -1, -(2**63), "7", b"\x07", [7], {}, msgpack.ExtType(1, b"")],
    "str": [None, True, 0, 3, -2, 0.0, b"doc", ["doc"], {"d": 1}, msgpack.ExtType(1, b"d")],
    "bin": [None, False, 0, 2**64 - 1, -1, 2.5, "0" * 32, [b""], {b"k": b"v"}],
    "array": [None, True, 0, -1, 1.0, "[]", b"[]", {}, msgpack.ExtType(1, b"")],
}


def family(value: object) -> str:
    return {int: "uint", str: "str", bytes: "bin", list: "array"}[type(value)]


@st.composite
def wrong_type_at_a_position(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid frame with one value replaced by one of another family; the path it should name."""
    frame = draw(frames)
    wire = wire_list(frame)
    names = ["type", *(name for name, _ in wire_fields(type(frame)))]
    index = draw(st.integers(0, len(wire) - 1))
    path = f"{frame.TYPE.name}.{names[index]}" if index else "frame.type"
    target, key = wire, index
    if isinstance(frame, Inventory) and index == 1 and wire[1] and draw(st.booleans()):
        entry = draw(st.integers(0, len(wire[1]) - 1))
        field = draw(st.integers(0, 2))
        target, key = wire[1][entry], field
        path = f"INVENTORY.entries[{entry}].{('doc_id', 'lineage', 'sv_hash')[field]}"
    target[key] = draw(st.sampled_from(WRONG[family(target[key])]))
    return msgpack.packb(wire, use_bin_type=True), path


@FUZZ
@given(wrong_type_at_a_position())
def test_a_value_of_the_wrong_type_anywhere_is_400_naming_the_field(
    case: tuple[bytes, str],
) -> None:
    data, path = case
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code == 400
    assert str(info.value).startswith(f"{path}: expected ")


@FUZZ
@given(frames, st.integers(0, 2**16))
def test_every_proper_prefix_of_a_frame_is_refused(frame: Frame, cut: int) -> None:
    data = encode(frame)
    with pytest.raises(ProtocolError) as info:
        decode(data[: cut % len(data)])
    assert info.value.code in {400, 413}  # a short prefix may still declare a too-long field


def header_forms(value: object) -> list[bytes]:
    """Every msgpack header that can carry ``value`` (a uint, or a str/bin/array's length), the
    shortest first."""
    if isinstance(value, int):
        fix, sized, n = (
            (value,) if value < 0x80 else (),
            [(0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)],
            value,
        )
    elif isinstance(value, str):
        n = len(value.encode())
        fix, sized = ((0xA0 | n,) if n < 32 else ()), [(0xD9, 1), (0xDA, 2), (0xDB, 4)]
    elif isinstance(value, bytes):
        fix, sized, n = (), [(0xC4, 1), (0xC5, 2), (0xC6, 4)], len(value)
    else:
        n = len(typing.cast(list[object], value))
        fix, sized = ((0x90 | n,) if n < 16 else ()), [(0xDC, 2), (0xDD, 4)]
    forms = [bytes(fix)] if fix else []
    forms += [bytes([lead]) + n.to_bytes(width, "big") for lead, width in sized if n < 256**width]
    return forms


def loose_pack(value: object, draw: Callable[[st.SearchStrategy[int]], int]) -> tuple[bytes, bool]:
    """msgpack of ``value`` with any header form Hypothesis picks; True if one is not shortest."""
    forms = header_forms(value)
    choice = draw(st.integers(0, len(forms) - 1))
    out, widened = bytearray(forms[choice]), choice > 0
    if isinstance(value, str | bytes):
        out += value.encode() if isinstance(value, str) else value
    elif isinstance(value, list):
        for item in value:
            packed, wider = loose_pack(item, draw)
            out, widened = out + packed, widened or wider
    return bytes(out), widened


@FUZZ
@given(frames, st.data())
def test_only_the_shortest_msgpack_form_of_each_header_is_accepted(
    frame: Frame, data: st.DataObject
) -> None:
    raw, widened = loose_pack(wire_list(frame), data.draw)
    assert msgpack.unpackb(raw, raw=False) == wire_list(frame)  # the same value to msgpack
    if not widened:
        assert raw == encode(frame)
        return
    with pytest.raises(ProtocolError, match="is not in its shortest form") as info:
        decode(raw)
    assert info.value.code == 400


# --- bounded work on adversarial input -----------------------------------------------------

ADVERSARIAL = {
    "nested-arrays": b"\x91" * MAX_FRAME_LEN,
    "maps": b"\x92\x09" + b"\x81" * (MAX_FRAME_LEN - 2),
    "entries-of-empty-arrays": b"\x92\x03\xdc\x27\x10" + b"\x90" * (MAX_FRAME_LEN - 5),
    "huge-declared-bin": b"\x92\x07\xc6\xff\xff\xff\xff" + bytes(MAX_FRAME_LEN - 7),
    "huge-declared-array": b"\xdd\xff\xff\xff\xff\x09" + bytes(MAX_FRAME_LEN - 6),
    "max-inventory-then-garbage": encode(
        Inventory(tuple(InventoryEntry("d" * 200, "l" * 200, bytes(8)) for _ in range(9_000)))
    )[: MAX_FRAME_LEN - 1]
    + b"\xc1",
}


@pytest.mark.parametrize("data", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_4_mib_input_is_refused_with_bounded_memory(data: bytes) -> None:
    assert len(data) <= MAX_FRAME_LEN
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the worst case builds up to 10,000 entries of two 256-byte ids; never more than that
    assert peak < 8 * 2**20


def test_the_largest_inventory_decodes_with_bounded_memory() -> None:
    entries = tuple(
        InventoryEntry(f"{i:0>200}", "l" * 200, bytes(8)) for i in range(MAX_INVENTORY_ENTRIES)
    )
    data = encode(Inventory(entries))
    tracemalloc.start()
    try:
        frame = decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame == Inventory(entries)
    assert peak < 12 * 2**20
