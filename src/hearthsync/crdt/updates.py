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
from itertools import pairwise

from hearthsync.crdt.statevector import (
    StateVector,
    canonical_delete_set,
    delete_ranges,
    encode_delete_set,
    write_varuint,
)
from hearthsync.errors import RemoteError


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


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at ``pos``: its value and the position after it."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 70:
            raise UpdateFormatError("number longer than 64 bits")


def _past_uint(data: bytes, pos: int) -> int:
    while data[pos] >= 0x80:
        pos += 1
    return pos + 1


def _past_string(data: bytes, pos: int) -> int:
    n, pos = _uint(data, pos)
    pos += n
    if pos > len(data):
        raise UpdateFormatError("update ends in the middle of a value")
    return pos


def _past_any(data: bytes, pos: int, depth: int = 0) -> int:
    if depth > 64:
        raise UpdateFormatError("value nested too deeply")
    tag = data[pos]
    pos += 1
    if tag in (119, 116):  # string, bytes
        return _past_string(data, pos)
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # varint: the sign is a bit of the first byte
        return _past_uint(data, pos)
    if tag == _FLOAT32:
        return pos + 4
    if tag in (_FLOAT64, _BIGINT):
        return pos + 8
    if tag == 118:  # object
        n, pos = _uint(data, pos)
        for _ in range(n):
            pos = _past_any(data, _past_string(data, pos), depth + 1)
        return pos
    if tag == 117:  # array
        n, pos = _uint(data, pos)
        for _ in range(n):
            pos = _past_any(data, pos, depth + 1)
        return pos
    raise UpdateFormatError(f"unknown value tag {tag}")


def _struct(data: bytes, pos: int) -> tuple[int, bool, int]:
    """The struct at ``pos``: its length in clocks, whether it is a Skip (a gap), and the
    position after it."""
    info = data[pos]
    pos += 1
    ref = info & 0x1F
    if ref in (_GC, _SKIP):
        length, pos = _uint(data, pos)
        if not length:  # Yrs 0.28 panics dividing by a GC's (an item may be empty: "")
            raise UpdateFormatError("a GC or Skip struct of no length")
        return length, ref == _SKIP, pos
    if info & 0x80:  # origin
        pos = _past_uint(data, _past_uint(data, pos))
    if info & 0x40:  # right origin
        pos = _past_uint(data, _past_uint(data, pos))
    if not info & 0xC0:  # no origin: the parent is written out
        named, pos = _uint(data, pos)
        pos = _past_string(data, pos) if named else _past_uint(data, _past_uint(data, pos))
        if info & 0x20:
            pos = _past_string(data, pos)  # the map key
    if ref == _ANY:
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _past_any(data, pos)
        return count, False, pos
    if ref == _DELETED:
        length, pos = _uint(data, pos)
        return length, False, pos
    if ref == _JSON:
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _past_string(data, pos)
        return count, False, pos
    if ref == _STRING:  # Yjs counts a string's clocks in UTF-16 code units
        _, start = _uint(data, pos)
        pos = _past_string(data, pos)
        text = data[start:pos].decode("utf-8", errors="surrogatepass")
        return len(text.encode("utf-16-le", errors="surrogatepass")) // 2, False, pos
    if ref in (_BINARY, _EMBED):
        pos = _past_string(data, pos)
    elif ref == _FORMAT:
        pos = _past_string(data, _past_string(data, pos))
    elif ref == _TYPE:
        kind, pos = _uint(data, pos)
        if kind in _NAMED_TYPES:
            pos = _past_string(data, pos)
    elif ref == _DOC:
        pos = _past_any(data, _past_string(data, pos))
    else:
        raise UpdateFormatError(f"unknown content kind {ref}")
    return 1, False, pos


def runs(update: bytes) -> tuple[list[Run], bytes]:
    """The runs of structs ``update`` holds (a Skip ends one), and its delete set's bytes.

    Raises `UpdateFormatError` for bytes no Yrs writes, though Yrs may read them: a GC struct
    of no length (Yrs 0.28 panics dividing by it), a value nested deeper than any record, bytes
    after the delete set (Yrs ignores them), and a delete set `deletes_nothing` would misjudge
    (a number written longer than it need be, a last client or range deleting nothing)."""
    try:
        return _runs(update)
    except IndexError:
        raise UpdateFormatError("update ends in the middle of a value") from None
    except UnicodeDecodeError:
        raise UpdateFormatError("a string is not UTF-8") from None


def reach(update: bytes) -> dict[int, int]:
    """``{client id: clock}``: how far each author's content in ``update`` reaches, gaps
    before it or not (`pycrdt.get_state` counts only what follows on from clock 0)."""
    found: dict[int, int] = {}
    for run in runs(update)[0]:
        if run.end > found.get(run.client, 0):
            found[run.client] = run.end
    return found


