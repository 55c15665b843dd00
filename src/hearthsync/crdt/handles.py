"""Typed views over the pycrdt structures of each document kind.

Registers (a profile, a preference, a placement) are stored in a *slot map*: a flat Yrs map
whose keys are ``<record key>\\x1f<device>``.  Each device writes only its own slot, so two
robots writing the same preference concurrently never make Yrs discard one of the writes; the
reader picks the version with the greatest hybrid logical timestamp (DESIGN invariant 3).  A
flat map (no nested maps) also avoids the Yjs pitfall where two replicas that concurrently
create the same nested map lose one of them.  Deletion is a tombstone version (``deleted``).

Logs (interaction events, spatial changes) are Yrs arrays of immutable JSON records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic

from pycrdt import Array, Doc, Map, MapEvent

from hearthsync.crdt.kinds import Kind
from hearthsync.model.records import (
    Calibration,
    HealthRecord,
    InteractionEvent,
    Placement,
    Preference,
    Profile,
    R,
    Region,
    Relationship,
    Routine,
    SpatialChange,
)

SEP = "\x1f"


class SlotMap(Generic[R]):
    """A map of multi-device registers resolved by hybrid logical time."""

    def __init__(self, ymap: Map[str], record_type: type[R]) -> None:
        self._map = ymap
        self._type = record_type
        self._slots: dict[str, set[str]] | None = None  # record key -> slot keys, built lazily
        self._cache: dict[str, R] = {}  # slot key -> decoded record
        self._sub = ymap.observe(self._on_change)

    def _on_change(self, event: MapEvent) -> None:
        slots = self._slots
        for slot, change in event.keys.items():  # type: ignore[attr-defined]
            self._cache.pop(slot, None)
            if slots is None:
                continue
            key = slot.partition(SEP)[0]
            if change["action"] == "delete":
                slots.get(key, set()).discard(slot)
            else:
                slots.setdefault(key, set()).add(slot)

    def _index(self) -> dict[str, set[str]]:
        if self._slots is None:
            slots: dict[str, set[str]] = {}
            for slot in self._map.keys():  # noqa: SIM118 - pycrdt types Map.__iter__ loosely
                slots.setdefault(slot.partition(SEP)[0], set()).add(slot)
            self._slots = slots
        return self._slots

    def put(self, key: str, record: R, device: str) -> None:
        """Write ``record`` into this device's slot of ``key`` (inside a transaction).

        The cache and slot index are updated at once, not only by the observer (which runs
        when the transaction ends), so a later read in the same transaction sees this write.
        """
        slot = f"{key}{SEP}{device}"
        self._map[slot] = record.encode()
        self._index().setdefault(key, set()).add(slot)
        self._cache[slot] = record

    def versions(self, key: str) -> list[R]:
        """Every device's version of ``key``, oldest first."""
        found = [self._decode(slot) for slot in self._index().get(key, ())]
        return sorted(found, key=_stamp)

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

    def _decode(self, slot: str) -> R:
        record = self._cache.get(slot)
        if record is None:
            record = self._type.decode(self._map[slot])
            self._cache[slot] = record
        return record


def _stamp(record: object) -> tuple[str, str]:
    return (str(getattr(record, "set_at", "")), str(getattr(record, "device", "")))


class Log(Generic[R]):
    """An append-only array of immutable records, decoded once and cached until it changes."""

    def __init__(self, array: Array[str], record_type: type[R]) -> None:
        self._array = array
        self._type = record_type
        self._decoded: list[R] | None = None
        self._sub = array.observe(self._on_change)

    def _on_change(self, _: object) -> None:
        # Local appends already extended the cache; a peer's entries (which may land anywhere)
        # make the array longer than the cache, and then we decode again.  Nothing is deleted.
        if self._decoded is not None and len(self._decoded) != len(self._array):
            self._decoded = None

    def append(self, record: R) -> None:
        self._array.append(record.encode())
        if self._decoded is not None:
            self._decoded.append(record)  # local appends go to the end, in this transaction

    def __len__(self) -> int:
        return len(self._array)

    def __iter__(self) -> Iterator[R]:
        if self._decoded is None:
            decode = self._type.decode
            self._decoded = [decode(text) for text in self._array]
        return iter(self._decoded)


# ------------------------------------------------------------------- one handle per kind
# Each takes the replica's pycrdt Doc.  Root type names are part of the stored format.


class ProfileDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.profile = SlotMap(_map(doc, "profile"), Profile)


class CalibrationDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.calibration = SlotMap(_map(doc, "calibration"), Calibration)


class PrefsDoc:
    """Preferences keyed ``<domain/key>#<condition key>``."""

    def __init__(self, doc: Doc[Any]) -> None:
        self.prefs = SlotMap(_map(doc, "prefs"), Preference)

    @staticmethod
    def slot_key(pref: Preference) -> str:
        return f"{pref.key}#{pref.condition.key()}"


class HealthDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.records = SlotMap(_map(doc, "health"), HealthRecord)


class EventsDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.events = Log(_array(doc, "events"), InteractionEvent)


class SpatialDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.regions = SlotMap(_map(doc, "regions"), Region)
        self.placements = SlotMap(_map(doc, "placements"), Placement)
        self.changes = Log(_array(doc, "changes"), SpatialChange)


class GraphDoc:
    def __init__(self, doc: Doc[Any]) -> None:
        self.routines = SlotMap(_map(doc, "routines"), Routine)
        self.relationships = SlotMap(_map(doc, "relationships"), Relationship)


class HouseholdDoc:
    """The household registry: its users (id → profile name) for now."""

    def __init__(self, doc: Doc[Any]) -> None:
        self.users: Map[str] = _map(doc, "users")


def _map(doc: Doc[Any], name: str) -> Map[str]:
    found: Map[str] = doc.get(name, type=Map)
    return found


def _array(doc: Doc[Any], name: str) -> Array[str]:
    found: Array[str] = doc.get(name, type=Array)
    return found


#: the root types of each kind of document (the stored format; never rename one)
ROOTS: dict[Kind, tuple[tuple[str, type[Map[Any]] | type[Array[Any]]], ...]] = {
    Kind.HOUSEHOLD: (("users", Map),),
    Kind.SPATIAL: (("regions", Map), ("placements", Map), ("changes", Array)),
    Kind.GRAPH: (("routines", Map), ("relationships", Map)),
    Kind.PROFILE: (("profile", Map),),
    Kind.PREFS: (("prefs", Map),),
    Kind.CALIBRATION: (("calibration", Map),),
    Kind.HEALTH: (("health", Map),),
    Kind.EVENTS: (("events", Array),),
}
