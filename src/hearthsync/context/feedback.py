"""How a robot records what happened after it acted on a preference, and how those events are
read back as evidence (docs/explanation/context.md, "Recording feedback").

The fast loop writes two kinds of events, each naming the preference key in its payload:

* ``CORRECTION`` ``{"key": "tea/mug", "value": "green-mug", "served": "blue-mug"}``: the person
  said what they want instead.  `correct` records it *and* writes the new value at once as a
  ``correction`` preference whose evidence is the event.
* ``FEEDBACK_IMPLICIT`` ``{"key": "tea/mug", "value": "green-mug", "outcome": "kept"}``: what
  happened without words.  ``kept``: served and not corrected (a confirmation); ``refused``:
  served and turned down; ``chose``: the person took that value themselves (a confirmation of
  it, and a contradiction of any other value that applied then).

Events are immutable and synced, so every robot reads the same evidence; counting it is
commutative, so the order events arrive in never matters.

Until `Preference` has fields for them (see the report of issue 5), the slow loop keeps three
facts in a record's ``evidence`` as markers beside the event ids: ``hearth:stated=<hlc>`` (when
the person said it: a consolidated copy keeps the original statement's time), ``hearth:stable``
(promoted from a few-shot correction to a stable preference) and ``hearth:drift=<event id>``.
``evidence`` is a system field, so these hybrid timestamps are never mistaken for personal data.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hearthsync.context.port import PeerPort
from hearthsync.errors import ValidationError
from hearthsync.ids import KEY_RE, key_domain
from hearthsync.model.records import (
    MAX_LIST,
    Condition,
    ContextSnapshot,
    EventType,
    InteractionEvent,
    Preference,
    as_condition,
    is_event_id,
)

Outcome = Literal["kept", "refused", "chose"]
OUTCOMES: tuple[Outcome, ...] = ("kept", "refused", "chose")
_OUTCOME: dict[str, Outcome] = {outcome: outcome for outcome in OUTCOMES}
#: the confidence of a value the person just stated as a correction (seed §4)
CORRECTION_CONFIDENCE = 0.95

STATED = "hearth:stated="
STABLE = "hearth:stable"
DRIFT = "hearth:drift="
MARKER = "hearth:"
#: event ids a consolidated copy keeps in its evidence (the newest), beside up to 3 markers
KEEP_EVENTS = MAX_LIST - 4


@dataclass(frozen=True, slots=True)
class Signal:
    """One piece of implicit evidence about one value of one key."""

    key: str
    value: str  #: canonical JSON of the value the event is about
    outcome: Literal["kept", "refused", "chose", "corrected"]
    event: InteractionEvent

    def supports(self, value: str) -> bool:
        return self.value == value and self.outcome in ("kept", "chose")

    def contradicts(self, value: str) -> bool:
        if self.outcome == "chose":
            return self.value != value
        return self.value == value and self.outcome in ("refused", "corrected")


def canonical(value: object) -> str:
    """One string per JSON value, so that ``{"a": 1, "b": 2}`` equals ``{"b": 2, "a": 1}``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def signal_of(event: InteractionEvent) -> Signal | None:
    """The evidence ``event`` carries, or ``None`` if it names no preference."""
    payload = event.payload
    if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
        return None
    key = str(payload["key"])
    outcome = _OUTCOME.get(str(payload.get("outcome")))
    if event.type is EventType.FEEDBACK_IMPLICIT and outcome is not None:
        return Signal(key, canonical(payload.get("value")), outcome, event)
    if event.type is EventType.CORRECTION and "served" in payload:
        return Signal(key, canonical(payload["served"]), "corrected", event)
    return None


def signals_by_key(events: Iterable[InteractionEvent]) -> dict[str, list[Signal]]:
    found: dict[str, list[Signal]] = {}
    for event in events:
        signal = signal_of(event)
        if signal is not None:
            found.setdefault(signal.key, []).append(signal)
    return found


# ------------------------------------------------------------------------- markers


def stated_at(record: Preference) -> str:
    """When the person stated ``record``'s value: its marker if consolidated, else ``set_at``.

    Never after ``set_at``: a copy is consolidated after the statement it keeps.  A marker
    past its own record's stamp (written by a caller, or by a clock far ahead) outranked
    every later statement under rule 3, for good (found in review); the record's stamp
    follows the clock rules every write does (`HybridClock.after`)."""
    for item in record.evidence:
        if item.startswith(STATED):
            stated = item[len(STATED) :]
            return stated if not record.set_at or stated <= record.set_at else record.set_at
    return record.set_at


