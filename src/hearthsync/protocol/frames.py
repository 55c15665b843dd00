"""The frames two devices exchange, and their codec: ``encode(frame)`` and ``decode(data)``.

Rules the codec lives by (protocol/SPEC.md §1 and §5 are the authority; this file follows them):

1. One frozen, slotted dataclass per frame type.  Its annotated fields *are* the grammar of
   SPEC §5, in wire order (``nonce: Annotated[bytes, NONCE]`` reads ``nonce:bin32``), and the
   codec reads the wire shape from those annotations alone, so the spec table, the classes and
   the codec cannot disagree.  A frame on the wire is ``[type, *fields]``.
2. ``decode`` is strict and bounded before it works: the total size first (413), then for each
   value its msgpack family and declared length from the header, before its payload is copied
   (see ``codec``); then the exact arity of the frame type, no trailing bytes, and the value
   rules (ids of visible ASCII, ``uint`` ranges).  Every failure is a ``ProtocolError`` whose
   message names the frame type and field (``HELLO.nonce: expected exactly 32 bytes, got 31``)
   and whose ``code`` is 400 (malformed), 413 (a limit exceeded) or 501 (unknown frame type).
   Nothing else escapes: no msgpack, ``ValueError``, ``KeyError`` or ``TypeError``.
3. ``encode`` checks the same rules and writes canonical msgpack.  A frame that breaks them is the
   caller's bug: it raises ``ValidationError`` and nothing is sent.
4. Hence ``encode(decode(b)) == b`` for every ``b`` that decodes, and ``decode(encode(f)) == f``
   for every ``f`` that encodes.
5. Certificates and envelopes are opaque ``bytes`` here (SPEC §5), bounded by size only, so a relay
   can forward them byte for byte.  Meaning (versions, signatures, sessions) belongs to callers.
   No I/O, clock or randomness: this module is pure functions over immutable values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, ClassVar, cast

from hearthsync.errors import ProtocolError, ValidationError
from hearthsync.ids import DocId, LineageId
from hearthsync.protocol.codec import (
    UINT64_MAX,
    Blob,
    Invalid,
    Reader,
    Records,
    Text,
    Texts,
    Uint,
    check_len,
    pack,
    wire_fields,
)

KiB = 1024
MiB = 1024 * KiB

#: SPEC §1 and §5 limits.  A receiver refuses larger input before reading further.
MAX_FRAME_LEN = 4 * MiB
MAX_STR_LEN = 256
MAX_CERTIFICATE_LEN = 1 * KiB
#: a 2 MiB ciphertext plus the envelope's header, nonce and signature (SPEC §1; equal to
#: ``hearthsync.crypto.envelope.MAX_ENVELOPE_BYTES``, so the frame layer never refuses an envelope
#: the crypto layer would accept)
MAX_ENVELOPE_LEN = 2 * MiB + 1 * KiB
MAX_STATE_VECTOR_LEN = 64 * KiB
#: a key grant (SPEC §4); equal to ``hearthsync.crypto.keyring.MAX_GRANT_BYTES``
MAX_GRANT_LEN = 512
#: a revocation list (SPEC §3); equal to ``hearthsync.crypto.certificate.MAX_REVOCATIONS_BYTES``
MAX_REVOCATIONS_LEN = 64 * KiB
MAX_INVENTORY_ENTRIES = 10_000
MAX_NEIGHBOURS = 256  #: devices one NEIGHBOURS frame may name
NONCE_LEN = 32
SIGNATURE_LEN = 64
SV_HASH_LEN = 8


class FrameType(IntEnum):
    """The first element of every frame (SPEC §5)."""

    HELLO = 1
    AUTH = 2
    INVENTORY = 3
    SYNC_STEP1 = 4
    SYNC_STEP2 = 5
    SYNC_DONE = 6
    UPDATE = 7
    ACK = 8
    PING = 9
    PONG = 10
    ERROR = 11
    KEY_GRANT = 12
    REVOCATIONS = 13
    NEIGHBOURS = 14
    KEY_REQUEST = 15
    MATCHED = 16


class ErrorCode(IntEnum):
    """Codes carried by ``ERROR`` (SPEC §5.3); the frame codec itself raises 400, 413 and 501."""

    MALFORMED = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    STALE_KEYS = 409
    TOO_LARGE = 413
    UNSUPPORTED_VERSION = 426
    INTERNAL = 500
    UNKNOWN_TYPE = 501


# The wire types of SPEC §5, named as the grammar names them.
UINT = Uint()
ID = Text(MAX_STR_LEN, ident=True)
TEXT = Text(MAX_STR_LEN)
CODE = Uint(100, 999)
CERTIFICATE = Blob(1, MAX_CERTIFICATE_LEN)
ENVELOPE = Blob(1, MAX_ENVELOPE_LEN)
STATE_VECTOR = Blob(0, MAX_STATE_VECTOR_LEN)
NONCE = Blob(NONCE_LEN, NONCE_LEN)
SIGNATURE = Blob(SIGNATURE_LEN, SIGNATURE_LEN)
SV_HASH = Blob(SV_HASH_LEN, SV_HASH_LEN)
GRANT = Blob(1, MAX_GRANT_LEN)
REVOCATION_LIST = Blob(1, MAX_REVOCATIONS_LEN)
DEVICES = Texts(ID, MAX_NEIGHBOURS)


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each way: versions, this device's certificate, a fresh nonce to sign."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    protocol: Annotated[int, UINT]
    schema: Annotated[int, UINT]
    certificate: Annotated[bytes, CERTIFICATE]
    nonce: Annotated[bytes, NONCE]


@dataclass(frozen=True, slots=True)
class Auth:
    """Second frame each way: Ed25519 signature over both nonces and both device ids."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH
    signature: Annotated[bytes, SIGNATURE]


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    """One document of an inventory: ``sv_hash = BLAKE2b-8(state_vector)``."""

    doc_id: Annotated[DocId, ID]
    lineage: Annotated[LineageId, ID]
    sv_hash: Annotated[bytes, SV_HASH]


