"""Derived views the context engine keeps between calls, each stamped with its source document.

Scanning every placement of the home to find the ones on one shelf costs milliseconds in a year
of a household; a view indexed by region and owner costs microseconds.  A view is derived data
(DESIGN invariant 4): it is stamped with the lineage and revision of the document it was
built from (`Peer.revision`), and rebuilt when the document's stamp no longer matches.  Not
with its state vector: a change that only deletes (forgetting a user's things, here or on
another robot) leaves the state vector as it was, and a view stamped with it showed the
forgotten user's things to everyone until the next insert.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hearthsync.context.feedback import hlc_ms
from hearthsync.context.resolve import Candidate, Choice, candidates, choose
from hearthsync.context.scopes import ScopedReader
from hearthsync.context.situation import Situation, holds
from hearthsync.ids import key_domain
from hearthsync.model.records import Condition, Placement, Region, SpatialChange

T = TypeVar("T")
Stamp = tuple[str | None, tuple[int, int]]
SPATIAL = "home/spatial"


#: cached choices per preference view, before the cache is dropped and refilled
MAX_CHOICES = 50_000


@dataclass(frozen=True, slots=True)
class PreferenceView:
    """Every live stored version of each of one user's preference keys, and the choices made
    among them so far, by which of the user's conditions held (`resolve.Choice`)."""

    by_key: dict[str, tuple[Candidate, ...]]
    #: (key, domain), sorted by key
    keys: tuple[tuple[str, str], ...]
    #: every distinct condition of the user's preferences
    conditions: tuple[Condition, ...]
    choices: dict[tuple[str, tuple[bool, ...]], Choice | None] = field(default_factory=dict)

    def signature(self, now: Situation) -> tuple[bool, ...]:
        """Which of the user's conditions hold ``now``: all a `Choice` depends on."""
        return tuple(holds(condition, now) for condition in self.conditions)

    def choice(self, key: str, signature: tuple[bool, ...], now: Situation) -> Choice | None:
        mark = (key, signature)
        if mark not in self.choices:
            if len(self.choices) >= MAX_CHOICES:
                self.choices.clear()
            self.choices[mark] = choose(self.by_key[key], now)
        return self.choices[mark]


@dataclass(frozen=True, slots=True)
class SpatialView:
    regions: dict[str, Region]
    children: dict[str, tuple[str, ...]]
    by_region: dict[str | None, tuple[Placement, ...]]
    by_owner: dict[str, tuple[Placement, ...]]
    labels: dict[str, str]
    #: the change history, newest first by hybrid time
    changes: tuple[SpatialChange, ...]
    #: minus the wall time of each change, in the same order (ascending: for `bisect`)
    change_ages: tuple[int, ...]
    #: positions in `changes` (ascending, so newest first) of the changes of each object, and
    #: of the changes into or out of each region: a context looks up only what concerns it
    changes_of: dict[str, tuple[int, ...]]
    changes_at: dict[str, tuple[int, ...]]

    def changes_until(self, ms: int) -> Iterator[SpatialChange]:
        """The changes made at or before ``ms``, newest first."""
        start = bisect.bisect_left(self.change_ages, -ms)
        return itertools.islice(self.changes, start, None)

    def window(self, since_ms: int, until_ms: int) -> tuple[int, int]:
        """The positions ``[start, end)`` in `changes` of those made in ``[since, until]``."""
        start = bisect.bisect_left(self.change_ages, -until_ms)
        end = bisect.bisect_right(self.change_ages, -since_ms)
        return start, end

    def concerning(
        self, objects: Iterable[str], regions: Iterable[str], start: int, end: int, limit: int
    ) -> list[SpatialChange]:
        """The newest ``limit`` changes in ``[start, end)`` of ``objects`` or into or out of
        ``regions``, newest first."""
        found: set[int] = set()
        for positions in [
            *(self.changes_of.get(o, ()) for o in objects),
            *(self.changes_at.get(r, ()) for r in regions),
        ]:
            first = bisect.bisect_left(positions, start)
            found.update(itertools.takewhile(lambda i: i < end, positions[first : first + limit]))
        return [self.changes[i] for i in sorted(found)[:limit]]

    def within(self, region: str) -> list[str]:
        """``region`` and every region nested in it (cycles in parent links are ignored)."""
        found, todo = [region], [region]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in found:
                    found.append(child)
                    todo.append(child)
        return found


