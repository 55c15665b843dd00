"""Preference resolution: many stored values of one key → one value for the situation.

The rules (docs/explanation/context.md has them with examples):

1. **Conditions select.**  Only values whose `Condition` holds in the situation compete; the
   others are set aside with the condition they need.
2. **An explicit statement beats an inferred pattern.**  ``explicit`` and ``correction`` values
   outrank ``implicit`` and ``learned`` ones, however new or confident those are.
3. **The newest statement wins** within a rank, by the hybrid logical time the person stated it
   (``set_at``, or the ``hearth:stated`` marker of a consolidated copy): never the order records
   arrived in, never the wall clock of whichever robot wrote last (DESIGN invariant 3).
4. Ties (one statement on several robots) go to the more specific condition, then to the newest
   write of it (a consolidation knows more), then to the device id: a total order, so every
   robot resolves the same records to the same value.

Confidence is the stored confidence, raised by confirmations since it was written and lowered
by contradictions (both counted, so order never matters), decaying with the age of the newest
evidence towards a floor.  See `confidence`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hearthsync.context.feedback import (
    KEEP_EVENTS,
    Signal,
    canonical,
    drift_event,
    event_ids,
    hlc_ms,
    is_stable,
    moment,
    stated_at,
)
from hearthsync.context.items import Provenance, ResolvedPreference, SetAside, Stage
from hearthsync.context.situation import Situation, describe_condition, holds, specificity
from hearthsync.model.records import Preference

EXPLICIT = frozenset({"explicit", "correction"})
#: each confirmation closes this share of the gap to certainty (0.95 → 0.98, seed §4)
BOOST = 0.6
#: each contradiction multiplies the confidence by this
PENALTY = 0.8
#: confidence decays towards FLOOR with this half-life, in days, since the newest evidence
HALF_LIFE_DAYS: dict[Stage, float] = {"stable": 365.0, "few-shot": 90.0, "inferred": 30.0}
FLOOR: dict[Stage, float] = {"stable": 0.5, "few-shot": 0.5, "inferred": 0.0}
#: a stable value is drifting when contradicted at least this often, and more often than
#: confirmed, in the evidence considered (the history window; `maintain` uses two weeks)
DRIFT_MIN = 3
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """One stored version of a preference, with what resolution needs precomputed."""

    record: Preference
    stated: str
    explicit: bool
    specificity: int
    value_id: str
    stage: Stage
    written_ms: int
    origin: Provenance  #: whose statement, which robot, when, and its evidence events

    @classmethod
    def of(cls, record: Preference) -> Candidate:
        stated = stated_at(record)
        explicit = record.source in EXPLICIT
        stage: Stage = "stable" if is_stable(record) else "few-shot"
        return cls(
            record,
            stated,
            explicit,
            specificity(record.condition),
            canonical(record.value),
            stage if explicit else "inferred",
            hlc_ms(record.set_at),
            Provenance(record.user, _stating_device(stated, record), stated, event_ids(record)),
        )

    @property
    def rank(self) -> tuple[bool, str, int, str, str]:
        r = self.record
        return (self.explicit, self.stated, self.specificity, r.set_at, r.device)

    def provenance(self, extra_events: Sequence[str] = ()) -> Provenance:
        if not extra_events:
            return self.origin
        return dataclasses.replace(self.origin, events=self.origin.events + tuple(extra_events))


def candidates(versions: Iterable[Preference]) -> list[Candidate]:
    """The live ``versions`` of one preference: not deleted, and stated after the newest
    deletion.  A deletion writes a tombstone into its robot's slot only: the other robots'
    older versions stayed, and came back as soon as any version was written after it (an
    explicit one beating the new learned one; found in review).  The newest deletion is a
    tombstone's time or, once its robot wrote the key again over its tombstone, what that
    version keeps of it (``cleared``; found in review too)."""
    held = list(versions)
    deleted = max((v.set_at if v.deleted else v.cleared for v in held), default="")
    found = (Candidate.of(v) for v in held if not v.deleted)
    return [c for c in found if c.stated > deleted]


def _stating_device(stated: str, record: Preference) -> str:
    """The robot the person said it to: the device part of the statement's timestamp."""
    device = stated.split(".", 2)[-1] if stated.count(".") >= 2 else ""
    return device or record.device


