"""Yrs state vectors: decoding, canonical form, comparison.

A state vector is ``varuint(n) • n * (varuint(client) • varuint(clock))`` (lib0 encoding).
Yrs writes the pairs in hash-map order, so two replicas that have seen exactly the same
operations can encode different bytes: compare decoded vectors, and hash only the canonical
encoding (pairs sorted by client id), as the sync inventory does (protocol/SPEC.md §5).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

from hearthsync.errors import RemoteError

MAX_ENTRIES = 4_096  #: clients one document may have seen; more is not a real document
#: Yrs counts an author's structs in a u32: a greater clock is no document's
MAX_CLOCK = 2**32 - 1
#: the greatest client id Yrs draws (a JavaScript safe integer, so that Yjs reads it exactly);
#: hearthsync's own replicas stay below 2**32 (`hearthsync.crdt.replica.MAX_CLIENT_ID`)
MAX_CLIENT = 2**53 - 1
#: vectors of at most this many bytes are remembered once decoded (`decode`, `canonical`): a
#: household's documents have a few client ids each, about 10 bytes apiece.  Larger ones (up to
#: the 64 KiB a frame may carry) are decoded every time: a peer sending distinct ones made the
#: cache of 16,384 vectors hold 0.4 MB each, 7 GB in all
CACHED_BYTES = 256

StateVector = Mapping[int, int]  #: read-only: decoded vectors may be shared (`decode` caches)


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise RemoteError("state vector ends in the middle of a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise RemoteError("state vector number longer than 64 bits")


def write_varuint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode(data: bytes) -> StateVector:
    """``{client id: clock}`` (read-only); raises `RemoteError` for anything that is not a
    state vector, and for a client id or clock no Yrs document can hold (`MAX_CLIENT`,
    `MAX_CLOCK`).  Small vectors are remembered (`CACHED_BYTES`)."""
    if len(data) <= CACHED_BYTES:
        return _decode_small(data)
    return _decode(data)


#: at most 4,096 vectors of `CACHED_BYTES`, each under 5 KB decoded: 20 MB at worst
@functools.lru_cache(maxsize=4_096)  # the same vectors come back in every ACK and inventory
def _decode_small(data: bytes) -> StateVector:
    return _decode(data)


def _decode(data: bytes) -> StateVector:
    count, pos = _read_varuint(data, 0)
    if count > MAX_ENTRIES:
        raise RemoteError(f"state vector claims {count} clients")
    vector: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        if client > MAX_CLIENT:
            raise RemoteError(f"state vector client id {client} is over {MAX_CLIENT}")
        if clock > MAX_CLOCK:
            raise RemoteError(f"state vector clock {clock} of client {client} is over {MAX_CLOCK}")
        vector[client] = clock
    if pos != len(data):
        raise RemoteError("state vector has trailing bytes")
    return MappingProxyType(vector)


def encode(vector: StateVector) -> bytes:
    """The canonical encoding: entries sorted by client id."""
    out = bytearray()
    write_varuint(len(vector), out)
    for client in sorted(vector):
        write_varuint(client, out)
        write_varuint(vector[client], out)
    return bytes(out)


def canonical(data: bytes) -> bytes:
    """``data`` re-encoded canonically (`encode`); small vectors are remembered."""
    if len(data) <= CACHED_BYTES:
        return _canonical_small(data)
    return encode(decode(data))


@functools.lru_cache(maxsize=16_384)  # asked for on every inventory and acknowledgement
def _canonical_small(data: bytes) -> bytes:
    return encode(decode(data))


def joined(mine: StateVector, theirs: StateVector) -> StateVector:
    """What has seen everything either has: the greater clock of each client."""
    if covers(mine, theirs):
        return mine
    out = dict(mine)
    for client, clock in theirs.items():
        if clock > out.get(client, 0):
            out[client] = clock
    return MappingProxyType(out)


def covers(mine: StateVector, theirs: StateVector) -> bool:
    """True when ``mine`` has seen everything ``theirs`` has."""
    return all(mine.get(client, 0) >= clock for client, clock in theirs.items())


def canonical_delete_set(update: bytes) -> bytes:
    """The delete set of ``update``, an update holding no structs (what
    ``Doc.get_update(own state vector)`` returns), in canonical form: clients sorted, each
    client's deleted ranges sorted and joined.  Yrs writes clients in hash-map order and may
    split a range where another replica joined it.

    Raises `RemoteError` if ``update`` holds structs or is not an update.
    """
    structs, pos = _read_varuint(update, 0)
    if structs:
        raise RemoteError("not a delete set: the update holds structs")
    return canonical_ranges(delete_ranges(update[pos:]))


def canonical_ranges(ranges: Mapping[int, list[tuple[int, int]]]) -> bytes:
    """``ranges`` as a canonical delete set: clients sorted, each client's ranges sorted and
    joined where they touch or overlap."""
    joined: dict[int, list[tuple[int, int]]] = {}
    for client in sorted(ranges):
        spans = joined[client] = []
        for start, end in sorted(ranges[client]):
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
    return encode_delete_set(joined)


def encode_delete_set(ranges: Mapping[int, list[tuple[int, int]]]) -> bytes:
    """A delete set (what follows an update's structs) of ``ranges``, in their order."""
    out = bytearray()
    write_varuint(len(ranges), out)
    for client, spans in ranges.items():
        write_varuint(client, out)
        write_varuint(len(spans), out)
        for start, end in spans:
            write_varuint(start, out)
            write_varuint(end - start, out)
    return bytes(out)


def delete_ranges(delete_set: bytes) -> dict[int, list[tuple[int, int]]]:
    """The clock ranges ``[start, end)`` a delete set (an update's bytes after its structs)
    deletes, per client, as written.  Raises `RemoteError` for anything else."""
    count, pos = _read_varuint(delete_set, 0)
    ranges: dict[int, list[tuple[int, int]]] = {}
    for _ in range(count):
        client, pos = _read_varuint(delete_set, pos)
        n, pos = _read_varuint(delete_set, pos)
        spans = ranges.setdefault(client, [])
        for _ in range(n):
            clock, pos = _read_varuint(delete_set, pos)
            length, pos = _read_varuint(delete_set, pos)
            spans.append((clock, clock + length))
    if pos != len(delete_set):
        raise RemoteError("delete set has trailing bytes")
    return ranges
