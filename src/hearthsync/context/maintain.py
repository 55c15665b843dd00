"""The slow loop: fold confirmations into preferences, promote, decay, and flag drift.

`maintain` runs now and then (``hearth maintain``, or a robot's idle hour).  For every stored
preference value, the newest statement under each condition, it counts the feedback events since
the record was last written (`hearthsync.context.feedback`) and writes, through the peer's public
`set_preference`, a consolidated copy when something changed:

* **fold**: confirmations raise the stored confidence and the evidence count;
* **promote**: a stated value confirmed at least `PROMOTE_AFTER` times over at least
  `PROMOTE_SPAN_DAYS` days, and never contradicted since, becomes *stable* (seed §4, "few-shot
  correction" → "stable preference"): it decays more slowly;
* **decay**: a stored confidence that has decayed (with age) or been contradicted (by feedback)
  by `DECAY_STEP` or more is written down;
* **drift**: a stable value contradicted at least `DRIFT_MIN` times in the last
  `DRIFT_WINDOW_DAYS` days, more often than confirmed, is flagged: a ``SYSTEM`` event records
  what contradicted it, and the record is marked, so every robot's context says to ask.

A consolidated copy keeps the statement's hybrid time (``hearth:stated``), so it never outranks
a newer statement made meanwhile on another robot (resolution rule 3).  It never turns an
explicit value into an inferred one, nor writes over a newer statement.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hearthsync.context.feedback import (
    DRIFT,
    KEEP_EVENTS,
    STABLE,
    STATED,
    Signal,
    drift_event,
    event_ids,
    hlc_ms,
    is_stable,
    signals_by_key,
)
from hearthsync.context.port import PeerPort
from hearthsync.context.resolve import (
    DAY_MS,
    Candidate,
    Weight,
    candidates,
    confidence,
    drifting,
    weigh,
)
from hearthsync.context.situation import window_ms
from hearthsync.errors import NotFoundError, ValidationError, unknown_user
from hearthsync.ids import check_name, key_domain
from hearthsync.model.records import EventType, Preference

log = logging.getLogger(__name__)

PROMOTE_AFTER = 10
PROMOTE_SPAN_DAYS = 7
DRIFT_WINDOW_DAYS = 14
DECAY_STEP = 0.05

Action = Literal["folded", "promoted", "decayed", "contradicted", "drift"]


@dataclass(frozen=True, slots=True)
class Change:
    """One thing the slow loop did."""

    user: str
    key: str
    condition: str  #: the condition's canonical key ('' when unconditional)
    action: Action
    confidence: float
    detail: str = ""

    def line(self) -> str:
        """The change in one line, for people: ``alice tea/mug#weekday: promoted (0.98)``."""
        where = f"{self.key}#{self.condition}" if self.condition else self.key
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.user} {where}: {self.action} ({self.confidence:.2f}){detail}"


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    changes: tuple[Change, ...]

    def actions(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]


async def maintain(
    peer: PeerPort,
    *,
    now: dt.datetime | None = None,
    lookback: str = "90d",
    users: Sequence[str] | None = None,
) -> MaintenanceReport:
    """Run the slow loop over ``users`` (default: everyone), counting feedback of the last
    ``lookback``; every write goes through ``peer``'s public methods and is durable on return.

    Raises `ValidationError` for a malformed ``lookback`` or user id and `NotFoundError` for a
    user the household does not have, before anything is written."""
    at = now or dt.datetime.now().astimezone()
    if at.tzinfo is None:
        raise ValidationError("now must be a timezone-aware datetime", field="now")
    since = int(at.timestamp() * 1000) - window_ms(lookback, field="lookback")
    changes: list[Change] = []
    for user in list(peer.users()) if users is None else _known(peer, users):
        changes += await _maintain_user(peer, user, at, since)
    return MaintenanceReport(tuple(changes))


def _known(peer: PeerPort, users: Sequence[str]) -> list[str]:
    """``users``, each once, if every one is a well-formed id of a user of the household."""
    if isinstance(users, str):  # a str is a Sequence[str]: 'alice' would be five users
        raise ValidationError(f"users must be a list of user ids, got {users!r:.80}", field="users")
    household = set(peer.users())
    for user in users:
        check_name(user, field="users")
        if user not in household:
            forgotten = user in peer.forgotten_users()
            raise NotFoundError(unknown_user(user, forgotten=forgotten))
    return list(dict.fromkeys(users))


async def _maintain_user(peer: PeerPort, user: str, at: dt.datetime, since: int) -> list[Change]:
    now_ms = int(at.timestamp() * 1000)
    signals = signals_by_key(peer.events(user, since=since, until=now_ms + 1))
    changes: list[Change] = []
    for winner in _slot_winners(peer, user):
        verdict = _judge(winner, signals.get(winner.record.key, []), at)
        if verdict is None:
            continue
        try:
            written = await _write(peer, winner, verdict)
        except ValidationError as exc:  # a value stored under older rules: left as it is
            log.warning("maintain: %s %s not rewritten: %s", user, winner.record.key, exc)
            continue
        except NotFoundError:  # forgotten meanwhile: nothing of theirs is written again
            log.info("maintain: %s was forgotten while the slow loop ran", user)
            break
        if written:
            changes.append(verdict.change)
    return changes


