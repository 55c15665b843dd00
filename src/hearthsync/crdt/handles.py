"""Typed views over the pycrdt structures of each document kind.

Registers (a profile, a preference, a placement) are stored in a *slot map*: a flat Yrs map
whose keys are ``<record key>\\x1f<device>``.  Each device writes only its own slot, so two
robots writing the same preference concurrently never make Yrs discard one of the writes; the
reader picks the version with the greatest hybrid logical timestamp (DESIGN invariant 3).  A
flat map (no nested maps) also avoids the Yjs pitfall where two replicas that concurrently
create the same nested map lose one of them.  Deletion is a tombstone version (``deleted``).

Logs (interaction events, spatial changes) are Yrs arrays of immutable JSON records.

Records are stored without what their place implies: the writing device and the record's key
(both in the slot key) and the user (the document's subject).  A preference is then about 60
bytes of JSON instead of 124; reading puts the implied fields back in front of the stored ones
(`Record.decode`), so a record stored whole (by format 1) reads the same.

Views cache decoded records.  They observe their Yrs type through pycrdt's raw (``integrated``)
events, whose fields are computed only when read: pycrdt's own ``observe`` converts every
changed key and value to Python first, which tripled the cost of merging a 10,000-key update.
Local writes update the cache directly, so only a remote update (`Replica.incoming` bytes being
merged) invalidates anything: the keys it changed, or, for a large one, everything at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic

from pycrdt import Array, Map, ReadTransaction

from hearthsync.crdt.kinds import HOME, Kind
from hearthsync.crdt.replica import Replica, event_field
from hearthsync.errors import ValidationError
from hearthsync.model.records import (
    Calibration,
    HealthRecord,
    InteractionEvent,
    Placement,
    Preference,
    Profile,
    R,
    Record,
    Region,
    Relationship,
    Routine,
    SpatialChange,
    given_fields,
)

log = logging.getLogger(__name__)

SEP = "\x1f"
#: how a stored record with an ``id`` field begins (pydantic writes fields in declared order)
_ID_OPENING = '{"id":"'
#: a remote update larger than this drops a view's whole cache instead of reading its keys
BULK_BYTES = 16_384


class SlotMap(Generic[R]):
    """A map of multi-device registers resolved by hybrid logical time."""

    def __init__(self, replica: Replica, name: str, record_type: type[R]) -> None:
        self._replica = replica
        self.name = name  #: the root map's name in its document
        self._map: Map[str] = replica.doc.get(name, type=Map)
        self._type = record_type
        self._slots: dict[str, set[str]] | None = None  # record key -> slot keys, built lazily
        self._cache: dict[str, R] = {}  # slot key -> decoded record
        #: slots a remote update changed, whose place in the index is settled at the next read:
        #: whether a slot holds a value is asked of the map, not read from the event's action
        #: (an update beyond a gap in its author's clock can report a replacement that is not
        #: readable: found by the chaos harness), and the map cannot be read inside the event
        self._dirty: set[str] = set()
        # a raw observer: see the module doc
        self._sub = replica.track(self._map.integrated.observe(self._on_change))
        self._user = _implied_user(replica, record_type)
        self._key_field = record_type.SLOT_KEY_FIELD
        implied = {"device"} | ({"user"} if self._user else set())
        self._without = frozenset(implied | ({self._key_field} if self._key_field else set()))
        self._given: dict[tuple[str, str], str] = {}  # (record key, device) -> JSON opening
        #: slots whose record does not decode (another robot's bug or newer schema): read as
        #: absent, warned of once, until they change
        self._undecodable: set[str] = set()

    def _on_change(self, event: Any) -> None:
        incoming = self._replica.incoming
        if not incoming:  # a local transaction: `put` has updated the cache already
            return
        keys = None if incoming > BULK_BYTES else event_field(event, "keys")
        if keys is None:  # large (reading its keys would cost more than rereading), or unknown
            self._slots = None
            self._cache.clear()
            self._dirty.clear()
            self._undecodable.clear()
            return
        for slot in keys:
            self._cache.pop(slot, None)
            self._undecodable.discard(slot)
            if self._slots is not None:
                self._dirty.add(slot)

    def _index(self) -> dict[str, set[str]]:
        if self._slots is None:
            slots: dict[str, set[str]] = {}
            for slot in self._map.keys():  # noqa: SIM118 - pycrdt types Map.__iter__ loosely
                slots.setdefault(slot.partition(SEP)[0], set()).add(slot)
            self._slots = slots
            self._dirty.clear()
        elif self._dirty:
            dirty, self._dirty = self._dirty, set()
            for slot in dirty:
                key = slot.partition(SEP)[0]
                if slot in self._map:
                    self._slots.setdefault(key, set()).add(slot)
                else:
                    self._slots.get(key, set()).discard(slot)
        return self._slots

    def put(self, key: str, record: R, device: str) -> None:
        """Write ``record`` into this device's slot of ``key`` (inside a transaction).

        The cache and slot index are updated at once, not only by the observer (which runs
        when the transaction ends), so a later read in the same transaction sees this write.
        """
        slot = f"{key}{SEP}{device}"
        self._check_implied(key, record, device)
        text = record.encode(without=self._without)
        txn = _open_transaction(self._map)
        if txn is None:
            self._map[slot] = text
        else:
            self._map.integrated.insert(txn, slot, text)
        self._index().setdefault(key, set()).add(slot)
        self._cache[slot] = record

    def _check_implied(self, key: str, record: R, device: str) -> None:
        """What the slot implies must be what the record holds, or a read would differ."""
        fields = {"device": device, "user": self._user}
        if self._key_field:
            fields[self._key_field] = key.partition("#")[0]
        for name, value in fields.items():
            if value and getattr(record, name) != value:
                raise ValueError(f"{name} {getattr(record, name)!r} is not {value!r} of its slot")

    def remove(self, key: str) -> int:
        """Delete every device's version of ``key`` (inside a transaction): forgetting, where a
        tombstone version would keep the old ones.  Returns how many slots went."""
        slots = self._index().pop(key, set())
        for slot in slots:
            self._map.pop(slot, None)
            self._cache.pop(slot, None)
        return len(slots)

    def versions(self, key: str) -> list[R]:
        """Every device's version of ``key``, oldest first."""
        found = [self._decode(slot) for slot in list(self._index().get(key, ()))]
        return sorted((record for record in found if record is not None), key=_stamp)

    def get(self, key: str) -> R | None:
        """The most recent version of ``key``, or ``None`` if absent or deleted."""
        versions = self.versions(key)
        if not versions or getattr(versions[-1], "deleted", False):
            return None
        return versions[-1]

    def keys(self) -> list[str]:
        return sorted(key for key in self._index() if self.get(key) is not None)

    def items(self) -> Iterator[tuple[str, R]]:
        for key in self.keys():
            record = self.get(key)
            if record is not None:
                yield key, record

    def __len__(self) -> int:
        return len(self.keys())

    def _decode(self, slot: str) -> R | None:
        record = self._cache.get(slot)
        if record is None:
            key, _, device = slot.partition(SEP)
            try:
                stored = self._map[slot]
            except KeyError:
                # gone without an event saying so: Yrs 0.28 can take back content it showed
                # beyond a gap in its author's clock when a later merge arrives (a gap a revoked
                # robot left; found by the chaos harness, seed 20613).  The map is the truth.
                log.warning(
                    "%s: slot %r vanished without a change event", self._replica.info.doc_id, slot
                )
                self._index().get(key, set()).discard(slot)
                return None
            if slot in self._undecodable:
                return None
            given = self._given.get((key, device))
            if given is None:
                given = self._given[key, device] = self._opening(key.partition("#")[0], device)
            try:
                record = self._type.decode(stored, given=given)
            except ValidationError as exc:
                # one robot's bad record must not fail every read (and write) of its key here
                self._undecodable.add(slot)
                log.warning("%s: skipping %r, which does not decode: %s",
                            self._replica.info.doc_id, slot, exc)  # fmt: skip
                return None
            self._cache[slot] = record
        return record

    def _opening(self, key: str, device: str) -> str:
        fields = {"device": device} | ({"user": self._user} if self._user else {})
        if self._key_field:
            fields[self._key_field] = key
        return given_fields(fields)