def is_stable(record: Preference) -> bool:
    return STABLE in record.evidence


def drift_event(record: Preference) -> str | None:
    for item in record.evidence:
        if item.startswith(DRIFT):
            return item[len(DRIFT) :]
    return None


def event_ids(record: Preference) -> tuple[str, ...]:
    """The evidence that are events (markers left out, and whatever else a record stored
    under older rules holds: evidence once took any short string)."""
    return tuple(item for item in record.evidence if is_event_id(item))


def hlc_ms(hlc: str) -> int:
    """The wall-clock part of a hybrid timestamp (0 if absent): for ages and dates only, never
    for ordering (DESIGN invariant 3 orders by the whole timestamp)."""
    head = hlc.partition(".")[0]
    return int(head) if head.isdigit() else 0


def moment(ms: int, tz: dt.tzinfo | None = dt.UTC) -> dt.datetime:
    """The time ``ms`` (since 1970) in ``tz`` (None: this machine's zone).  Past what a
    datetime holds (an event may be stamped up to 2**53 ms, the year 285,000; a stamp's 16
    digits go further), the last moment it does: a context holding such an event was a 500
    at every call (found in review)."""
    try:
        return dt.datetime.fromtimestamp(ms / 1000, tz).astimezone(tz)
    except (OverflowError, OSError, ValueError):
        return dt.datetime.max.replace(tzinfo=tz or dt.UTC)


def hlc_date(hlc: str, tz: dt.tzinfo | None = dt.UTC) -> str:
    return moment(hlc_ms(hlc), tz).strftime("%Y-%m-%d")


# ------------------------------------------------------------------------- the fast loop


def _domain(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValidationError(
            f"key must look like 'domain/key' (a-z, 0-9, '_', '-', '.'), got {key!r:.80}",
            field="key",
        )
    return key_domain(key)


async def correct(
    peer: PeerPort,
    user: str,
    key: str,
    value: Any,
    *,
    served: Any = None,
    condition: Condition | None = None,
    text: str = "",
    context: ContextSnapshot | dict[str, Any] | None = None,
    ts: int | None = None,
) -> Preference:
    """The person corrected the robot: record the ``CORRECTION`` and apply it at once.

    The preference is written with source ``correction`` and confidence 0.95, justified by the
    event; `maintain` later promotes it to stable once it is confirmed consistently.

    A correction the preference would refuse (a key without its domain, a bad condition or
    value) raises before anything is written: its event, recorded first, stayed in the
    history and synced, and with ``served`` counted against the value held (found in
    review).
    """
    condition = as_condition(condition)
    Preference.build(
        user=user, key=key, value=value, source="correction", confidence=CORRECTION_CONFIDENCE,
        condition=condition,
    )  # fmt: skip
    payload: dict[str, Any] = {"key": key, "value": value}
    if served is not None:
        payload["served"] = served
    event = await peer.record_event(
        user, EventType.CORRECTION, _domain(key), text=text, payload=payload, context=context,
        ts=ts,
    )  # fmt: skip
    return await peer.set_preference(
        user,
        key,
        value,
        source="correction",
        confidence=CORRECTION_CONFIDENCE,
        condition=condition,
        evidence=[event.id],
    )


async def feedback(
    peer: PeerPort,
    user: str,
    key: str,
    value: Any,
    outcome: Outcome = "kept",
    *,
    text: str = "",
    context: ContextSnapshot | dict[str, Any] | None = None,
    ts: int | None = None,
) -> InteractionEvent:
    """Record implicit feedback about ``value`` of ``key`` (see the module docstring)."""
    if outcome not in OUTCOMES:
        raise ValidationError(
            f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r:.40}", field="outcome"
        )
    payload = {"key": key, "value": value, "outcome": outcome}
    return await peer.record_event(
        user, EventType.FEEDBACK_IMPLICIT, _domain(key), text=text, payload=payload,
        context=context, ts=ts,
    )  # fmt: skip


def served_values(signals: Sequence[Signal]) -> list[str]:
    """Distinct values named by ``signals``, in first-seen order (for drift reports)."""
    return list(dict.fromkeys(signal.value for signal in signals))