@dataclass(frozen=True, slots=True)
class Weight:
    """The evidence counted for one candidate since its record was written."""

    confirmations: int
    contradictions: int
    last_ms: int
    events: tuple[str, ...]


def weigh(
    candidate: Candidate,
    signals: Iterable[Signal],
    tz: dt.tzinfo | None,
    *,
    since_ms: int | None = None,
) -> Weight:
    """Count ``signals`` about ``candidate``'s value that arose where its condition held.

    By default only signals the record has not folded in count: those after the statement
    that its evidence does not list.  (Newer than the record is not enough: confirmations
    made on another robot while partitioned, arriving after this copy was consolidated, are
    older than it and were never counted, on any robot: found in review.)  A copy whose
    evidence may have been cut (`KEEP_EVENTS`), or a record never consolidated, counts those
    newer than itself.  With ``since_ms``, every signal after the statement whose event
    happened since ``since_ms`` counts (what "lately" means for drift).
    """
    after, folded = _folded(candidate) if since_ms is None else (candidate.stated, frozenset())
    plus = minus = 0
    last = candidate.written_ms
    events: list[str] = []
    for signal in signals:
        event = signal.event
        if event.hlc <= after or (since_ms is not None and event.ts < since_ms):
            continue
        if event.id in folded:
            continue
        if not holds(candidate.record.condition, _situation_of(signal, tz)):
            continue
        if signal.supports(candidate.value_id):
            plus, last = plus + 1, max(last, event.ts)
        elif signal.contradicts(candidate.value_id):
            minus += 1
        else:
            continue
        events.append(event.id)
    return Weight(plus, minus, last, tuple(sorted(events)))


def _folded(candidate: Candidate) -> tuple[str, frozenset[str]]:
    """What ``candidate``'s record has counted: the signals up to a stamp, and these events."""
    record = candidate.record
    ids = candidate.origin.events
    if candidate.stated < record.set_at and len(ids) < KEEP_EVENTS:
        return candidate.stated, frozenset(ids)
    return record.set_at, frozenset()


def _situation_of(signal: Signal, tz: dt.tzinfo | None) -> Situation:
    event = signal.event
    at = moment(event.ts, tz or dt.UTC)
    context = event.context
    return Situation(at, context.location, frozenset(context.people_present))


def confidence(candidate: Candidate, weight: Weight, now_ms: int) -> float:
    """``1 - (1 - c)·(1 - BOOST)^confirmations``, times ``PENALTY^contradictions``, then
    decayed towards the stage's floor with its half-life since the newest evidence."""
    stage = candidate.stage
    value = 1.0 - (1.0 - candidate.record.confidence) * (1.0 - BOOST) ** weight.confirmations
    value *= PENALTY**weight.contradictions
    floor = FLOOR[stage]
    age_days = max(0, now_ms - weight.last_ms) / DAY_MS
    if value > floor:
        value = floor + (value - floor) * 0.5 ** (age_days / HALF_LIFE_DAYS[stage])
    return round(value, 4)


def drifting(stage: Stage, weight: Weight) -> bool:
    return (
        stage == "stable"
        and weight.contradictions >= DRIFT_MIN
        and weight.contradictions > weight.confirmations
    )


@dataclass(frozen=True, slots=True)
class Choice:
    """What the situation's conditions alone decide: the winner and what it set aside.

    It depends on the situation only through which conditions hold, so the engine caches it
    per (key, conditions that hold) and only `finish` runs on every call.
    """

    winner: Candidate
    rule: str
    set_aside: tuple[SetAside, ...]