def origins(update: bytes, run: Run) -> list[tuple[int, tuple[int, int]]]:
    """The structs of ``run`` (read from ``update``) inserted after another item, as
    ``(clock, origin id)``: for a map entry, the origin is the entry it overwrote."""
    out: list[tuple[int, tuple[int, int]]] = []
    pos, clock = run.first, run.start
    try:
        while pos < run.last:
            info = update[pos]
            if info & 0x80 and info & 0x1F not in (_GC, _SKIP):
                client, at = _uint(update, pos + 1)
                out.append((clock, (client, _uint(update, at)[0])))
            length, _, pos = _struct(update, pos)
            clock += length
    except IndexError:
        raise UpdateFormatError("update ends in the middle of a value") from None
    return out


def without(delete_set: bytes, ids: set[tuple[int, int]]) -> bytes:
    """``delete_set`` (an update's bytes after its structs) without the deletion of ``ids``."""
    ranges = deleted_ranges(delete_set)
    for client, clock in ids:
        kept: list[tuple[int, int]] = []
        for start, end in ranges.get(client, ()):
            if start <= clock < end:
                kept += [(a, b) for a, b in ((start, clock), (clock + 1, end)) if a < b]
            else:
                kept.append((start, end))
        if kept:
            ranges[client] = kept
        else:
            ranges.pop(client, None)
    return delete_set_of(ranges)[1:]


def deletes_nothing(update: bytes) -> bool:
    """Whether ``update`` deletes nothing, told from its last byte: an empty delete set is a
    zero count, and a non-empty one ends with a range's length, whose last byte is never 0.
    True of every update Yrs writes, and of every update `runs` reads (a replica reads each
    it is sent before it takes it): ``81 00``, 1 written in two bytes, would end in 0."""
    return update[-1:] == b"\x00"


def deleted_ranges(delete_set: bytes) -> dict[int, list[tuple[int, int]]]:
    """The clock ranges ``[start, end)`` a delete set (an update's bytes after its structs)
    deletes, per client."""
    try:
        return delete_ranges(delete_set)
    except RemoteError as exc:
        raise UpdateFormatError(str(exc)) from None


def delete_set_of(ranges: dict[int, list[tuple[int, int]]]) -> bytes:
    """An update holding no structs and the deletions ``ranges`` (`deleted_ranges`)."""
    return b"\x00" + encode_delete_set(ranges)


def deletions(update: bytes) -> bytes:
    """The canonical delete set of ``update`` (`statevector.canonical_delete_set`), whether
    or not it holds structs: ``Doc.get_update(own state vector)`` holds none today, but a Yrs
    that put pending structs there must not make a replica's own digest fail."""
    if update[:1] != b"\x00":
        update = b"\x00" + runs(update)[1]
    return canonical_delete_set(update)


def _runs(data: bytes) -> tuple[list[Run], bytes]:
    found: list[Run] = []
    clients, pos = _uint(data, 0)
    for _ in range(clients):
        count, pos = _uint(data, pos)
        client, pos = _uint(data, pos)
        clock, pos = _uint(data, pos)
        start, first, n = clock, pos, 0
        for _ in range(count):
            at = pos
            # The struct the documents are made of, an item holding one string (a map
            # entry's record, a list's element), read here as `_struct` would read it, with
            # no call per number: every remote update is read whole before Yrs sees it
            # (`hearthsync.crdt.replica`), and this took a 10,000-edit catch-up's read from
            # 11 ms to 5.  Anything else, or written otherwise, `_struct` reads.
            info = data[pos]
            if info & 0x1F == _ANY:
                pos += 1
                # its origin and right origin, if it has them: an id each, two varuints
                for _ in range(2 * ((info >> 7) + (info >> 6 & 1))):
                    while data[pos] & 0x80:
                        pos += 1
                    pos += 1
                inline = True
                if not info & 0xC0:  # the parent: here, a root type named in one byte
                    if data[pos] == 1 and not data[pos + 1] & 0x80:
                        pos += 2 + data[pos + 1]
                        if info & 0x20:  # the map key, its length in one byte
                            if data[pos] & 0x80:
                                inline = False
                            else:
                                pos += 1 + data[pos]
                    else:
                        inline = False
                if inline and data[pos] == 1 and data[pos + 1] == 119:  # one string value
                    size = data[pos + 2]
                    if not size & 0x80:
                        pos += 3 + size
                        clock += 1
                        n += 1
                        continue
                    if not data[pos + 3] & 0x80:  # its length in two bytes
                        pos += 4 + (size & 0x7F | data[pos + 3] << 7)
                        clock += 1
                        n += 1
                        continue
                pos = at
            length, is_skip, pos = _struct(data, pos)
            if is_skip:
                if clock > start:
                    found.append(Run(client, start, clock, first, at, n))
                start, first, n = clock + length, pos, -1
            clock += length
            n += 1
        if clock > start:
            found.append(Run(client, start, clock, first, pos, n))
    if pos > len(data):
        raise UpdateFormatError("update ends in the middle of a value")
    delete_set = data[pos:]
    _check_delete_set(delete_set)
    return found, delete_set