def _slot_winners(peer: PeerPort, user: str) -> list[Candidate]:
    """The value that counts under each (key, condition): its newest statement."""
    found = (_slot_winner(peer, user, latest) for latest in peer.preferences(user))
    return [winner for winner in found if winner is not None]


def _slot_winner(peer: PeerPort, user: str, latest: Preference) -> Candidate | None:
    versions = peer.preference_history(user, latest.key, latest.condition)
    live = candidates(versions)
    return max(live, key=lambda c: c.rank) if live else None


@dataclass(frozen=True, slots=True)
class _Verdict:
    change: Change
    weight: Weight
    stable: bool
    drift: str | None  #: a new drift flag's description, to record as an event


def _judge(winner: Candidate, signals: Sequence[Signal], at: dt.datetime) -> _Verdict | None:
    """What the slow loop should write for ``winner``, if anything."""
    now_ms = int(at.timestamp() * 1000)
    weight = weigh(winner, signals, at.tzinfo)
    value = confidence(winner, weight, now_ms)
    r = winner.record

    def verdict(action: Action, detail: str = "", *, stable: bool = False) -> _Verdict:
        change = Change(r.user, r.key, r.condition.key(), action, value, detail)
        return _Verdict(
            change, weight, stable or is_stable(r), detail if action == "drift" else None
        )

    if winner.stage == "stable" and drift_event(r) is None:
        lately = weigh(winner, signals, at.tzinfo, since_ms=now_ms - DRIFT_WINDOW_DAYS * DAY_MS)
        if drifting("stable", lately):
            return verdict("drift", _contradicted_by(winner, signals, lately))
    if winner.stage == "few-shot" and _promotable(winner, weight):
        return verdict("promoted", f"{_total(winner, weight)} confirmations", stable=True)
    if weight.confirmations:
        return verdict("folded", f"{weight.confirmations} new confirmations")
    if r.confidence - value >= DECAY_STEP:
        action: Action = "contradicted" if weight.contradictions else "decayed"
        return verdict(action, f"{r.confidence:.2f} → {value:.2f}")
    return None


def _total(winner: Candidate, weight: Weight) -> int:
    return max(0, winner.record.evidence_count - 1) + weight.confirmations


def _promotable(winner: Candidate, weight: Weight) -> bool:
    span_days = (weight.last_ms - hlc_ms(winner.stated)) / DAY_MS
    return (
        _total(winner, weight) >= PROMOTE_AFTER
        and span_days >= PROMOTE_SPAN_DAYS
        and weight.contradictions == 0
    )


def _contradicted_by(winner: Candidate, signals: Sequence[Signal], lately: Weight) -> str:
    ids = set(lately.events)
    others = sorted({s.value for s in signals if s.event.id in ids and s.value != winner.value_id})
    return f"contradicted {lately.contradictions} times lately" + (
        f", by {', '.join(others)}" if others else ""
    )


async def _write(peer: PeerPort, winner: Candidate, verdict: _Verdict) -> bool:
    """Write the consolidated copy, unless a newer version arrived meanwhile (then the next
    run judges that one).  Returns whether it wrote."""
    r = winner.record
    flag = drift_event(r)
    if verdict.drift is not None:
        domain = key_domain(r.key)
        event = await peer.record_event(
            r.user,
            EventType.SYSTEM,
            domain,
            text=f"{r.key} drifting: {verdict.drift}",
            payload={"key": r.key, "value": r.value, "drift": verdict.drift},
        )
        flag = event.id
    # Every queued write applied, then check and enqueue with no await in between: a
    # correction made meanwhile on this robot is never overwritten by an older statement.
    await peer.flush()
    if _slot_winner(peer, r.user, r) != winner:
        return False
    await peer.set_preference(
        r.user,
        r.key,
        r.value,
        source=r.source,
        confidence=verdict.change.confidence,
        condition=r.condition,
        evidence=_evidence(winner, verdict, flag),
        evidence_count=r.evidence_count + verdict.weight.confirmations,
        note=r.note,
    )
    return True


def _evidence(winner: Candidate, verdict: _Verdict, drift: str | None) -> list[str]:
    """Markers first, then the newest justifying events."""
    markers = [f"{STATED}{winner.stated}"]
    if verdict.stable:
        markers.append(STABLE)
    if drift is not None:
        markers.append(f"{DRIFT}{drift}")
    events = dict.fromkeys([*event_ids(winner.record), *verdict.weight.events])
    return markers + list(events)[-KEEP_EVENTS:]