@dataclass(frozen=True, slots=True)
class Inventory:
    """The documents this side holds in scopes both sides may read (possibly none)."""

    TYPE: ClassVar[FrameType] = FrameType.INVENTORY
    entries: Annotated[tuple[InventoryEntry, ...], Records(InventoryEntry, MAX_INVENTORY_ENTRIES)]


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """Asks for what the sender's state vector lacks of one document."""

    TYPE: ClassVar[FrameType] = FrameType.SYNC_STEP1
    doc_id: Annotated[DocId, ID]
    lineage: Annotated[LineageId, ID]
    state_vector: Annotated[bytes, STATE_VECTOR]


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """Answers a ``SyncStep1``: one envelope holding exactly the missing delta."""

    TYPE: ClassVar[FrameType] = FrameType.SYNC_STEP2
    doc_id: Annotated[DocId, ID]
    envelope: Annotated[bytes, ENVELOPE]


@dataclass(frozen=True, slots=True)
class SyncDone:
    """The catch-up of one document is complete."""

    TYPE: ClassVar[FrameType] = FrameType.SYNC_DONE
    doc_id: Annotated[DocId, ID]


@dataclass(frozen=True, slots=True)
class Update:
    """A live update: one envelope, forwarded byte for byte."""

    TYPE: ClassVar[FrameType] = FrameType.UPDATE
    envelope: Annotated[bytes, ENVELOPE]


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's state vector of a document, once what it received is durable."""

    TYPE: ClassVar[FrameType] = FrameType.ACK
    doc_id: Annotated[DocId, ID]
    state_vector: Annotated[bytes, STATE_VECTOR]


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat; answered by a ``Pong`` carrying the same nonce."""

    TYPE: ClassVar[FrameType] = FrameType.PING
    nonce: Annotated[int, UINT]


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ``Ping``."""

    TYPE: ClassVar[FrameType] = FrameType.PONG
    nonce: Annotated[int, UINT]


@dataclass(frozen=True, slots=True)
class Error:
    """Last frame before the sender closes the connection (codes: ``ErrorCode``)."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: Annotated[int, CODE]
    message: Annotated[str, TEXT]


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """A key sealed to the receiving device by an owner or admin device (SPEC §4, §6.6)."""

    TYPE: ClassVar[FrameType] = FrameType.KEY_GRANT
    grant: Annotated[bytes, GRANT]


@dataclass(frozen=True, slots=True)
class RevocationList:
    """The household's signed revocation list (SPEC §3), gossiped to every device (§6.5)."""

    TYPE: ClassVar[FrameType] = FrameType.REVOCATIONS
    revocations: Annotated[bytes, REVOCATION_LIST]


@dataclass(frozen=True, slots=True)
class Neighbours:
    """The devices the sender has an open session with now (SPEC §6.4): a delta that came
    from one of them is not forwarded to the sender, which has it from there."""

    TYPE: ClassVar[FrameType] = FrameType.NEIGHBOURS
    devices: Annotated[tuple[str, ...], DEVICES]


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """The sender holds documents of ``scope`` (of ``user``; "" for the household's own) that
    it holds no key to seal: an owner or admin grants it that slot's keys again (SPEC §6.5)."""

    TYPE: ClassVar[FrameType] = FrameType.KEY_REQUEST
    scope: Annotated[str, ID]
    user: Annotated[str, TEXT]