def _stamp(record: object) -> tuple[str, str]:
    return (str(getattr(record, "set_at", "")), str(getattr(record, "device", "")))


class Log(Generic[R]):
    """An append-only array of immutable records, decoded once and cached until it changes.

    A remote update may insert anywhere (concurrent appends interleave), so it drops the
    decoded list; rebuilding it decodes only the entries not seen before (`_by_text`).
    """

    def __init__(self, replica: Replica, name: str, record_type: type[R]) -> None:
        self._replica = replica
        self._array: Array[str] = replica.doc.get(name, type=Array)
        self._type = record_type
        self._decoded: list[R] | None = None
        self._ids: dict[str, str] | None = None  # id -> stored text, built on first lookup
        self._by_text: dict[str, R] = {}
        self._undecodable: set[str] = set()  #: entries that do not decode, skipped
        #: the records in ``_order_key`` order, with their keys (for bisecting a range)
        self._ordered: tuple[list[R], list[Any]] | None = None
        self._order_key: Callable[[R], Any] | None = None
        # a raw observer: see the module doc
        self._sub = replica.track(self._array.integrated.observe(self._on_change))
        self._user = user = _implied_user(replica, record_type)
        self._without = frozenset({"user"} if user else ())
        self._given = given_fields({"user": user} if user else {})

    def _on_change(self, _: Any) -> None:
        if self._replica.incoming:
            self._decoded = self._ids = self._ordered = None

    def append(self, record: R, text: str | None = None) -> None:
        """Append ``record``; ``text`` is its encoding without the implied fields, if the
        caller made it already (`Record.encode`), so that it is not made twice."""
        if self._user and getattr(record, "user", None) != self._user:
            raise ValueError(f"a record of {getattr(record, 'user', None)!r} in {self._user}'s log")
        if text is None:
            text = record.encode(without=self._without)
        txn = _open_transaction(self._array)
        if txn is None:
            self._array.append(text)
        else:
            array = self._array.integrated
            array.insert(txn, array.len(txn), text)
        self._by_text[text] = record
        self._ordered = None
        if self._decoded is not None:
            self._decoded.append(record)  # local appends go to the end, in this transaction
        if self._ids is not None and isinstance(getattr(record, "id", None), str):
            self._ids[getattr(record, "id")] = text  # noqa: B009 - checked just above

    def __len__(self) -> int:
        return len(self._array)

    def remove(self, doomed: Callable[[R], bool]) -> int:
        """Delete every record for which ``doomed`` is true (inside a transaction): what a
        forgotten user leaves in a shared log.  Returns how many went."""
        gone = []
        for index, text in enumerate(self._array):  # positions in the array itself: the
            record = self._record_of(text)  # records read leave out what does not decode
            if record is not None and doomed(record):
                gone.append(index)
        for index in reversed(gone):  # from the end: the positions before stay valid
            del self._array[index]
        if gone:
            self._decoded = self._ids = self._ordered = None
        return len(gone)

    def by_id(self, record_id: str) -> R | None:
        """The record whose ``id`` is ``record_id`` (records stored with ``id`` first), or
        None.  Only that record is decoded: the index maps ids to their stored text, read from
        each text's opening (`index_ids`), not by decoding the whole log."""
        text = self.index_ids().get(record_id)
        if text is None:
            return None
        return self._record_of(text)

    def index_ids(self) -> dict[str, str]:
        """Id -> stored text of every record (built once, until a remote change)."""
        if self._ids is None:
            ids: dict[str, str] = {}
            for text in self._array.to_py() or ():
                if text.startswith(_ID_OPENING):
                    ids[text[len(_ID_OPENING) : text.index('"', len(_ID_OPENING))]] = text
            self._ids = ids
        return self._ids

    def ordered(self, key: Callable[[R], Any]) -> tuple[list[R], list[Any]]:
        """The records sorted by ``key``, and their keys (to bisect a range), built once until
        the log changes (pass the same key function each time: it is what the cache is for)."""
        if self._ordered is None or self._order_key is not key:
            records = sorted(self, key=key)
            self._ordered, self._order_key = (records, [key(r) for r in records]), key
        return self._ordered

    def __iter__(self) -> Iterator[R]:
        if self._decoded is None:
            found = (self._record_of(text) for text in self._array)
            self._decoded = [record for record in found if record is not None]
        return iter(self._decoded)

    def _record_of(self, text: str) -> R | None:
        """The record ``text`` holds, decoded once; None (warned of once) if it does not
        decode: one robot's bad entry is skipped, not fatal to every read of the log."""
        record = self._by_text.get(text)
        if record is None and text not in self._undecodable:
            try:
                record = self._by_text[text] = self._type.decode(text, given=self._given)
            except ValidationError as exc:
                self._undecodable.add(text)
                log.warning("%s: skipping an entry that does not decode: %s",
                            self._replica.info.doc_id, exc)  # fmt: skip
        return record


