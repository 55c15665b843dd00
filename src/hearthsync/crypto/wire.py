"""Canonical msgpack and field checks shared by every signed or sealed object (SPEC §1).

Every object of SPEC §3-§4 is a msgpack array with a fixed field order.  Two rules make the
encoding canonical, which is what lets a signature cover ``msgpack(x)`` rather than opaque bytes:

1. we encode with ``use_bin_type=True`` (bytes → ``bin``, text → ``str``, smallest int form);
2. a decoder rebuilds the object and re-encodes it; the result must equal the input byte for
   byte (`decode` callers do this through ``to_wire() != data``).  So two different byte strings
   never decode to the same object, and a flipped bit is never silently "repaired".

Field checks raise `ValidationError` (the caller built a bad object); ``from_wire`` methods turn
that into the remote error class of their object, because there the bytes came from outside.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import msgpack

from hearthsync.errors import CryptoError, ValidationError

#: largest msgpack unsigned integer (SPEC §1: ``uint``)
MAX_UINT = 2**64 - 1
#: a string field, unless the SPEC says otherwise (SPEC §1)
MAX_STR_BYTES = 256
#: a scope or user name: the id alphabet of ``hearthsync.ids``
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
#: an ``id`` (SPEC §1): document ids and lineages, 1-256 visible ASCII characters
ID_RE = re.compile(r"[\x21-\x7e]{1,256}")
#: ``device_id`` and ``household_id`` (SPEC §2): base32 of 10 bytes, 16 characters
B32_ID_RE = re.compile(r"[A-Z2-7]{16}")

_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def pack(value: list[Any]) -> bytes:
    """``msgpack(value)`` in the canonical form of SPEC §1."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack_array(
    data: bytes,
    *,
    what: str,
    length: int,
    max_bytes: int,
    error: type[CryptoError],
    max_array: int = 64,
    versioned: bool = True,
    max_length: int | None = None,
) -> list[Any]:
    """Decode ``data`` as one msgpack array of ``length`` items (up to ``max_length``, if
    given: fields added since) whose first item is version 1 (unless not ``versioned``: an
    envelope's version sits in its header).

    Size limits are checked before parsing (SPEC §1: "receivers reject larger input before
    parsing further") and passed to msgpack so a nested length prefix cannot allocate more.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise error(f"{what}: {len(data)} bytes is over the limit of {max_bytes}")
    try:
        value = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except _UNPACK_ERRORS as exc:
        raise error(f"{what}: not a msgpack value ({type(exc).__name__})") from None
    if not isinstance(value, list) or not length <= len(value) <= (max_length or length):
        raise error(f"{what}: expected an array of {length} fields")
    if versioned:
        check_version(value, what=what, error=error)
    return value


def check_version(
    value: list[Any], *, what: str, error: type[CryptoError], version: int = 1
) -> None:
    if type(value[0]) is not int or value[0] != version:
        raise error(f"{what}: unsupported version {value[0]!r:.20}")


def check_canonical(data: bytes, rebuilt: bytes, *, what: str, error: type[CryptoError]) -> None:
    """Refuse input that decodes fine but is not the canonical encoding of what it decodes to."""
    if bytes(data) != rebuilt:
        raise error(f"{what}: not canonically encoded (SPEC §1)")


def check_uint(value: object, *, field: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise ValidationError(f"{field} must be an unsigned 64-bit integer", field=field)
    return value


def check_bytes(value: object, *, field: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValidationError(f"{field} must be {size} bytes", field=field)
    return value


def check_text(
    value: object, *, field: str, pattern: re.Pattern[str] | None = None, max_bytes: int = 256
) -> str:
    """A str field: non-empty, at most ``max_bytes`` of UTF-8, matching ``pattern`` if given."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{field} is not valid UTF-8", field=field) from None
    if size > max_bytes:
        raise ValidationError(f"{field} is longer than {max_bytes} bytes", field=field)
    if pattern is not None and not pattern.fullmatch(value):
        raise ValidationError(f"{field} is not well-formed: {value!r:.80}", field=field)
    return value


def check_sorted_names(
    value: object, *, field: str, pattern: re.Pattern[str], max_items: int
) -> tuple[str, ...]:
    """A tuple of names, strictly increasing (sorted, no duplicates), so encoding is canonical."""
    if not isinstance(value, tuple):
        raise ValidationError(f"{field} must be a tuple", field=field)
    if len(value) > max_items:
        raise ValidationError(f"{field} holds more than {max_items} items", field=field)
    for item in value:
        check_text(item, field=field, pattern=pattern)
    if any(a >= b for a, b in pairwise(value)):
        raise ValidationError(f"{field} must be sorted and without duplicates", field=field)
    return value
