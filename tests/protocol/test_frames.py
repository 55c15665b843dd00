"""Frames against the golden vectors, the limits of SPEC §5.1 and the grammar text of SPEC §5.

The vectors are written by ``protocol/vectors/make_frame_vectors.py`` from its own table of the
grammar (it does not import hearthsync), so agreeing with them both ways is agreeing with a
second reading of the spec, byte for byte.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hearthsync.errors import ProtocolError, ValidationError
from hearthsync.protocol import (
    MAX_CERTIFICATE_LEN,
    MAX_ENVELOPE_LEN,
    MAX_FRAME_LEN,
    MAX_INVENTORY_ENTRIES,
    MAX_STATE_VECTOR_LEN,
    Ack,
    Auth,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Hello,
    Inventory,
    InventoryEntry,
    Ping,
    SyncDone,
    SyncStep1,
    Update,
    decode,
    encode,
    error_frame,
)
from hearthsync.protocol import frames as frames_module
from hearthsync.protocol.codec import Blob, Records, Text, Texts, Uint, pack, wire_fields
from hearthsync.protocol.frames import FRAME_CLASSES

ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = ROOT / "protocol" / "vectors"
VECTORS = json.loads((VECTORS_DIR / "frames.json").read_text(encoding="utf-8"))
BIN_FIELDS = {
    "certificate",
    "signature",
    "sv_hash",
    "state_vector",
    "envelope",
    "grant",
    "revocations",
}
CLASS_BY_NAME = {cls.TYPE.name: cls for cls in FRAME_CLASSES}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_frame_vectors", VECTORS_DIR / "make_frame_vectors.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def field_value(name: str, value: Any, frame_type: str) -> Any:
    if name == "entries":
        return tuple(
            InventoryEntry(e["doc_id"], e["lineage"], bytes.fromhex(e["sv_hash"])) for e in value
        )
    if name == "devices":
        return tuple(value)
    if name in BIN_FIELDS or (name == "nonce" and frame_type == "HELLO"):
        return bytes.fromhex(value)
    return value


def frame_of(vector: dict[str, Any]) -> Frame:
    kind = vector["type"]
    fields = {name: field_value(name, v, kind) for name, v in vector["fields"].items()}
    frame: Frame = CLASS_BY_NAME[kind](**fields)
    return frame


def by_name(vectors: list[dict[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("vector", vectors, ids=[v["name"] for v in vectors])


# --- golden vectors -------------------------------------------------------------------------


def test_vectors_file_is_exactly_what_the_generator_writes() -> None:
    generator = load_generator()
    assert (VECTORS_DIR / "frames.json").read_text(encoding="utf-8") == generator.render()
    assert generator.render() == generator.render()  # deterministic: no randomness, no clock


def test_every_frame_type_has_a_valid_vector_and_the_codes_are_covered() -> None:
    assert {v["type"] for v in VECTORS["valid"]} == {t.name for t in FrameType}
    assert {v["code"] for v in VECTORS["invalid"]} == {400, 413, 501}


@by_name(VECTORS["valid"])
def test_valid_vector_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    assert decode(bytes.fromhex(vector["frame"])) == frame_of(vector)


@by_name(VECTORS["valid"])
def test_valid_vector_encodes_to_its_bytes(vector: dict[str, Any]) -> None:
    assert encode(frame_of(vector)).hex() == vector["frame"]


@by_name(VECTORS["invalid"])
def test_invalid_vector_is_refused_with_its_code_and_field(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(bytes.fromhex(vector["frame"]))
    assert info.value.code == vector["code"]
    assert str(info.value).startswith(vector["where"] + ": ")


# --- limits (SPEC §5.1) ---------------------------------------------------------------------


def test_a_5_mib_frame_is_refused_before_a_byte_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(data: bytes) -> None:
        raise AssertionError("decode parsed an oversized frame")

    monkeypatch.setattr(frames_module, "Reader", no_parsing)
    with pytest.raises(
        ProtocolError, match=r"^frame: 5242880 bytes exceed the limit of 4194304$"
    ) as info:
        decode(b"\x92\x07\xc6" + bytes(5 * 2**20 - 3))
    assert info.value.code == 413


def entry_of_size(size: int) -> InventoryEntry:
    """An entry whose msgpack form is ``size`` bytes (15 to 529)."""

    def str_len(n: int) -> int:  # fixstr, str8 or str16 header plus payload
        return n + (1 if n < 32 else 2 if n < 256 else 3)

    for a in range(1, 257):
        for b in range(1, 257):
            if 1 + str_len(a) + str_len(b) + 10 == size:
                return InventoryEntry("d" * a, "l" * b, bytes(8))
    raise AssertionError(f"no entry of {size} bytes")


def inventory_of_exactly(size: int) -> Inventory:
    """An inventory whose frame is ``size`` bytes: 529-byte entries, then one or two to pad."""
    count, rest = divmod(size - 5, 529)  # 5: fixarray, type, array16 header
    pad = [entry_of_size(rest)] if rest >= 15 else [entry_of_size(15), entry_of_size(514 + rest)]
    full = entry_of_size(529)
    return Inventory((full,) * (count - (rest < 15)) + tuple(pad))


def test_a_frame_of_exactly_4_mib_passes_and_one_byte_more_does_not() -> None:
    data = encode(inventory_of_exactly(MAX_FRAME_LEN))
    assert len(data) == MAX_FRAME_LEN
    assert encode(decode(data)) == data
    bigger = inventory_of_exactly(MAX_FRAME_LEN + 1)
    with pytest.raises(ValidationError, match=r"^INVENTORY: 4194305 bytes exceed the limit"):
        encode(bigger)
    with pytest.raises(ProtocolError, match=r"^frame: 4194305 bytes") as info:
        decode(data + b"\x00")
    assert info.value.code == 413


def test_inventory_holds_10_000_entries_and_not_one_more() -> None:
    entries = tuple(InventoryEntry(f"d{i}", "g", bytes(8)) for i in range(MAX_INVENTORY_ENTRIES))
    assert decode(encode(Inventory(entries))) == Inventory(entries)
    with pytest.raises(ValidationError, match=r"^INVENTORY\.entries: 10001 entries exceed"):
        encode(Inventory((*entries, entries[0])))


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda n: Update(bytes(n)), MAX_ENVELOPE_LEN),
        (lambda n: Hello(1, 1, bytes(n), bytes(32)), MAX_CERTIFICATE_LEN),
        (lambda n: Ack("d", bytes(n)), MAX_STATE_VECTOR_LEN),
        (lambda n: SyncDone("x" * n), 256),
        (lambda n: Error(400, "é" * (n // 2) + "x" * (n % 2)), 256),
    ],
    ids=["envelope", "certificate", "state_vector", "doc_id", "message"],
)
def test_a_field_at_its_limit_passes_and_one_byte_more_is_413(make: Any, limit: int) -> None:
    frame = make(limit)
    assert decode(encode(frame)) == frame
    with pytest.raises(ValidationError, match="exceed the limit"):
        encode(make(limit + 1))
    with pytest.raises(ProtocolError, match="exceed the limit") as info:
        decode(unchecked_encode(make(limit + 1)))
    assert info.value.code == 413


def unchecked_encode(frame: Frame) -> bytes:
    """The bytes a sender that skips the checks would send (a peer we must survive)."""
    fields = [getattr(frame, name) for name, _ in wire_fields(type(frame))]
    return pack([int(frame.TYPE), *fields])


def test_limits_agree_with_the_crypto_layer() -> None:
    from hearthsync.crypto import certificate, envelope

    assert MAX_ENVELOPE_LEN == envelope.MAX_ENVELOPE_BYTES
    assert MAX_CERTIFICATE_LEN == certificate.MAX_CERTIFICATE_BYTES
    from hearthsync.crypto import keyring
    from hearthsync.protocol.frames import MAX_GRANT_LEN

    assert MAX_GRANT_LEN == keyring.MAX_GRANT_BYTES
    from hearthsync.protocol.frames import MAX_REVOCATIONS_LEN

    assert MAX_REVOCATIONS_LEN == certificate.MAX_REVOCATIONS_BYTES


# --- encode refuses frames that break the spec --------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Hello(1, 1, b"c", bytes(31)), "HELLO.nonce: expected exactly 32 bytes, got 31"),
        (Hello(-1, 1, b"c", bytes(32)), "HELLO.protocol: -1 is outside"),
        (Ping(True), "PING.nonce: expected int, got bool"),
        (Ping(2**64), "PING.nonce: 18446744073709551616 is outside"),
        (Auth(bytearray(64)), "AUTH.signature: expected bytes, got bytearray"),  # type: ignore[arg-type]
        (SyncDone(""), "SYNC_DONE.doc_id: must be 1+ visible ASCII"),
        (SyncDone("a b"), "SYNC_DONE.doc_id: must be 1+ visible ASCII"),
        (SyncStep1("d", "lin\u00e9age", b""), "SYNC_STEP1.lineage: must be 1+ visible ASCII"),
        (Error(400, "\ud800"), "ERROR.message: str is not encodable as UTF-8"),
        (Error(42, "x"), "ERROR.code: 42 is outside 100..999"),
        (Inventory([]), "INVENTORY.entries: expected tuple, got list"),  # type: ignore[arg-type]
        (Inventory((("d", "l", bytes(8)),)), "INVENTORY.entries[0]: expected InventoryEntry"),  # type: ignore[arg-type]
        (
            Inventory((InventoryEntry("d", "l", bytes(8)), InventoryEntry("d", "l", b""))),
            "INVENTORY.entries[1].sv_hash: expected exactly 8 bytes, got 0",
        ),
    ],
)
def test_encode_refuses_a_frame_that_breaks_the_spec(frame: Frame, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        encode(frame)
    assert str(info.value).startswith(message)
    assert info.value.field is not None


def test_encode_refuses_what_is_not_a_frame() -> None:
    with pytest.raises(ValidationError, match="not a frame: InventoryEntry"):
        encode(InventoryEntry("d", "l", bytes(8)))  # type: ignore[arg-type]


def test_enum_values_go_on_the_wire_as_numbers() -> None:
    assert encode(Error(ErrorCode.TOO_LARGE, "")) == bytes([0x93, 0x0B, 0xCD, 0x01, 0x9D, 0xA0])
    assert decode(encode(Error(ErrorCode.TOO_LARGE, ""))) == Error(413, "")


def test_frames_are_frozen_and_slotted() -> None:
    ping = Ping(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ping.nonce = 2  # type: ignore[misc]
    assert all("__slots__" in vars(cls) for cls in (*FRAME_CLASSES, InventoryEntry))
    assert not hasattr(ping, "__dict__")


# --- ERROR frames for protocol errors --------------------------------------------------------


def test_error_frame_reports_code_and_a_message_cut_on_a_character_boundary() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(SyncDone("d"))[:-2] + b"\xc3")
    frame = error_frame(info.value)
    assert frame == Error(400, "SYNC_DONE.doc_id: expected str, got bool")
    long = error_frame(ProtocolError("é" * 300, code=501))
    assert long == Error(501, "é" * 128)
    assert decode(encode(long)) == long
    assert error_frame(ProtocolError("odd", code=7)).code == ErrorCode.INTERNAL


# --- the spec text and the code agree --------------------------------------------------------

SPEC = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")
GRAMMAR_LINE = re.compile(r"^(\w+)\s+(?:\((\d+)\)\s+)?:= \[(.*?)\]\s*(?:;.*)?$", re.MULTILINE)


def spec_grammar() -> dict[str, tuple[int | None, list[tuple[str, str]]]]:
    section = SPEC[SPEC.index("## 5. Frames") : SPEC.index("### 5.1")]
    rules: dict[str, tuple[int | None, list[tuple[str, str]]]] = {}
    for name, number, body in GRAMMAR_LINE.findall(section):
        parts = [p.strip() for p in body.split(",")]
        if number:
            assert parts[0] == number
            parts = parts[1:]
        fields = [(f, k) for f, k in (p.split(":", 1) for p in parts if ":" in p)]
        rules[name] = (int(number) if number else None, fields)
    return rules


def wire_type(kind: object) -> str:
    if isinstance(kind, Uint):
        return "uint"
    if isinstance(kind, Text):
        return "id" if kind.ident else "str"
    if isinstance(kind, Records):
        return "[entry]"
    if isinstance(kind, Texts):
        return f"[{wire_type(kind.item)}]"
    assert isinstance(kind, Blob)
    return f"bin{kind.max_len}" if kind.min_len == kind.max_len else "bin"


def test_spec_grammar_matches_the_frame_classes_field_by_field() -> None:
    rules = spec_grammar()
    for cls in FRAME_CLASSES:
        number, fields = rules[cls.TYPE.name]
        assert number == cls.TYPE
        assert fields == [(name, wire_type(kind)) for name, kind in wire_fields(cls)]
    assert rules["entry"][1] == [(n, wire_type(k)) for n, k in wire_fields(InventoryEntry)]


def test_spec_limits_table_states_the_codes_limits() -> None:
    for number in ("4,194,304", "1,024", "10,000", "65,536", "2,098,176", "100 .. 999"):
        assert number in SPEC
    assert MAX_ENVELOPE_LEN == 2_098_176
    assert MAX_STATE_VECTOR_LEN == 65_536
    table = SPEC[SPEC.index("### 5.3") :]
    assert {int(c) for c in re.findall(r"^\| (\d{3}) \|", table, re.MULTILINE)} == set(ErrorCode)


# --- sans-I/O --------------------------------------------------------------------------------

FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "random",
    "secrets",
    "websockets",
    "aiosqlite",
    "zeroconf",
    "datetime",
    "os",
    "threading",
}


def test_the_protocol_package_imports_no_io_clock_or_randomness() -> None:
    package = ROOT / "src" / "hearthsync" / "protocol"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & FORBIDDEN, (path.name, names)
