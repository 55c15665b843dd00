"""Yrs v1 updates, read as far as clocks go: which client's structs an update holds, in which
runs of clocks, and the same update cut short at a state vector.

Yrs 0.28 integrates an item beyond a gap in its author's clock (client 5's clock 7 while
clock 6 is missing) as soon as the item's origins are present, shows it, yet leaves it out of
the state vector; what two replicas then show depends on the order their updates came in (found
by the chaos harness).  `hearthsync.crdt.replica` keeps such content out of its documents until
the gap fills, and needs, to do so, what Yrs does not expose: where each run of an update's
structs starts and ends (`runs`), and a document's encoding without what lies beyond its state
vector (`truncate`).

The format (lib0 encoding, as Yjs and Yrs write it)::

    update  = varuint(clients) { varuint(structs) varuint(client) varuint(clock) struct* }*
              delete_set
    struct  = info:u8 ... (GC and Skip: varuint(length); an item: origins, parent, content)

Only the sizes of structs are read; their content is copied as it is.  Anything else raises
`UpdateFormatError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hearthsync.crdt.statevector import StateVector


class UpdateFormatError(ValueError):
    """The bytes are not a Yrs v1 update this module can read."""


_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_NAMED_TYPES = {3, 5}  #: XmlElement and XmlHook carry a name after their type ref
_FLOAT32, _FLOAT64, _BIGINT = 124, 123, 122


@dataclass(frozen=True, slots=True)
class Run:
    """``count`` structs of one client with no gap between them: clocks ``start`` to ``end``
    (exclusive), encoded at ``[first:last]`` of the update they were read from."""

    client: int
    start: int
    end: int
    first: int
    last: int
    count: int


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self) -> int:
        data, pos = self.data, self.pos
        value = shift = 0
        while True:
            if pos >= len(data):
                raise UpdateFormatError("update ends in the middle of a number")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7
            if shift > 70:
                raise UpdateFormatError("number longer than 64 bits")

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise UpdateFormatError("update ends in the middle of a value")
        self.pos += n

    def string(self) -> bytes:
        n = self.varuint()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos]

    def varint(self) -> None:
        while True:
            self.skip(1)
            if self.data[self.pos - 1] < 0x80:
                return

    def any(self, depth: int = 0) -> None:
        if depth > 64:
            raise UpdateFormatError("value nested too deeply")
        self.skip(1)
        tag = self.data[self.pos - 1]
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:
            self.varint()
        elif tag == _FLOAT32:
            self.skip(4)
        elif tag in (_FLOAT64, _BIGINT):
            self.skip(8)
        elif tag in (119, 116):  # string, bytes
            self.string()
        elif tag == 118:  # object
            for _ in range(self.varuint()):
                self.string()
                self.any(depth + 1)
        elif tag == 117:  # array
            for _ in range(self.varuint()):
                self.any(depth + 1)
        else:
            raise UpdateFormatError(f"unknown value tag {tag}")

    def struct(self) -> tuple[int, bool]:
        """Read one struct; return its length in clocks and whether it is a Skip (a gap)."""
        self.skip(1)
        info = self.data[self.pos - 1]
        ref = info & 0x1F
        if ref in (_GC, _SKIP):
            return self.varuint(), ref == _SKIP
        if info & 0x80:  # origin
            self.varuint()
            self.varuint()
        if info & 0x40:  # right origin
            self.varuint()
            self.varuint()
        if not info & 0xC0:  # no origin: the parent is written out
            if self.varuint():
                self.string()  # a root type, by name
            else:
                self.varuint()
                self.varuint()
            if info & 0x20:
                self.string()  # the map key
        if ref == _DELETED:
            return self.varuint(), False
        if ref == _JSON:
            count = self.varuint()
            for _ in range(count):
                self.string()
            return count, False
        if ref == _ANY:
            count = self.varuint()
            for _ in range(count):
                self.any()
            return count, False
        if ref == _STRING:  # Yjs counts a string's clocks in UTF-16 code units
            return len(self.string().decode("utf-8").encode("utf-16-le")) // 2, False
        if ref in (_BINARY, _EMBED):
            self.string()
        elif ref == _FORMAT:
            self.string()
            self.string()
        elif ref == _TYPE:
            if self.varuint() in _NAMED_TYPES:
                self.string()
        elif ref == _DOC:
            self.string()
            self.any()
        else:
            raise UpdateFormatError(f"unknown content kind {ref}")
        return 1, False


def runs(update: bytes) -> tuple[list[Run], bytes]:
    """The runs of structs ``update`` holds (a Skip ends one), and its delete set's bytes."""
    reader = _Reader(update)
    found: list[Run] = []
    for _ in range(reader.varuint()):
        count = reader.varuint()
        client = reader.varuint()
        clock = reader.varuint()
        start, first, n = clock, reader.pos, 0
        for _ in range(count):
            at = reader.pos
            length, is_skip = reader.struct()
            if is_skip:
                if clock > start:
                    found.append(Run(client, start, clock, first, at, n))
                start, first, n = clock + length, reader.pos, -1
            clock += length
            n += 1
        if clock > start:
            found.append(Run(client, start, clock, first, reader.pos, n))
    return found, update[reader.pos :]


def _varuint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode(update: bytes, parts: list[Run], delete_set: bytes) -> bytes:
    """An update holding ``parts`` (runs read from ``update``, whole) and ``delete_set``."""
    out = bytearray()
    _varuint(len(parts), out)
    for run in parts:
        _varuint(run.count, out)
        _varuint(run.client, out)
        _varuint(run.start, out)
        out += update[run.first : run.last]
    out += delete_set
    return bytes(out)


def truncate(update: bytes, state: StateVector) -> bytes:
    """``update`` without the runs that lie beyond ``state`` (those that do not start before
    what it has seen of their client), delete set kept whole.  The runs kept are kept whole: a
    document's own runs end where its state vector does."""
    found, delete_set = runs(update)
    return encode(update, [r for r in found if r.start < state.get(r.client, 0)], delete_set)
