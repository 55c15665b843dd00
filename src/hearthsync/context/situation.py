"""The situation a context is assembled for, and when conditions and routines hold in it.

Time is the household's local time: a `Condition(days="weekend", after="07:00")` means seven in
the morning where the robot is, so a `Situation` holds an aware datetime and reads its fields in
that datetime's own zone.  Naive datetimes are refused: a robot that guesses the zone serves the
weekday coffee on Saturday morning in half the world.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from hearthsync.errors import ValidationError
from hearthsync.ids import check_name
from hearthsync.model.records import Condition, Routine

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"(?P<count>\d{1,5})(?P<unit>[mhdw])")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
MAX_WINDOW_MS = 3_660 * 86_400_000  # ten years: older than that is archive, not context


@dataclass(frozen=True, slots=True)
class Situation:
    """When, where and with whom: what conditions are evaluated against."""

    at: dt.datetime
    location: str | None = None
    #: the other people present (not the user the context is for)
    present: frozenset[str] = frozenset()
    #: ``at`` in milliseconds since the epoch
    ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ms", int(self.at.timestamp() * 1000))

    def without(self, forgotten: Iterable[str]) -> Situation:
        """This situation with no forgotten user present: a forgotten id names nobody (a
        returning person gets a new one), so another user's "when bob is present" must not
        apply for it (found in review)."""
        gone = self.present.intersection(forgotten)
        return replace(self, present=self.present - gone) if gone else self

    @property
    def weekend(self) -> bool:
        return self.at.weekday() >= 5

    @property
    def clock(self) -> str:
        """The local time of day as ``HH:MM`` (what condition bounds are compared with)."""
        return f"{self.at.hour:02d}:{self.at.minute:02d}"

    @property
    def day(self) -> str:
        return DAY_NAMES[self.at.weekday()]

    def describe(self) -> str:
        """``Sat 2026-03-14 07:30 · kitchen · with bob``: for prompts and explanations."""
        parts = [self.at.strftime("%a %Y-%m-%d %H:%M")]
        if self.location:
            parts.append(self.location)
        if self.present:
            parts.append("with " + ", ".join(sorted(self.present)))
        return " · ".join(parts)


#: the times a context may be asked for (a history window before the first still has months)
FIRST_YEAR, LAST_YEAR = 1970, 9998


def situation(
    user: str,
    at: dt.datetime | None,
    location: str | None = None,
    present: Iterable[str] = (),
) -> Situation:
    """Validate the caller's description of the situation (the machine's zone if ``at`` is
    ``None``)."""
    if at is None:
        at = dt.datetime.now().astimezone()
    if not isinstance(at, dt.datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValidationError(
            f"time must be a timezone-aware datetime, got {at!r:.80}", field="time"
        )
    try:
        year = at.astimezone(dt.UTC).year
    except OverflowError:  # a year 1 or 9999 that UTC moves out of range
        year = 0
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValidationError(
            f"time must fall between the years {FIRST_YEAR} and {LAST_YEAR}, got {at.isoformat()}",
            field="time",
        )
    if location is not None:
        check_name(location, field="location")
    if isinstance(present, str | bytes):  # "bob" was read as the people "b" and "o"
        raise ValidationError(
            f"present must be a list of user ids, not one string: [{present!r:.60}]?",
            field="present",
        )
    others = frozenset(check_name(name, field="present") for name in present) - {user}
    return Situation(at, location, others)


def window_ms(text: str, *, field: str = "history_window") -> int:
    """``"7d"`` → milliseconds.  Units: m(inutes), h(ours), d(ays), w(eeks).  A bad one is
    refused under ``field``, the name its caller gave it."""
    match = _WINDOW.fullmatch(text) if isinstance(text, str) else None
    ms = int(match["count"]) * _UNIT_MS[match["unit"]] if match else 0
    if not 0 < ms <= MAX_WINDOW_MS:
        raise ValidationError(
            f"{field} must look like '90m', '24h', '7d' or '2w' and be between 1 minute and "
            f"10 years, got {text!r:.40}",
            field=field,
        )
    return ms


def in_window(clock: str, after: str | None, before: str | None) -> bool:
    """Whether ``clock`` lies in ``[after, before)``; a window may run past midnight."""
    if after is None and before is None:
        return True
    if after is not None and before is not None and after > before:
        return clock >= after or clock < before
    return (after is None or clock >= after) and (before is None or clock < before)


def holds(condition: Condition, now: Situation) -> bool:
    """Whether every part of ``condition`` holds in ``now`` (an empty condition always holds)."""
    if condition.days is not None:
        weekend = _weekday(now, condition.after, condition.before) >= 5
        if (condition.days == "weekend") != weekend:
            return False
    if not in_window(now.clock, condition.after, condition.before):
        return False
    if condition.location is not None and condition.location != now.location:
        return False
    return all(name in now.present for name in condition.with_users)


def specificity(condition: Condition) -> int:
    """How many aspects of the situation ``condition`` pins down (a tie-breaker only)."""
    return (
        (condition.days is not None)
        + (condition.after is not None or condition.before is not None)
        + (condition.location is not None)
        + len(condition.with_users)
    )


def describe_condition(condition: Condition) -> str:
    """``on weekends``, ``in alice-office``, ``after 18:00 with bob``; ``""`` if unconditional."""
    parts: list[str] = []
    if condition.days:
        parts.append(f"on {condition.days}s")
    if condition.after and condition.before:
        parts.append(f"from {condition.after} to {condition.before}")
    elif condition.after:
        parts.append(f"after {condition.after}")
    elif condition.before:
        parts.append(f"before {condition.before}")
    if condition.location:
        parts.append(f"in {condition.location}")
    if condition.with_users:
        parts.append("with " + " and ".join(condition.with_users))
    return " ".join(parts)


def routine_active(routine: Routine, now: Situation) -> bool:
    """Whether ``routine`` is under way: its day and its time window hold.

    The early-morning part of a window that runs past midnight belongs to the day it started
    on (Friday's 22:00-02:00 is active at 01:00 on Saturday).
    """
    if routine.deleted or not in_window(now.clock, routine.after, routine.before):
        return False
    if not routine.days:
        return True
    return DAY_NAMES[_weekday(now, routine.after, routine.before)] in routine.days


def _weekday(now: Situation, after: str | None, before: str | None) -> int:
    """The day (Monday 0) a window ``[after, before)`` holding now started on: the
    early-morning part of one that runs past midnight belongs to the day before.  Conditions
    and routines count alike (found in review: a "weekend, 22:00-02:00" preference held on
    Friday night after midnight and not on Sunday night, and a routine the other way)."""
    day = now.at.weekday()
    if after is not None and before is not None and after > before and now.clock < before:
        day = (day - 1) % 7
    return day
