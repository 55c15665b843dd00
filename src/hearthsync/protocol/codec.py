"""The msgpack layer under the frame codec: four wire types, read strictly (SPEC §1, §5).

Rules this module lives by:

1. Our wire uses four msgpack families only: ``uint`` (positive fixint, uint 8/16/32/64),
   ``str``, ``bin`` and ``array``.  A map, nil, bool, float, negative int, ext or the reserved
   byte 0xc1 anywhere is malformed: bool is never an int, str is never bin, and the other way round.
2. Every value is in its shortest msgpack form (SPEC §1), so the bytes of a frame are a function
   of its fields and ``encode(decode(b)) == b`` for every ``b`` that decodes.
3. Nothing is built before it is bounded.  The reader looks at a value's header first: the family
   must be the one the grammar expects at that position and a declared length must fit the
   field's limit, or the read fails before a byte of payload is copied.  Arrays are entered only
   where the grammar has one, so nesting never exceeds the grammar's depth (frame, inventory,
   entry) and maps are never read at all.  Each read advances by at least one byte, so a read of
   a frame of ``n`` bytes ends after at most ``n`` steps.
4. Decoding does not call ``msgpack.unpackb``: its exceptions, recursion and allocations are not
   ours to bound.  The limits one would pass it hold here by construction and are tighter: a
   ``bin`` or ``str`` is capped by its own field's limit (``max_bin_len``, ``max_str_len``), an
   array by its exact arity or the 10,000 entries of an inventory (``max_array_len``), maps are
   refused at their first byte (``max_map_len=0``) and nesting stops at depth 3.  The reader
   covers the four families in ~100 lines; the tests check it against ``msgpack.unpackb`` on
   every frame they generate.  Encoding uses ``msgpack.packb``, which writes the shortest forms.
5. A problem is raised as ``Invalid(path, message, code)``; the frame layer prefixes the frame
   name and turns it into ``ProtocolError`` (a peer's bytes) or ``ValidationError`` (our own
   frame).  No I/O, no clock, no randomness: bytes in, values out.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

import msgpack

MALFORMED = 400
TOO_LARGE = 413
UINT64_MAX = 2**64 - 1

#: lead byte -> (family, width of the length or value after it, its least value, fix-form mask).
#: ``width == 0`` means the length or value sits in the lead byte itself (``lead & mask``).
_Lead = tuple[str, int, int, int]
_SIZED: dict[int, _Lead] = {
    0xCC: ("uint", 1, 0x80, 0),
    0xCD: ("uint", 2, 0x100, 0),
    0xCE: ("uint", 4, 0x1_0000, 0),
    0xCF: ("uint", 8, 0x1_0000_0000, 0),
    0xC4: ("bin", 1, 0, 0),
    0xC5: ("bin", 2, 0x100, 0),
    0xC6: ("bin", 4, 0x1_0000, 0),
    0xD9: ("str", 1, 0x20, 0),
    0xDA: ("str", 2, 0x100, 0),
    0xDB: ("str", 4, 0x1_0000, 0),
    0xDC: ("array", 2, 0x10, 0),
    0xDD: ("array", 4, 0x1_0000, 0),
}
_OTHER: tuple[tuple[range, str], ...] = (
    (range(0x80, 0x90), "map"),
    (range(0xDE, 0xE0), "map"),
    (range(0xC0, 0xC1), "nil"),
    (range(0xC1, 0xC2), "reserved byte 0xc1"),
    (range(0xC2, 0xC4), "bool"),
    (range(0xC7, 0xCA), "ext"),
    (range(0xD4, 0xD9), "ext"),
    (range(0xCA, 0xCC), "float"),
    (range(0xD0, 0xD4), "negative or signed int"),
    (range(0xE0, 0x100), "negative or signed int"),
)


def _describe(lead: int) -> _Lead:
    if lead <= 0x7F:
        return ("uint", 0, 0, 0x7F)
    if 0x90 <= lead <= 0x9F:
        return ("array", 0, 0, 0x0F)
    if 0xA0 <= lead <= 0xBF:
        return ("str", 0, 0, 0x1F)
    if lead in _SIZED:
        return _SIZED[lead]
    return next((name, 0, 0, 0) for span, name in _OTHER if lead in span)


_LEADS: tuple[_Lead, ...] = tuple(_describe(lead) for lead in range(256))


class Invalid(Exception):
    """A value broke the grammar or a limit; ``path`` names it inside the frame (``nonce``)."""

    def __init__(self, path: str, message: str, *, code: int = MALFORMED) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.code = code

    def describe(self, frame: str) -> str:
        """The message with the frame name and field in front: ``HELLO.nonce: ...``."""
        return f"{frame}.{self.path}: {self.message}" if self.path else f"{frame}: {self.message}"


def check_len(path: str, n: int, min_len: int, max_len: int, unit: str = "bytes") -> None:
    """Fail unless ``min_len <= n <= max_len``: 413 past a range's limit, 400 otherwise."""
    if min_len <= n <= max_len:
        return
    if min_len == max_len:
        raise Invalid(path, f"expected exactly {min_len} {unit}, got {n}")
    if n > max_len:
        raise Invalid(path, f"{n} {unit} exceed the limit of {max_len}", code=TOO_LARGE)
    raise Invalid(path, f"expected at least {min_len} {unit}, got {n}")


