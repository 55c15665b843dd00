"""Write protocol/vectors/frames.json: golden frames of SPEC §5, valid and invalid.

Run ``python protocol/vectors/make_frame_vectors.py`` from the repository root.  The output is
deterministic (fixed byte patterns, no randomness, no clock), and the test suite checks that the
committed file is exactly what this script writes.

This script does not import hearthsync: it writes each frame from its own table of the grammar
with plain ``msgpack.packb`` (valid vectors) or by hand (invalid ones), so the vectors are a second
reading of SPEC §5, not a recording of the codec they test.

``valid``: ``type``, ``fields`` (bytes as lower-case hex, inventory entries as objects) and
``frame``, the exact bytes in hex.  A decoder must turn ``frame`` into ``fields`` and an encoder
``fields`` into ``frame``.
``invalid``: ``frame`` and the ``code`` a receiver reports (SPEC §5.3), with ``where``, the frame
type and field the hearthsync codec names in its message, and ``why``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import msgpack

OUTPUT = Path(__file__).with_name("frames.json")

#: SPEC §5: type number and field order of every frame.
GRAMMAR: dict[str, tuple[int, tuple[str, ...]]] = {
    "HELLO": (1, ("protocol", "schema", "certificate", "nonce")),
    "AUTH": (2, ("signature",)),
    "INVENTORY": (3, ("entries",)),
    "SYNC_STEP1": (4, ("doc_id", "lineage", "state_vector")),
    "SYNC_STEP2": (5, ("doc_id", "envelope")),
    "SYNC_DONE": (6, ("doc_id",)),
    "UPDATE": (7, ("envelope",)),
    "ACK": (8, ("doc_id", "state_vector")),
    "PING": (9, ("nonce",)),
    "PONG": (10, ("nonce",)),
    "ERROR": (11, ("code", "message")),
    "KEY_GRANT": (12, ("grant",)),
    "REVOCATIONS": (13, ("revocations",)),
    "NEIGHBOURS": (14, ("devices",)),
    "KEY_REQUEST": (15, ("scope", "user")),
    "MATCHED": (16, ("entries",)),
}
ENTRY_FIELDS = ("doc_id", "lineage", "sv_hash")
VISIBLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))  # the 94 characters ids may use


def pattern(n: int, seed: int) -> bytes:
    """``n`` fixed bytes that differ per ``seed`` (stand-ins for keys, signatures, envelopes)."""
    return bytes((seed + 37 * i + (i >> 8)) % 256 for i in range(n))


def long_id(n: int) -> str:
    return (VISIBLE_ASCII * (n // len(VISIBLE_ASCII) + 1))[:n]


def entry(doc_id: str, lineage: str, seed: int) -> dict[str, Any]:
    return {"doc_id": doc_id, "lineage": lineage, "sv_hash": pattern(8, seed)}


VALID: list[tuple[str, str, dict[str, Any]]] = [
    ("hello", "HELLO", {"protocol": 1, "schema": 1, "certificate": pattern(180, 1),
                        "nonce": pattern(32, 2)}),
    ("hello-limits", "HELLO", {"protocol": 2**64 - 1, "schema": 0,
                               "certificate": pattern(1024, 3), "nonce": bytes(32)}),
    ("hello-one-byte-certificate", "HELLO", {"protocol": 128, "schema": 65_536,
                                             "certificate": b"\x01", "nonce": b"\xff" * 32}),
    ("auth", "AUTH", {"signature": pattern(64, 4)}),
    ("inventory-empty", "INVENTORY", {"entries": []}),
    ("inventory", "INVENTORY", {"entries": [
        entry("home/kitchen/map", "g-3f2a9c0b1d4e5f60", 5),
        entry("user/alice/prefs", "g-0011223344556677", 6),
        entry("user/bob/events", "r-2026-03-09", 7),
    ]}),
    ("inventory-max-strings", "INVENTORY", {"entries": [
        entry(long_id(256), long_id(256)[::-1], 8),
        entry("!", "~", 9),
    ]}),
    ("sync-step1", "SYNC_STEP1", {"doc_id": "user/alice/prefs", "lineage": "g-0011223344556677",
                                  "state_vector": pattern(23, 10)}),
    ("sync-step1-empty-state-vector", "SYNC_STEP1", {"doc_id": "d", "lineage": "l",
                                                     "state_vector": b""}),
    ("sync-step1-bin16-state-vector", "SYNC_STEP1", {"doc_id": long_id(31), "lineage": long_id(32),
                                                     "state_vector": pattern(256, 11)}),
    ("sync-step2", "SYNC_STEP2", {"doc_id": "home/kitchen/map", "envelope": pattern(300, 12)}),
    ("sync-done", "SYNC_DONE", {"doc_id": "home/kitchen/map"}),
    ("sync-done-str16-id", "SYNC_DONE", {"doc_id": long_id(255) + "Z"}),
    ("update", "UPDATE", {"envelope": pattern(97, 13)}),
    ("update-one-byte", "UPDATE", {"envelope": b"\x00"}),
    ("ack", "ACK", {"doc_id": "user/alice/prefs", "state_vector": pattern(12, 14)}),
    ("ping-zero", "PING", {"nonce": 0}),
    ("ping-fixint-max", "PING", {"nonce": 127}),
    ("ping-uint8", "PING", {"nonce": 128}),
    ("ping-uint16", "PING", {"nonce": 65_535}),
    ("pong-uint32", "PONG", {"nonce": 2**32 - 1}),
    ("pong-uint64", "PONG", {"nonce": 2**32}),
    ("error", "ERROR", {"code": 400, "message": "HELLO.nonce: expected exactly 32 bytes, got 31"}),
    ("error-empty-message", "ERROR", {"code": 100, "message": ""}),
    ("error-max-message", "ERROR", {"code": 999, "message": "é" * 128}),
    ("key-grant", "KEY_GRANT", {"grant": pattern(200, 15)}),
    ("revocations", "REVOCATIONS", {"revocations": pattern(150, 16)}),
    ("neighbours-none", "NEIGHBOURS", {"devices": []}),
    ("neighbours", "NEIGHBOURS", {"devices": ["d-3f2a9c0b1d4e5f60", "d-0011223344556677"]}),
    ("key-request", "KEY_REQUEST", {"scope": "health", "user": "carol"}),
    ("key-request-household", "KEY_REQUEST", {"scope": "spatial", "user": ""}),
    ("matched", "MATCHED", {"entries": [entry("user/alice/prefs", "g-0011223344556677", 17)]}),
]  # fmt: skip


def wire(frame_type: str, fields: dict[str, Any]) -> list[Any]:
    number, order = GRAMMAR[frame_type]
    values = [fields[name] for name in order]
    if frame_type in ("INVENTORY", "MATCHED"):
        values = [[[e[name] for name in ENTRY_FIELDS] for e in fields["entries"]]]
    return [number, *values]


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def invalid() -> list[tuple[str, bytes, int, str, str]]:
    """(name, frame, code, where, why): each breaks exactly one rule of SPEC §1/§5."""
    hello = [1, 1, 1, b"c", bytes(32)]
    return [
        ("empty", b"", 400, "frame", "no bytes at all"),
        ("empty-array", b"\x90", 400, "frame", "no frame type"),
        ("top-level-map", packb({"type": 9}), 400, "frame", "maps are never valid"),
        ("top-level-uint", b"\x09", 400, "frame", "a frame is an array"),
        ("type-zero", packb([0]), 501, "frame.type", "unknown frame type"),
        ("type-seventeen", packb([17, 1]), 501, "frame.type", "unknown frame type"),
        ("type-uint64-max", packb([2**64 - 1]), 501, "frame.type", "unknown frame type"),
        ("type-as-bool", b"\x92\xc3\x00", 400, "frame.type", "bool is not a uint"),
        ("type-as-str", packb(["PING", 1]), 400, "frame.type", "str is not a uint"),
        ("ping-short", packb([9]), 400, "PING", "arity 1, expected 2"),
        ("ping-long", packb([9, 1, 2]), 400, "PING", "arity 3, expected 2"),
        ("ping-trailing-byte", packb([9, 1]) + b"\x00", 400, "PING", "bytes after the frame"),
        ("ping-uint8-for-5", b"\x92\x09\xcc\x05", 400, "PING.nonce", "not the shortest form"),
        ("ping-uint64-for-2**32-1", b"\x92\x09\xcf" + struct.pack(">Q", 2**32 - 1), 400,
         "PING.nonce", "not the shortest form"),
        ("ping-array16-header", b"\xdc\x00\x02\x09\x01", 400, "frame", "not the shortest form"),
        ("ping-negative", packb([9, -1]), 400, "PING.nonce", "negative int is not a uint"),
        ("ping-float", packb([9, 1.0]), 400, "PING.nonce", "float is not a uint"),
        ("ping-nil", packb([9, None]), 400, "PING.nonce", "nil is not a uint"),
        ("ping-bool", packb([9, True]), 400, "PING.nonce", "bool is not a uint"),
        ("ping-ext", b"\x92\x09\xd4\x01\x00", 400, "PING.nonce", "ext is never valid"),
        ("ping-reserved-byte", b"\x92\x09\xc1", 400, "PING.nonce", "0xc1 is never used"),
        ("ping-nested-arrays", b"\x92\x09" + b"\x91" * 64 + b"\x00", 400, "PING.nonce",
         "an array where a uint belongs; nothing nested is read"),
        ("hello-truncated", packb(hello)[:-1], 400, "HELLO.nonce", "payload cut short"),
        ("hello-nonce-31", packb([1, 1, 1, b"c", bytes(31)]), 400, "HELLO.nonce", "nonce is 32"),
        ("hello-nonce-as-str", packb([1, 1, 1, b"c", "0" * 32]), 400, "HELLO.nonce",
         "str is not bin"),
        ("hello-empty-certificate", packb([1, 1, 1, b"", bytes(32)]), 400, "HELLO.certificate",
         "a certificate has at least one byte"),
        ("hello-certificate-1025", packb([1, 1, 1, bytes(1025), bytes(32)]), 413,
         "HELLO.certificate", "certificate over 1 KiB"),
        ("auth-signature-65", packb([2, bytes(65)]), 400, "AUTH.signature", "signature is 64"),
        ("sync-done-bin-id", packb([6, b"doc"]), 400, "SYNC_DONE.doc_id", "bin is not str"),
        ("sync-done-empty-id", packb([6, ""]), 400, "SYNC_DONE.doc_id", "ids are not empty"),
        ("sync-done-space-in-id", packb([6, "a b"]), 400, "SYNC_DONE.doc_id", "space"),
        ("sync-done-non-ascii-id", packb([6, "caf\u00e9"]), 400, "SYNC_DONE.doc_id", "non-ASCII"),
        ("sync-done-id-257", packb([6, "a" * 257]), 413, "SYNC_DONE.doc_id", "id over 256"),
        ("sync-done-str8-for-short-id", b"\x92\x06\xd9\x01a", 400, "SYNC_DONE.doc_id",
         "not the shortest form"),
        ("error-invalid-utf8", b"\x93\x0b\xcd\x01\x90\xa2\xc3\x28", 400, "ERROR.message",
         "str must be UTF-8"),
        ("error-surrogate-utf8", b"\x93\x0b\xcd\x01\x90\xa3\xed\xa0\x80", 400, "ERROR.message",
         "UTF-8 never encodes surrogates"),
        ("error-message-257", packb([11, 400, "x" * 257]), 413, "ERROR.message", "over 256"),
        ("error-code-99", packb([11, 99, "x"]), 400, "ERROR.code", "codes are 100-999"),
        ("error-code-1000", packb([11, 1000, "x"]), 400, "ERROR.code", "codes are 100-999"),
        ("inventory-10001-declared", b"\x92\x03\xdc" + struct.pack(">H", 10_001), 413,
         "INVENTORY.entries", "over 10,000 entries, refused from the header"),
        ("inventory-as-map", b"\x92\x03\x80", 400, "INVENTORY.entries", "maps are never valid"),
        ("inventory-entry-arity-2", packb([3, [["d", "l"]]]), 400, "INVENTORY.entries[0]",
         "an entry has 3 elements"),
        ("inventory-sv-hash-9", packb([3, [["d", "l", bytes(9)]]]), 400,
         "INVENTORY.entries[0].sv_hash", "sv_hash is 8 bytes"),
        ("sync-step1-state-vector-65537-declared",
         b"\x94\x04\xa1d\xa1l\xc6" + struct.pack(">I", 65_537), 413, "SYNC_STEP1.state_vector",
         "over 64 KiB, refused from the header"),
        ("update-envelope-3MiB-declared", b"\x92\x07\xc6" + struct.pack(">I", 3 * 2**20), 413,
         "UPDATE.envelope", "over 2 MiB + 1 KiB, refused from the header"),
        ("update-empty-envelope", packb([7, b""]), 400, "UPDATE.envelope", "an envelope is bytes"),
        ("neighbours-257-declared", b"\x92\x0e\xdc" + struct.pack(">H", 257), 413,
         "NEIGHBOURS.devices", "over 256 devices, refused from the header"),
        ("neighbours-empty-id", packb([14, [""]]), 400, "NEIGHBOURS.devices[0]",
         "ids are not empty"),
        ("neighbours-bin-id", packb([14, [b"d"]]), 400, "NEIGHBOURS.devices[0]",
         "bin is not str"),
        ("key-request-empty-scope", packb([15, "", "carol"]), 400, "KEY_REQUEST.scope",
         "a scope is an id, not empty"),
        ("key-request-no-user", packb([15, "core"]), 400, "KEY_REQUEST",
         "two fields"),
    ]  # fmt: skip


def build() -> dict[str, Any]:
    valid = [
        {"name": name, "type": kind, "fields": to_json(fields),
         "frame": packb(wire(kind, fields)).hex()}
        for name, kind, fields in VALID
    ]  # fmt: skip
    bad = [
        {"name": name, "frame": frame.hex(), "code": code, "where": where, "why": why}
        for name, frame, code, where, why in invalid()
    ]
    return {
        "spec": "protocol/SPEC.md §5 (frames), hearthsync wire protocol version 1",
        "generator": "protocol/vectors/make_frame_vectors.py",
        "valid": valid,
        "invalid": bad,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
