"""Identifier types and their validation.

Ids appear in document ids (``user/alice/prefs``), SQLite rows and, later, wire frames, so they
are restricted to a small, unambiguous alphabet and bounded in length.
"""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from hearthsync.errors import ValidationError

UserId = NewType("UserId", str)
DeviceId = NewType("DeviceId", str)
DocId = NewType("DocId", str)
Scope = NewType("Scope", str)
LineageId = NewType("LineageId", str)
EventId = NewType("EventId", str)

#: lower-case letters, digits, ``_`` and ``-``; starts with a letter or digit; 1-64 characters.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
#: a preference or record key: ``domain/key`` segments of the name alphabet plus ``.``
KEY_RE = re.compile(r"[a-z0-9][a-z0-9_\-.]{0,63}(/[a-z0-9][a-z0-9_\-.]{0,63}){0,3}")


def key_domain(key: str) -> str:
    """The domain of a well-formed key (`KEY_RE`): its first segment up to any ``.``, so
    always a name: ``coffee`` of ``coffee/milk``, and ``medication`` of
    ``medication.evening/dose``, whose sensitive rule must hold for every key under it (the
    whole first segment let such a key past it, found in review)."""
    return re.split(r"[./]", key, maxsplit=1)[0]


def check_name(value: str, *, field: str) -> str:
    """Return ``value`` if it is a well-formed name (user, device, object, region id)."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        from hearthsync.model.pii import check_no_pii  # ids is imported by the model

        if isinstance(value, str):  # a phone number given as an id: refused, not repeated
            check_no_pii(value, field=field)
        raise ValidationError(
            f"{field} must be 1-64 characters of a-z, 0-9, '_' or '-', got {value!r:.80}",
            field=field,
        )
    return value


#: device ids are base32 (upper case); tests and static peers also use plain names
DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


def check_device(value: str, *, field: str = "device") -> str:
    """Return ``value`` if it can be a device id (base32, or a name), else raise."""
    if not isinstance(value, str) or not DEVICE_RE.fullmatch(value):
        raise ValidationError(
            f"{field} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-', got {value!r:.80}",
            field=field,
        )
    return value


def genesis_lineage(doc_id: DocId) -> LineageId:
    """The lineage every replica derives for a document nobody re-seeded (DESIGN: lineage)."""
    return LineageId("g-" + hashlib.blake2b(doc_id.encode(), digest_size=8).hexdigest())