class Reader:
    """Reads the values of one frame in grammar order, checking each header before its payload."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint(self, path: str) -> int:
        return self._take(path, "uint")

    def array(self, path: str) -> int:
        """Enter an array: returns its declared length; the caller bounds it before reading on."""
        return self._take(path, "array")

    def blob(self, path: str, min_len: int, max_len: int) -> bytes:
        n = self._take(path, "bin")
        check_len(path, n, min_len, max_len)
        return self._payload(path, n)

    def text(self, path: str, max_len: int) -> str:
        n = self._take(path, "str")
        check_len(path, n, 0, max_len)
        try:
            return self._payload(path, n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(path, f"str is not valid UTF-8 (byte {exc.start})") from None

    def finish(self) -> None:
        """Fail if bytes follow the frame's last field."""
        extra = len(self._data) - self._pos
        if extra:
            raise Invalid("", f"{extra} trailing bytes after the last field")

    def _take(self, path: str, expected: str) -> int:
        """Read a header of family ``expected``: returns its length (or a uint's value)."""
        data, pos = self._data, self._pos
        if pos >= len(data):
            raise Invalid(path, f"truncated: expected {expected}, found the end of the frame")
        family, width, least, mask = _LEADS[data[pos]]
        if family != expected:
            raise Invalid(path, f"expected {expected}, got {family}")
        if width == 0:
            self._pos = pos + 1
            return data[pos] & mask
        end = pos + 1 + width
        if end > len(data):
            raise Invalid(path, f"truncated {expected} header")
        n = int.from_bytes(data[pos + 1 : end], "big")
        if n < least:
            what = "value" if expected == "uint" else "length"
            raise Invalid(path, f"{expected} {what} {n} is not in its shortest form (SPEC §1)")
        self._pos = end
        return n

    def _payload(self, path: str, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            have = len(self._data) - self._pos
            raise Invalid(path, f"truncated: {n} bytes declared, {have} present")
        raw = self._data[self._pos : end]
        self._pos = end
        return raw


def pack(wire: list[object]) -> bytes:
    """Canonical msgpack of a wire list (shortest forms, ``bin`` for bytes, ``str`` for text)."""
    data: bytes = msgpack.packb(wire, use_bin_type=True)
    return data


class Kind(abc.ABC):
    """A wire type of the grammar: how to read it, the rules a value obeys, its wire form."""

    __slots__ = ()

    @abc.abstractmethod
    def read(self, reader: Reader, path: str) -> object:
        """Read one value; the header checks happen here, the value rules in ``check``."""

    @abc.abstractmethod
    def check(self, value: object, path: str) -> None:
        """Raise ``Invalid`` unless ``value`` is a valid value of this wire type."""

    def to_wire(self, value: object) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Uint(Kind):
    """``uint``: a msgpack positive integer within ``minimum..maximum``; bool is not one."""

    minimum: int = 0
    maximum: int = UINT64_MAX

    def read(self, reader: Reader, path: str) -> object:
        return reader.uint(path)

    def check(self, value: object, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(path, f"expected int, got {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise Invalid(path, f"{value} is outside {self.minimum}..{self.maximum}")

    def to_wire(self, value: object) -> object:
        return int(typing.cast(int, value))  # an IntEnum goes on the wire as its number


@dataclass(frozen=True, slots=True)
class Text(Kind):
    """``str``: UTF-8 of at most ``max_len`` bytes; an ``ident`` is 1+ visible ASCII characters."""

    max_len: int
    ident: bool = False

    def read(self, reader: Reader, path: str) -> object:
        return reader.text(path, self.max_len)

    def check(self, value: object, path: str) -> None:
        if not isinstance(value, str):
            raise Invalid(path, f"expected str, got {type(value).__name__}")
        try:
            check_len(path, len(value.encode("utf-8")), 0, self.max_len)
        except UnicodeEncodeError:
            raise Invalid(path, "str is not encodable as UTF-8 (lone surrogate)") from None
        if self.ident and not _VISIBLE_ASCII.fullmatch(value):
            raise Invalid(
                path, f"must be 1+ visible ASCII characters (0x21-0x7e), got {value!r:.60}"
            )


_VISIBLE_ASCII = re.compile(r"[!-~]+")


@dataclass(frozen=True, slots=True)
class Blob(Kind):
    """``bin``: opaque bytes, ``min_len..max_len`` of them."""

    min_len: int
    max_len: int

    def read(self, reader: Reader, path: str) -> object:
        return reader.blob(path, self.min_len, self.max_len)

    def check(self, value: object, path: str) -> None:
        if not isinstance(value, bytes):
            raise Invalid(path, f"expected bytes, got {type(value).__name__}")
        check_len(path, len(value), self.min_len, self.max_len)


@dataclass(frozen=True, slots=True)
class Records(Kind):
    """``[[...]]``: up to ``max_len`` records, each an array of ``record``'s fields in order."""

    record: type[Any]
    max_len: int

    def read(self, reader: Reader, path: str) -> object:
        count = reader.array(path)
        check_len(path, count, 0, self.max_len, "entries")
        return tuple(read_record(self.record, reader, f"{path}[{i}]") for i in range(count))

    def check(self, value: object, path: str) -> None:
        if not isinstance(value, tuple):
            raise Invalid(path, f"expected tuple, got {type(value).__name__}")
        check_len(path, len(value), 0, self.max_len, "entries")
        for index, entry in enumerate(value):
            if not isinstance(entry, self.record):
                raise Invalid(f"{path}[{index}]", f"expected {self.record.__name__}")
            for name, kind in wire_fields(self.record):
                kind.check(getattr(entry, name), f"{path}[{index}].{name}")

    def to_wire(self, value: object) -> object:
        fields = wire_fields(self.record)
        entries = typing.cast(tuple[Any, ...], value)
        return [[kind.to_wire(getattr(e, name)) for name, kind in fields] for e in entries]


@dataclass(frozen=True, slots=True)
class Texts(Kind):
    """``[str]``: up to ``max_len`` values of ``item`` (a `Text`), in order."""

    item: Text
    max_len: int

    def read(self, reader: Reader, path: str) -> object:
        count = reader.array(path)
        check_len(path, count, 0, self.max_len, "entries")
        return tuple(self.item.read(reader, f"{path}[{i}]") for i in range(count))

    def check(self, value: object, path: str) -> None:
        if not isinstance(value, tuple):
            raise Invalid(path, f"expected tuple, got {type(value).__name__}")
        check_len(path, len(value), 0, self.max_len, "entries")
        for index, item in enumerate(value):
            self.item.check(item, f"{path}[{index}]")

    def to_wire(self, value: object) -> object:
        return list(typing.cast(tuple[str, ...], value))


_FIELDS: dict[type[Any], tuple[tuple[str, Kind], ...]] = {}  # a memo: classes never change


def wire_fields(cls: type[Any]) -> tuple[tuple[str, Kind], ...]:
    """``(name, kind)`` of a dataclass's fields in wire order, from ``Annotated[T, kind]``."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _annotated_fields(cls)
    return _FIELDS[cls]


def _annotated_fields(cls: type[Any]) -> tuple[tuple[str, Kind], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        kinds = [m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, Kind)]
        if len(kinds) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs exactly one wire kind")
        fields.append((field.name, kinds[0]))
    return tuple(fields)


def read_record(cls: type[Any], reader: Reader, path: str) -> Any:
    """Read an array holding exactly ``cls``'s fields and build ``cls`` (values checked later)."""
    fields = wire_fields(cls)
    check_len(path, reader.array(path), len(fields), len(fields), "elements")
    return cls(*(kind.read(reader, f"{path}.{name}") for name, kind in fields))