@dataclass(frozen=True, slots=True)
class Matched:
    """The answer to an inventory offered again (SPEC §6.4): its entries the sender holds
    exactly as offered (same lineage, same digest), echoed.  Unlike an ``ACK``, which shows
    only the items the sender holds, a matched digest also proves its deletions and what it
    holds aside beyond a gap."""

    TYPE: ClassVar[FrameType] = FrameType.MATCHED
    entries: Annotated[tuple[InventoryEntry, ...], Records(InventoryEntry, MAX_INVENTORY_ENTRIES)]


Frame = (
    Hello
    | Auth
    | Inventory
    | SyncStep1
    | SyncStep2
    | SyncDone
    | Update
    | Ack
    | Ping
    | Pong
    | Error
    | KeyGrant
    | RevocationList
    | Neighbours
    | KeyRequest
    | Matched
)

FRAME_CLASSES: tuple[type[Any], ...] = (
    Hello, Auth, Inventory, SyncStep1, SyncStep2, SyncDone, Update, Ack, Ping, Pong, Error,
    KeyGrant, RevocationList, Neighbours, KeyRequest, Matched,
)  # fmt: skip
_BY_TYPE: dict[int, type[Any]] = {cls.TYPE: cls for cls in FRAME_CLASSES}


def encode(frame: Frame) -> bytes:
    """The canonical bytes of ``frame``, ready to send as one websocket binary message.

    Raises ``ValidationError`` (naming the field) if a field breaks SPEC §5: such a frame is a
    bug on this side and must not reach a peer.
    """
    cls = type(frame)
    if _BY_TYPE.get(getattr(cls, "TYPE", 0)) is not cls:
        raise ValidationError(f"not a frame: {cls.__name__}")
    try:
        data = pack([int(cls.TYPE), *_wire_values(frame)])
        check_len("", len(data), 0, MAX_FRAME_LEN)
    except Invalid as exc:
        raise ValidationError(exc.describe(cls.TYPE.name), field=exc.path or None) from None
    return data


def _wire_values(frame: Frame) -> list[object]:
    values = []
    for name, kind in wire_fields(type(frame)):
        value = getattr(frame, name)
        kind.check(value, name)
        values.append(kind.to_wire(value))
    return values


def decode(data: bytes) -> Frame:
    """The frame in ``data`` (one websocket binary message), checked against SPEC §5.

    Raises ``ProtocolError``: the caller then sends ``error_frame(exc)`` and closes the
    connection.  Input larger than ``MAX_FRAME_LEN`` is refused before a byte is parsed.
    """
    name = "frame"
    try:
        check_len("", len(data), 0, MAX_FRAME_LEN)
        reader = Reader(bytes(data))
        arity = reader.array("")
        if arity == 0:
            raise Invalid("", "empty array, no frame type")
        cls = _frame_class(reader.uint("type"))
        name = cls.TYPE.name
        fields = wire_fields(cls)
        check_len("", arity, 1 + len(fields), 1 + len(fields), "elements")
        values = [kind.read(reader, field) for field, kind in fields]
        reader.finish()
        for (field, kind), value in zip(fields, values, strict=True):
            kind.check(value, field)
    except Invalid as exc:
        raise ProtocolError(exc.describe(name), code=exc.code) from None
    return cast(Frame, cls(*values))


def _frame_class(frame_type: int) -> type[Any]:
    cls = _BY_TYPE.get(frame_type)
    if cls is None:
        raise Invalid("type", f"unknown frame type {frame_type}", code=ErrorCode.UNKNOWN_TYPE)
    return cls


def error_frame(exc: ProtocolError) -> Error:
    """The ``ERROR`` frame that reports ``exc`` to the peer (message cut to 256 UTF-8 bytes)."""
    code = exc.code if 100 <= exc.code <= 999 else ErrorCode.INTERNAL
    message = str(exc).encode("utf-8", "replace")[:MAX_STR_LEN].decode("utf-8", "ignore")
    return Error(code, message)


__all__ = [
    "MAX_CERTIFICATE_LEN",
    "MAX_ENVELOPE_LEN",
    "MAX_FRAME_LEN",
    "MAX_INVENTORY_ENTRIES",
    "MAX_NEIGHBOURS",
    "MAX_STATE_VECTOR_LEN",
    "MAX_STR_LEN",
    "NONCE_LEN",
    "SIGNATURE_LEN",
    "SV_HASH_LEN",
    "UINT64_MAX",
    "Ack",
    "Auth",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameType",
    "Hello",
    "Inventory",
    "InventoryEntry",
    "Matched",
    "Neighbours",
    "Ping",
    "Pong",
    "SyncDone",
    "SyncStep1",
    "SyncStep2",
    "Update",
    "decode",
    "encode",
    "error_frame",
]