class _Slot(Generic[T]):
    """One view and the stamp of the document it was built from."""

    def __init__(self) -> None:
        self._stamp: Stamp | None = None
        self._view: T | None = None

    def get(self, stamp: Stamp, build: Callable[[], T]) -> T:
        if self._view is None or self._stamp != stamp:
            self._view, self._stamp = build(), stamp
        return self._view


class Views:
    """One peer's derived views, rebuilt when their document changes."""

    def __init__(self) -> None:
        self._preferences: dict[str, _Slot[PreferenceView]] = {}
        self._spatial: _Slot[SpatialView] = _Slot()

    def preferences(self, reader: ScopedReader, user: str) -> PreferenceView:
        slot = self._preferences.setdefault(user, _Slot())
        return slot.get(reader.stamp(f"user/{user}/prefs"), lambda: _preference_view(reader, user))

    def drop(self, user: str) -> None:
        """Drop ``user``'s views."""
        self._preferences.pop(user, None)

    def keep(self, users: Collection[str]) -> None:
        """Drop the views of users no longer in the household (forgotten: nothing of theirs
        may outlive their documents, derived data included)."""
        for user in [u for u in self._preferences if u not in users]:
            del self._preferences[user]

    def spatial(self, reader: ScopedReader) -> SpatialView:
        return self._spatial.get(reader.stamp(SPATIAL), lambda: _spatial_view(reader))


def _preference_view(reader: ScopedReader, user: str) -> PreferenceView:
    by_key: dict[str, list[Candidate]] = {}
    for latest in reader.preferences(user):
        versions = reader.preference_history(user, latest.key, latest.condition)
        by_key.setdefault(latest.key, []).extend(candidates(versions))
    conditions = {c.record.condition.key(): c.record.condition for v in by_key.values() for c in v}
    return PreferenceView(
        by_key={key: tuple(found) for key, found in by_key.items()},
        keys=tuple((key, key_domain(key)) for key in sorted(by_key)),
        conditions=tuple(conditions[name] for name in sorted(conditions)),
    )


def _spatial_view(reader: ScopedReader) -> SpatialView:
    regions = {r.id: r for r in reader.regions() if not r.deleted}
    children: dict[str, list[str]] = {}
    for region in regions.values():
        if region.parent is not None:
            children.setdefault(region.parent, []).append(region.id)
    placements = [p for p in reader.placements() if not p.deleted]
    changes = tuple(sorted(reader.spatial_changes(), key=lambda c: (c.at, c.device), reverse=True))
    return SpatialView(
        regions=regions,
        children={parent: tuple(sorted(kids)) for parent, kids in children.items()},
        by_region=_group(placements, lambda p: p.region),
        by_owner={k: v for k, v in _group(placements, lambda p: p.owner).items() if k is not None},
        labels={p.object: p.label for p in placements},
        changes=changes,
        change_ages=tuple(-hlc_ms(c.at) for c in changes),
        changes_of=_positions(changes, lambda c: (c.object,)),
        changes_at=_positions(changes, lambda c: (c.from_region, c.to_region)),
    )


def _positions(
    changes: Sequence[SpatialChange], keys: Callable[[SpatialChange], Iterable[str | None]]
) -> dict[str, tuple[int, ...]]:
    found: dict[str, list[int]] = {}
    for position, change in enumerate(changes):
        for key in set(keys(change)):
            if key is not None:
                found.setdefault(key, []).append(position)
    return {key: tuple(positions) for key, positions in found.items()}


def _group(
    placements: Sequence[Placement], field: Callable[[Placement], str | None]
) -> dict[str | None, tuple[Placement, ...]]:
    groups: dict[str | None, list[Placement]] = {}
    for placement in placements:
        groups.setdefault(field(placement), []).append(placement)
    return {key: tuple(sorted(found, key=lambda p: p.object)) for key, found in groups.items()}
