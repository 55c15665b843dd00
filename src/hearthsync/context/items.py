"""What a `Context` is made of: typed, immutable items, each with its provenance.

Every item can say where it came from (`Provenance`: whose it is, which robot recorded it, when
by hybrid logical time, and the events that justify it) and render itself as one prompt line
(`line`), which `hearthsync.context.prompt` packs whole or not at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

from hearthsync.context.feedback import canonical, hlc_ms, moment
from hearthsync.context.situation import describe_condition
from hearthsync.model.records import (
    Condition,
    HealthRecord,
    InteractionEvent,
    Placement,
    Relationship,
    Routine,
    SpatialChange,
)

Stage = Literal["few-shot", "stable", "inferred"]


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who said or did it, on which robot, when, and the events that justify it."""

    who: str | None  #: the user it came from (``None`` for facts about the home)
    device: str  #: id of the robot that recorded it
    hlc: str  #: its hybrid logical timestamp (orders it; the wall part dates it)
    events: tuple[str, ...] = ()

    @property
    def when(self) -> dt.datetime | None:
        ms = hlc_ms(self.hlc)
        return _local(ms, dt.UTC) if ms else None


def show(value: JsonValue) -> str:
    """A value as a prompt shows it: strings bare, anything else as compact JSON."""
    return value if isinstance(value, str) else canonical(value)


@dataclass(frozen=True, slots=True)
class SetAside:
    """A value that was not chosen, and why."""

    value: JsonValue
    source: str
    condition: Condition
    reason: str
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class ResolvedPreference:
    """One preference resolved to one value for the situation, with what it set aside."""

    key: str
    value: JsonValue
    condition: Condition
    source: str
    stage: Stage
    confidence: float
    #: confirmations since the person stated it (folded by `maintain` plus any newer ones)
    confirmations: int
    #: contradictions counted since the last consolidation
    contradictions: int
    drift: bool
    rule: str  #: why this value won, in words
    provenance: Provenance
    set_aside: tuple[SetAside, ...] = ()

    def line(self) -> str:
        when = describe_condition(self.condition)
        parts = [f"{self.key}: {show(self.value)}"]
        notes = [self.source, f"confidence {self.confidence:.2f}", self.stage]
        if when:
            notes.insert(0, when)
        if self.drift:
            notes.append("drifting: ask before relying on it")
        return f"{parts[0]} ({', '.join(notes)})"


@dataclass(frozen=True, slots=True)
class SharedSetting:
    """A setting several present people share (the thermostat), and whose wish it follows."""

    key: str
    value: JsonValue
    followed: tuple[str, ...]  #: the users whose preference the value follows
    reason: str
    wishes: tuple[tuple[str, JsonValue], ...]  #: each present person's own value
    provenance: tuple[Provenance, ...]

    def line(self) -> str:
        return f"{self.key}: {show(self.value)} ({self.reason})"


@dataclass(frozen=True, slots=True)
class ActiveRoutine:
    """A routine under way now; its constraints bind every robot in the home."""

    routine: Routine

    @property
    def provenance(self) -> Provenance:
        r = self.routine
        return Provenance(r.user, r.device, r.set_at)

    def line(self) -> str:
        r = self.routine
        whose = f"{r.user}'s " if r.user else ""
        span = f" until {r.before}" if r.before else ""
        rules = f": {'; '.join(r.constraints)}" if r.constraints else ""
        return f"{whose}{r.label}{span}{rules}"


@dataclass(frozen=True, slots=True)
class SpatialFact:
    """Where a thing is: the user's own things anywhere, and everything at the location."""

    placement: Placement
    region_label: str | None
    mine: bool

    @property
    def provenance(self) -> Provenance:
        p = self.placement
        return Provenance(p.owner, p.device, p.set_at)

    def line(self) -> str:
        p = self.placement
        where = self.region_label or p.region or "no known place"
        verb = "belongs" if p.kind == "belongs" else "was seen"
        owner = f" ({p.owner}'s)" if p.owner else ""
        return f"{p.label}{owner} {verb} in {where}"


@dataclass(frozen=True, slots=True)
class SpatialMove:
    """A recent change of place."""

    change: SpatialChange
    label: str

    @property
    def provenance(self) -> Provenance:
        c = self.change
        return Provenance(None, c.device, c.at)

    def line(self, tz: dt.tzinfo | None = dt.UTC) -> str:
        """The move, dated in ``tz``: the zone of the context's time, so the day agrees with
        the header's."""
        c = self.change
        day = _local(hlc_ms(c.at), tz).strftime("%Y-%m-%d")
        if not c.from_region:  # first seen: nothing was moved
            return f"{self.label} placed in {c.to_region} ({day})"
        return f"{self.label} moved from {c.from_region} to {c.to_region} ({day})"


@dataclass(frozen=True, slots=True)
class EventItem:
    """An event of the history: recent in the window, or recalled for the query (``score``)."""

    event: InteractionEvent
    score: float | None = None

    @property
    def provenance(self) -> Provenance:
        e = self.event
        return Provenance(e.user, e.device, e.hlc, (e.id,))

    def line(self, tz: dt.tzinfo | None = dt.UTC) -> str:
        """The event, timed in ``tz``: the zone of the context's time, so an evening event is
        not read as early next morning beside a header in local time."""
        e = self.event
        day = _local(e.ts, tz).strftime("%Y-%m-%d %H:%M")
        what = e.text or _payload_words(e.payload)
        score = f" (similarity {self.score:.2f})" if self.score is not None else ""
        return f"{day} {e.type.value.lower()} [{e.domain}] {what}{score}"


@dataclass(frozen=True, slots=True)
class HealthFact:
    """A record of the health scope (only in contexts of tasks granted ``health``)."""

    record: HealthRecord

    @property
    def provenance(self) -> Provenance:
        r = self.record
        return Provenance(r.user, r.device, r.set_at)

    def line(self) -> str:
        r = self.record
        note = f" ({r.note})" if r.note else ""
        return f"{r.key}: {show(r.value)}{note}"


@dataclass(frozen=True, slots=True)
class Relation:
    """An edge of the household graph touching the user."""

    relationship: Relationship

    @property
    def provenance(self) -> Provenance:
        r = self.relationship
        return Provenance(r.subject, r.device, r.set_at)

    def line(self) -> str:
        r = self.relationship
        note = f" ({r.note})" if r.note else ""
        return f"{r.subject} {r.relation.replace('_', ' ')} {r.object}{note}"


def _local(ms: int, tz: dt.tzinfo | None) -> dt.datetime:
    return moment(ms, tz or dt.UTC)


def _payload_words(payload: JsonValue) -> str:
    """A feedback payload in words (``kept tea/mug: green-mug``), anything else as JSON."""
    if isinstance(payload, dict) and {"key", "value", "outcome"} <= payload.keys():
        return f"{payload['outcome']} {payload['key']}: {show(payload['value'])}"
    return show(payload)
