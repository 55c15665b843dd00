"""`Context`: what `get_context` returns, and how it becomes a prompt.

A context is immutable and self-describing: the situation it was assembled for, the scopes the
task was granted and those withheld, and typed items that each carry their provenance.
`to_prompt` packs it by priority within a token budget (see `hearthsync.context.prompt`);
`to_json` gives the same content to non-Python robot stacks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from hearthsync.context.items import (
    ActiveRoutine,
    EventItem,
    HealthFact,
    Relation,
    ResolvedPreference,
    SharedSetting,
    SpatialFact,
    SpatialMove,
    show,
)
from hearthsync.context.prompt import Section, pack
from hearthsync.context.situation import Situation
from hearthsync.model.records import Calibration, Profile


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a robot's reasoning layer should know before acting for ``user`` on ``task``."""

    user: str
    task: str
    situation: Situation
    granted: tuple[str, ...]
    withheld: tuple[str, ...]
    profile: Profile | None = None
    calibration: Calibration | None = None
    preferences: tuple[ResolvedPreference, ...] = ()
    shared: tuple[SharedSetting, ...] = ()
    routines: tuple[ActiveRoutine, ...] = ()
    places: tuple[SpatialFact, ...] = ()
    changes: tuple[SpatialMove, ...] = ()
    relations: tuple[Relation, ...] = ()
    health: tuple[HealthFact, ...] = ()
    events: tuple[EventItem, ...] = ()
    recalled: tuple[EventItem, ...] = ()
    query: str | None = None
    #: the budget `to_prompt` uses when called without one
    max_tokens: int | None = None

    def preference(self, key: str) -> ResolvedPreference | None:
        """The resolved preference for ``key``, if the context holds one."""
        return next((p for p in self.preferences if p.key == key), None)

    def shared_setting(self, key: str) -> SharedSetting | None:
        return next((s for s in self.shared if s.key == key), None)

    def to_prompt(self, max_tokens: int | None = None) -> str:
        """The context as prompt text within ``max_tokens`` (default: the budget it was
        assembled with; none: everything), most important items first, none cut in half."""
        budget = self.max_tokens if max_tokens is None else max_tokens
        return pack(self._header(), self._sections(), budget)

    def to_json(self) -> str:
        return _adapter().dump_json(self).decode()

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = _adapter().dump_python(self, mode="json")
        return found

    def _header(self) -> str:
        name = self.profile.name if self.profile else self.user
        parts = [f"Context for {name} ({self.user})", f"task {self.task}"]
        parts.append(self.situation.describe())
        if self.withheld:
            parts.append("withheld: " + ", ".join(self.withheld))
        return " · ".join(parts)

    def _sections(self) -> list[Section]:
        """In priority order: what binds the robot now, who the person is, what they prefer,
        then the surroundings and the history."""
        binding = sorted(self.routines, key=lambda r: not r.routine.constraints)
        preferences = sorted(self.preferences, key=lambda p: (-p.confidence, p.key))
        tz = self.situation.at.tzinfo  # the header's zone: times in the prompt agree with it
        return [
            Section("Now", [r.line() for r in binding]),
            Section("About them", self._about()),
            Section("Health", [h.line() for h in self.health]),
            Section("Shared settings", [s.line() for s in self.shared]),
            Section("Preferences", [p.line() for p in preferences]),
            Section("Where things are", [p.line() for p in self.places]),
            Section("Recently moved", [c.line(tz) for c in self.changes]),
            Section("Related to the request", [e.line(tz) for e in self.recalled]),
            Section("Recent events", [e.line(tz) for e in self.events]),
            Section("Relations", [r.line() for r in self.relations]),
        ]

    def _about(self) -> list[str]:
        lines: list[str] = []
        if self.profile is not None:
            lines.append(_profile_line(self.profile))
        if self.calibration is not None:
            c = self.calibration
            lines.append(
                f"proactivity {c.proactivity:.2f}, verbosity {c.verbosity:.2f}, "
                f"pace {c.pace:.2f}, personal space {c.personal_space_m:.1f} m"
            )
        return lines


def _profile_line(profile: Profile) -> str:
    parts = [f"{profile.name}, {profile.household_role}"]
    if profile.roles:
        parts.append("roles " + ", ".join(profile.roles))
    if profile.languages:
        parts.append("speaks " + ", ".join(profile.languages))
    if profile.accessibility:
        parts.append("needs: " + "; ".join(profile.accessibility))
    parts.extend(f"{name}: {show(value)}" for name, value in sorted(profile.attributes.items()))
    return "; ".join(parts)


@functools.cache
def _adapter() -> TypeAdapter[Context]:
    # built on first use: the schema takes milliseconds to build and most robots never ask
    return TypeAdapter(Context)
