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
#: a stamp as a stored record holds it (``"set_at":"0001764062400000.00000.``, or ``hlc``, or
#: ``at``): records are JSON strings, which a Yrs update carries verbatim
_STORED = re.compile(rb'"(?:set_at|hlc|at)":"(\d{16}\.\d{5})\.')


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    ms: int
    counter: int
    device: str

    def __str__(self) -> str:
        return f"{self.ms:0{_MS_WIDTH}d}.{self.counter:0{_COUNTER_WIDTH}d}.{self.device}"

    @classmethod
    def parse(cls, text: str) -> Self:
        parts = text.split(".", 2)
        if (
            len(parts) != 3
            or len(parts[0]) != _MS_WIDTH
            or len(parts[1]) != _COUNTER_WIDTH
            or not (parts[0].isdigit() and parts[1].isdigit() and parts[2])
        ):
            raise ValidationError(f"not a hybrid logical timestamp: {text!r:.80}", field="hlc")
        return cls(int(parts[0]), int(parts[1]), parts[2])


class HybridClock:
    """Issues timestamps that never go backwards and always follow what was observed."""

    def __init__(self, device: str, now_ms: Callable[[], int], last: Timestamp | None = None):
        self._device = device
        self._now_ms = now_ms
        self._ms = last.ms if last else 0
        self._counter = last.counter if last else 0

    def now(self) -> Timestamp:
        wall = self._now_ms()
        if wall > self._ms:
            self._ms, self._counter = wall, 0
        else:
            self._bump()
        return Timestamp(self._ms, self._counter, self._device)

    def observe(self, seen: Timestamp) -> None:
        """Fold in a timestamp read from another device's record."""
        if (seen.ms, seen.counter) > (self._ms, self._counter):
            self._ms, self._counter = seen.ms, seen.counter

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
#: was built, and reads this, or later, as a time it cannot be sure of
EARLIEST = float(calendar.timegm((2026, 1, 1, 0, 0, 0)))
#: how far back of the last time it read a plausible system clock may go before the robot
#: believes it rather than the time it read (which may have been a glitch into the future)
MAX_BACK_S = 86_400.0


class FloorWall:
    """The wall clock a robot goes by: its system clock, but never earlier than ``floor``
    (the latest time this robot read before it last stopped), moving on from the floor at the
    rate of ``monotonic`` until the system clock catches up (NTP answers, someone sets it).

    A robot without a battery-backed clock that boots in a house without internet reads 1970:
    without a floor it would stamp its events in 1970 and find every certificate of its
    household "not yet valid", so it could not even open its credentials.  The floor it gets
    (`start`) is the time it last read, unless the system clock is plausible (after
    `EARLIEST`) and more than `MAX_BACK_S` behind it: then the earlier reading is the one
    not to trust (an RTC with a flat battery can read 2106 once), and a floor that stayed there
    would expire every certificate for good.
    """

    def __init__(
        self,
        system: Callable[[], float],
        floor: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._system = system
        self._monotonic = monotonic
        self._floor = floor
        self._since = monotonic()

    @classmethod
    def start(
        cls,
        system: Callable[[], float],
        last: float | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> FloorWall:
        """The wall clock of a robot whose last reading (stored) was ``last``, if any."""
        now = system()
        floor = EARLIEST
        if last is not None and last > now:
            if now >= EARLIEST and last - now > MAX_BACK_S:
                log.warning(
                    "the system clock reads %s, %.0f s before the time this robot last read, "
                    "%s; going by the system clock", _iso(now), last - now, _iso(last),
                )  # fmt: skip
            else:
                floor = max(floor, last)
        if now < floor:
            log.warning(
                "the system clock reads %s, before %s: going by the latter (and the time "
                "since) until the clock is set", _iso(now), _iso(floor),
            )  # fmt: skip
        return cls(system, floor, monotonic)

    def __call__(self) -> float:
        now = self._system()
        floor = self._floor + (self._monotonic() - self._since)
        return now if now >= floor else floor


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