def choose(candidates: Sequence[Candidate], now: Situation) -> Choice | None:
    """Rules 1-4: the winning version for ``now`` (``None`` if no live value applies)."""
    live = [c for c in candidates if not c.record.deleted]
    applicable = [c for c in live if holds(c.record.condition, now)]
    if not applicable:
        return None
    winner = max(applicable, key=lambda c: c.rank)
    return Choice(winner, _rule(winner, applicable), _set_aside(winner, live, applicable))


def finish(
    key: str,
    choice: Choice,
    now: Situation,
    signals: Sequence[Signal] = (),
    lately_ms: int | None = None,
) -> ResolvedPreference:
    """The resolved preference: ``choice`` with its confidence and evidence as of ``now``.

    ``signals`` are the feedback events about ``key`` at hand; those since ``lately_ms``
    (default: all) decide whether a stable value is drifting.
    """
    winner = choice.winner
    weight = weigh(winner, signals, now.at.tzinfo) if signals else _unweighed(winner)
    lately = weigh(winner, signals, now.at.tzinfo, since_ms=lately_ms or 0) if signals else weight
    return ResolvedPreference(
        key=key,
        value=winner.record.value,
        condition=winner.record.condition,
        source=winner.record.source,
        stage=winner.stage,
        confidence=confidence(winner, weight, now.ms),
        confirmations=max(0, winner.record.evidence_count - 1) + weight.confirmations,
        contradictions=weight.contradictions,
        drift=drift_event(winner.record) is not None or drifting(winner.stage, lately),
        rule=choice.rule,
        provenance=winner.provenance(weight.events),
        set_aside=choice.set_aside,
    )


def _unweighed(candidate: Candidate) -> Weight:
    return Weight(0, 0, candidate.written_ms, ())


def resolve(
    key: str,
    candidates: Sequence[Candidate],
    now: Situation,
    signals: Sequence[Signal] = (),
    lately_ms: int | None = None,
) -> ResolvedPreference | None:
    """The value of ``key`` for ``now`` (``None`` if no live value's condition holds)."""
    choice = choose(candidates, now)
    return finish(key, choice, now, signals, lately_ms) if choice else None


def _rule(winner: Candidate, applicable: Sequence[Candidate]) -> str:
    when = describe_condition(winner.record.condition)
    scope = f"applies {when}" if when else "applies always"
    rivals = [c for c in applicable if c.value_id != winner.value_id]
    if not rivals:
        return f"the only value that {scope}"
    if winner.explicit and not any(c.explicit for c in rivals):
        return f"an explicit statement beats a learned pattern; {scope}"
    return f"the most recent statement that {scope}"


def _set_aside(
    winner: Candidate, live: Sequence[Candidate], applicable: Sequence[Candidate]
) -> tuple[SetAside, ...]:
    """Every other value, newest statement first, once each (a value stated on several robots,
    or consolidated, is one alternative)."""
    seen = {(winner.value_id, winner.record.condition.key())}
    applies = {id(c) for c in applicable}
    found: list[SetAside] = []
    for candidate in sorted(live, key=lambda c: c.rank, reverse=True):
        mark = (candidate.value_id, candidate.record.condition.key())
        if mark in seen:
            continue
        seen.add(mark)
        r = candidate.record
        reason = _reason(winner, candidate, id(candidate) in applies)
        found.append(SetAside(r.value, r.source, r.condition, reason, candidate.provenance()))
    return tuple(found)


def _reason(winner: Candidate, other: Candidate, applies: bool) -> str:
    if not applies:
        return f"applies only {describe_condition(other.record.condition)}"
    if winner.explicit and not other.explicit:
        return "a learned pattern; an explicit statement beats it"
    if other.stated < winner.stated:
        return "an older statement, superseded"
    return "a less specific condition"