def _check_delete_set(delete_set: bytes) -> None:
    """`UpdateFormatError` unless ``delete_set`` is written as Yrs writes it, every number in
    its shortest form, and `deletes_nothing` tells rightly whether it deletes anything."""
    ranges = deleted_ranges(delete_set)  # nothing after it
    if encode_delete_set(ranges) != delete_set:  # (or a client named twice)
        raise UpdateFormatError("the delete set is not written in its shortest form")
    deletes = any(end > start for spans in ranges.values() for start, end in spans)
    if deletes == (delete_set[-1:] == b"\x00"):
        raise UpdateFormatError("the delete set ends in a client or range deleting nothing")


def encode(update: bytes, parts: list[Run], delete_set: bytes) -> bytes:
    """An update holding ``parts`` (runs read from ``update``, whole) and ``delete_set``.

    The runs of one client go in one section, a Skip struct over each gap between them: Yrs
    panics on an update that names a client twice (a merged update can hold two runs of one
    client, with a gap between them)."""
    by_client: dict[int, list[Run]] = {}
    for run in parts:
        by_client.setdefault(run.client, []).append(run)
    out = bytearray()
    write_varuint(len(by_client), out)
    for client, found in by_client.items():
        found.sort(key=lambda run: run.start)
        gaps = sum(1 for before, after in pairwise(found) if after.start > before.end)
        write_varuint(sum(run.count for run in found) + gaps, out)
        write_varuint(client, out)
        write_varuint(found[0].start, out)
        for index, run in enumerate(found):
            if index and run.start > found[index - 1].end:
                out.append(_SKIP)
                write_varuint(run.start - found[index - 1].end, out)
            out += update[run.first : run.last]
    out += delete_set
    return bytes(out)


def split(update: bytes, max_bytes: int) -> list[bytes]:
    """``update`` as several updates of at most about ``max_bytes`` each (a struct larger than
    that goes alone), cut between structs, in clock order per client; the delete set goes
    with the last.  Merged in any order they hold what ``update`` holds; a part whose structs
    wait for an earlier part is held aside until it comes (`hearthsync.crdt.replica`).

    What a single envelope cannot carry (SPEC §1: 2 MiB) is sent this way."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    found, delete_set = runs(update)
    pieces = [piece for run in found for piece in _cut(update, run, max_bytes)]
    parts: list[list[Run]] = [[]]
    size = 0
    for piece in pieces:
        length = piece.last - piece.first
        if parts[-1] and size + length > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(piece)
        size += length
    # each part carries the deletions of the entries its own items overwrite, which wait with
    # those items where the part arrives beyond a gap (`hearthsync.crdt.replica`); the rest
    # go with the last part
    ranges = deleted_ranges(delete_set)
    own = [_overwritten(update, part, ranges) for part in parts]
    elsewhere = set().union(*own[:-1]) - own[-1]
    last = len(parts) - 1
    return [
        encode(
            update,
            part,
            without(delete_set, elsewhere) if index == last else _delete_set_of_ids(own[index]),
        )
        for index, part in enumerate(parts)
    ]


def _overwritten(
    update: bytes, part: list[Run], ranges: dict[int, list[tuple[int, int]]]
) -> set[tuple[int, int]]:
    """The origins of the items of ``part`` that ``ranges`` deletes."""
    return {
        origin
        for run in part
        for _, origin in origins(update, run)
        if any(start <= origin[1] < end for start, end in ranges.get(origin[0], ()))
    }


def _delete_set_of_ids(ids: set[tuple[int, int]]) -> bytes:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for client, clock in sorted(ids):
        ranges.setdefault(client, []).append((clock, clock + 1))
    return delete_set_of(ranges)[1:]


def _cut(update: bytes, run: Run, max_bytes: int) -> list[Run]:
    """``run`` as runs of at most ``max_bytes`` of encoded structs each (one struct at least)."""
    if run.last - run.first <= max_bytes:
        return [run]
    pieces: list[Run] = []
    start, first, count, clock, pos = run.start, run.first, 0, run.start, run.first
    while pos < run.last:
        length, _, after = _struct(update, pos)
        if count and after - first > max_bytes:
            pieces.append(Run(run.client, start, clock, first, pos, count))
            start, first, count = clock, pos, 0
        clock += length
        count += 1
        pos = after
    pieces.append(Run(run.client, start, clock, first, pos, count))
    return pieces


def truncate(update: bytes, state: StateVector) -> bytes:
    """``update`` without the runs that lie beyond ``state`` (those that do not start before
    what it has seen of their client), delete set kept whole.  The runs kept are kept whole: a
    document's own runs end where its state vector does."""
    found, delete_set = runs(update)
    return encode(update, within(found, state), delete_set)


def within(found: list[Run], state: StateVector) -> list[Run]:
    """The runs that start before what ``state`` has seen of their client."""
    return [run for run in found if run.start < state.get(run.client, 0)]