def _open_transaction(shared: Array[Any] | Map[Any]) -> Any | None:
    """The Yrs transaction of the write transaction ``shared``'s document is in (a change run
    by `Replica.transact`), or None outside one.

    Writing a string through it is the Yrs insert pycrdt's ``append`` and ``__setitem__`` make
    (the same delta, byte for byte), without the nested transactions and checks they open
    around it per item (five for an append, two for a set): half of what appending an event
    cost in a batch of 256.
    """
    # pycrdt's private attributes (0.12 to 0.14, as pyproject pins): without them, the
    # public call, slower and the same
    txn = getattr(shared.doc, "_txn", None)
    if txn is None or isinstance(txn, ReadTransaction):
        return None  # pycrdt's own call opens one, or refuses a read-only one
    return getattr(txn, "_txn", None)


def _implied_user(replica: Replica, record_type: type[Record]) -> str:
    """The user a record in this document belongs to, if the document says ('' if not)."""
    subject = replica.info.subject
    return subject if subject != HOME and "user" in record_type.model_fields else ""


# ------------------------------------------------------------------- one handle per kind
# Each takes the replica's pycrdt Doc.  Root type names are part of the stored format.


class ProfileDoc:
    def __init__(self, replica: Replica) -> None:
        self.profile = SlotMap(replica, "profile", Profile)


