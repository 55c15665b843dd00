"""Hybrid logical clocks (DESIGN invariant 3).

"More recent" between records written on different robots is decided by an HLC carried in the
record, never by which concurrent Yrs write won and never by a raw wall clock (robot clocks
drift).  An HLC is (wall milliseconds, logical counter, device id); its string form is fixed
width so that string order is time order::

    0001764062400000.00000.MFZWK3DPMFZWK3DP

The clock is pure: it reads time from the ``now_ms`` callable it is given, so simulations drive
it with a simulated clock.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from hearthsync.errors import ValidationError

log = logging.getLogger(__name__)

_MS_WIDTH = 16
_COUNTER_WIDTH = 5
_MAX_COUNTER = 10**_COUNTER_WIDTH - 1
#: a stamp's text: a constant %-format, a third faster than an f-string of nested widths
_TEXT = f"%0{_MS_WIDTH}d.%0{_COUNTER_WIDTH}d.%s"
#: a stamp as a stored record holds it (``"set_at":"0001764062400000.00000.``, or ``hlc``):
#: records are JSON strings, which a Yrs update carries verbatim.  Not ``at``, which a move
#: holds (with the stamp of its placement's ``set_at``) and a person's values often do
_STORED = re.compile(rb'"(?:set_at|hlc)":"(\d{16}\.\d{5})\.')


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    ms: int
    counter: int
    device: str

    def __str__(self) -> str:
        return _TEXT % (self.ms, self.counter, self.device)

    @classmethod
    def parse(cls, text: str) -> Self:
        parts = text.split(".", 2)
        if (
            len(parts) != 3
            or len(parts[0]) != _MS_WIDTH
            or len(parts[1]) != _COUNTER_WIDTH
            # ASCII: `str.isdigit` takes any Unicode digit, which `int` refuses (U+00B2)
            # or reads into a stamp whose text sorts elsewhere (U+0661): string order must
            # be time order
            or not (_ascii_digits(parts[0]) and _ascii_digits(parts[1]) and parts[2])
        ):
            raise ValidationError(f"not a hybrid logical timestamp: {text!r:.80}", field="hlc")
        return cls(int(parts[0]), int(parts[1]), parts[2])


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


class HybridClock:
    """Issues timestamps that never go backwards and always follow what was observed."""

    def __init__(
        self,
        device: str,
        now_ms: Callable[[], int],
        last: Timestamp | None = None,
        ahead: Timestamp | None = None,
    ):
        self._device = device
        self._now_ms = now_ms
        self._ms = last.ms if last else 0
        self._counter = last.counter if last else 0
        #: the greatest stamp held that this clock did not follow, being too far ahead of it
        #: (`observe`), or given to a write that overtook one (`after`); stored with ``last``
        self.ahead = ahead

    def now(self) -> Timestamp:
        self._tick()
        return Timestamp(self._ms, self._counter, self._device)

    def now_text(self) -> str:
        """``str(self.now())``, without making the `Timestamp` (frozen: slow to build), for a
        write that stores only the text."""
        self._tick()
        return _TEXT % (self._ms, self._counter, self._device)

    def _tick(self) -> None:
        wall = self._now_ms()
        if wall > self._ms:
            self._ms, self._counter = wall, 0
        else:
            self._bump()

    def observe(self, seen: Timestamp, *, max_ahead_ms: int | None = None) -> bool:
        """Fold in a timestamp read from another device's record; with ``max_ahead_ms``,
        only if it is no further ahead of the wall clock than that (`MAX_AHEAD_MS`): a
        glitched clock's year 2106, or a stamp-like string in a person's value, must not drag
        every robot's stamps, and the dates shown from them, along.  Returns whether it did."""
        if max_ahead_ms is not None and seen.ms > self._now_ms() + max_ahead_ms:
            self._hold(seen)
            return False
        if (seen.ms, seen.counter) > (self._ms, self._counter):
            self._ms, self._counter = seen.ms, seen.counter
        return True

    def after(self, newest: Callable[[], str]) -> Timestamp:
        """A stamp for a write that replaces the versions of one key whose greatest stamp
        ``newest()`` gives (asked only if a version may be ahead of this clock): later than
        each of them, whatever the wall clock reads (DESIGN invariant 3).

        The clock follows a version up to `MAX_AHEAD_MS` ahead, as it follows what arrives.
        A version further ahead (stamped by a clock that glitched years ahead, or met by a
        robot whose clock was stopped while it was switched off for days) is overtaken by
        this stamp alone, one tick after it, and the clock stays where it is: a person who
        corrects what a robot shows must win, and one odd stamp must not drag every later
        stamp of the household along.
        """
        stamp = self.now()
        ahead = self.ahead
        if ahead is None or (ahead.ms, ahead.counter) < (stamp.ms, stamp.counter):
            return stamp  # nothing held is stamped after now: the common case costs nothing
        text = newest()
        if text <= str(stamp):  # fixed width: string order is time order
            return stamp
        try:
            held = Timestamp.parse(text)
        except ValidationError:  # a malformed stamp from another robot: nothing to follow
            return stamp
        if self.observe(held, max_ahead_ms=MAX_AHEAD_MS):
            return self.now()
        if held.counter < _MAX_COUNTER:
            overtaking = Timestamp(held.ms, held.counter + 1, self._device)
        elif held.ms + 1 < 10**_MS_WIDTH:
            overtaking = Timestamp(held.ms + 1, 0, self._device)
        else:  # past the last stamp that fits (the year 316 million): no write outranks it
            return stamp
        self._hold(overtaking)
        return overtaking

    def _hold(self, seen: Timestamp) -> None:
        if self.ahead is None or (seen.ms, seen.counter) > (self.ahead.ms, self.ahead.counter):
            self.ahead = Timestamp(seen.ms, seen.counter, seen.device or self._device)

    @property
    def last(self) -> Timestamp:
        return Timestamp(self._ms, self._counter, self._device)

    def _bump(self) -> None:
        if self._counter >= _MAX_COUNTER:  # 100k writes in one ms: borrow the next ms
            self._ms, self._counter = self._ms + 1, 0
        else:
            self._counter += 1