class CalibrationDoc:
    def __init__(self, replica: Replica) -> None:
        self.calibration = SlotMap(replica, "calibration", Calibration)


class PrefsDoc:
    """Preferences keyed ``<domain/key>#<condition key>``."""

    def __init__(self, replica: Replica) -> None:
        self.prefs = SlotMap(replica, "prefs", Preference)

    @staticmethod
    def slot_key(pref: Preference) -> str:
        return f"{pref.key}#{pref.condition.key()}"


class HealthDoc:
    def __init__(self, replica: Replica) -> None:
        self.records = SlotMap(replica, "health", HealthRecord)


class EventsDoc:
    def __init__(self, replica: Replica) -> None:
        self.events = Log(replica, "events", InteractionEvent)


class SpatialDoc:
    def __init__(self, replica: Replica) -> None:
        self.regions = SlotMap(replica, "regions", Region)
        self.placements = SlotMap(replica, "placements", Placement)
        self.changes = Log(replica, "changes", SpatialChange)


class GraphDoc:
    def __init__(self, replica: Replica) -> None:
        self.routines = SlotMap(replica, "routines", Routine)
        self.relationships = SlotMap(replica, "relationships", Relationship)


class HouseholdDoc:
    """The household registry: its users (id → name at registration, written once: the
    profile holds the current name), the forgotten ones (id → signed tombstone) and signed
    settings (`hearthsync.crypto.statement`)."""

    def __init__(self, replica: Replica) -> None:
        self.users: Map[str] = replica.doc.get("users", type=Map)
        self.forgotten: Map[str] = replica.doc.get("forgotten", type=Map)
        #: signed settings, one slot per device (``<name>\x1f<device>``): the task policy
        self.settings: Map[str] = replica.doc.get("settings", type=Map)


#: the root types of each kind of document (the stored format; never rename one)
ROOTS: dict[Kind, tuple[tuple[str, type[Map[Any]] | type[Array[Any]]], ...]] = {
    Kind.HOUSEHOLD: (("users", Map), ("forgotten", Map), ("settings", Map)),
    Kind.SPATIAL: (("regions", Map), ("placements", Map), ("changes", Array)),
    Kind.GRAPH: (("routines", Map), ("relationships", Map)),
    Kind.PROFILE: (("profile", Map),),
    Kind.PREFS: (("prefs", Map),),
    Kind.CALIBRATION: (("calibration", Map),),
    Kind.HEALTH: (("health", Map),),
    Kind.EVENTS: (("events", Array),),
}