def latest_stored(update: bytes) -> Timestamp | None:
    """The greatest stamp of the records in ``update`` (a Yrs update of any document), or
    ``None``: what a clock must `observe` when the update is merged, so that every write this
    robot makes afterwards is stamped after every record it holds, however slow its wall clock
    (DESIGN invariant 3).  Fixed-width digits: the greatest bytes are the greatest stamp."""
    found = _STORED.findall(update)
    if not found:
        return None
    ms, counter = max(found).split(b".")
    return Timestamp(int(ms), int(counter), "")


#: no clock that works reads earlier than this (2026-01-01T00:00Z, before this code was
#: written): a robot without a battery-backed clock boots at 1970 or at the date its system
#: was built, and a clock that reads earlier is broken
EARLIEST = float(calendar.timegm((2026, 1, 1, 0, 0, 0)))
#: a system clock more than this behind a date its household's authority signed is broken
MAX_BACK_S = 86_400.0
#: how fast a floor moves on while a plausible system clock is behind it: it closes a gap in
#: twice its length, where a floor at full speed would stay ahead of the clock for good
SLEW = 0.5
#: a stamp received further ahead of this robot's clock than this is not followed (ms)
MAX_AHEAD_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ClockHints:
    """What a robot's credentials say of the time (`hearthsync.enrolment.clock_hints`)."""

    issued: float  #: the newest issued_at of the certificates it trusts: it is at least then
    expires: float  #: its own certificate's expires_at: it never ran after that


class FloorWall:
    """The wall clock a robot goes by: its system clock, but never earlier than a reading it
    returned before, nor than ``floor`` (what it last read before it stopped).

    A robot without a battery-backed clock that boots in a house without internet reads 1970:
    without a floor it would stamp its events in 1970, and find every certificate of its
    household "not yet valid", so it could not even open its credentials.  While the system
    clock is behind the floor, the floor moves on: at the monotonic rate while the system
    clock is broken (before `EARLIEST`, or a day before a certificate the household signed),
    at `SLEW` of it while it is plausible (set back by NTP, a step back), so that the system
    clock catches up and leads again, rather than the robot running ahead of it for good.
    """

    def __init__(
        self,
        system: Callable[[], float],
        floor: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        plausible_from: float = EARLIEST,
    ) -> None:
        self._system = system
        self._monotonic = monotonic
        self._floor = floor
        self._since = monotonic()
        self._plausible_from = plausible_from
        self._leading = False  #: whether the floor was ahead of the system clock last read

    @classmethod
    def start(
        cls,
        system: Callable[[], float],
        last: float | None,
        monotonic: Callable[[], float] = time.monotonic,
        hints: ClockHints | None = None,
    ) -> FloorWall:
        """The wall clock of a robot that last read ``last`` before it stopped (stored; None
        if it never ran), with what its credentials say of the time, if it has any.

        ``last`` is the floor, unless it was a glitch: later than the robot's certificate
        expires (it could not have run then), or more than `MAX_BACK_S` ahead of a system
        clock that is believable (not before any certificate it holds; without credentials,
        after `EARLIEST`).  An RTC with a flat battery can read 2106 once, and a floor kept
        there would expire every certificate for good.  The newest certificate it holds is a
        floor too: it was good at some time the robot read.
        """
        now = system()
        plausible_from = EARLIEST
        floor = EARLIEST
        if hints is not None:
            plausible_from = max(plausible_from, hints.issued - MAX_BACK_S)
            # it stores only certificates that were good at a time it read: it read that late
            floor = max(floor, hints.issued)
        if last is not None and last > now:
            # after its own certificate expires it could not have run; more than a day ahead
            # of a clock that every certificate it holds finds good, it was a glitch
            believable = now >= (hints.issued if hints is not None else plausible_from)
            glitch = (hints is not None and last >= hints.expires) or (
                believable and last - now > MAX_BACK_S
            )
            if glitch:
                log.warning(
                    "the time this robot last read, %s, cannot be right (the system clock "
                    "reads %s); going by the system clock", _iso(last), _iso(now),
                )  # fmt: skip
            else:
                floor = max(floor, last)
        if now < floor:
            log.warning(
                "the system clock reads %s, before %s: going by the latter, moving on, until "
                "the clock catches up", _iso(now), _iso(floor),
            )  # fmt: skip
        return cls(system, floor, monotonic, plausible_from=plausible_from)

    def __call__(self) -> float:
        now, elapsed = self._system(), self._monotonic()
        if self._leading:  # the floor moves on only while it leads: a clock read twice in
            # one tick (or a test's clock standing still) is not behind
            rate = 1.0 if now < self._plausible_from else SLEW
            self._floor += rate * max(0.0, elapsed - self._since)
        self._since = elapsed
        if now >= self._floor:
            self._floor, self._leading = now, False  # the system clock leads; keep its reading
            return now
        self._leading = True
        return self._floor


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
