"""Shared settings in a room with several people: whose preference the thermostat follows.

The policy (docs/explanation/context.md, "Several people in a room"):

1. Each person present resolves their own value for the key, under their own conditions (Alice's
   office value applies when the room is her office).  People without a value do not constrain.
2. ``range`` settings take the range everyone tolerates: the intersection of all ranges (a plain
   number is a range of one value).  ``choice`` settings take the value everyone agrees on.
3. When no value suits everyone, the setting follows the person with priority: the household's
   ``priority`` list first, then household role (owner, then adults and residents, then staff,
   then children, then guests), then user id, so every robot follows the same person.

The result names whom it followed and why, so the robot can say it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import JsonValue

from hearthsync.context.items import ResolvedPreference, SharedSetting, show
from hearthsync.context.policy import RoomPolicy, SharedRule
from hearthsync.model.records import Profile

#: lower ranks first when no value suits everyone
ROLE_RANK = {
    "owner": 0,
    "adult": 1,
    "resident": 1,
    "patient": 1,
    "caregiver": 2,
    "staff": 2,
    "worker": 2,
    "child": 3,
    "guest": 4,
}


@dataclass(frozen=True, slots=True)
class Wish:
    user: str
    preference: ResolvedPreference


def ranking(
    users: Sequence[str], profiles: Mapping[str, Profile | None], rooms: RoomPolicy
) -> list[str]:
    """``users`` in priority order (see the module docstring, rule 3)."""

    def order(user: str) -> tuple[int, int, str]:
        listed = rooms.priority.index(user) if user in rooms.priority else len(rooms.priority)
        profile = profiles.get(user)
        role = ROLE_RANK.get(profile.household_role if profile else "guest", 4)
        return listed, role, user

    return sorted(users, key=order)


def priority_reason(user: str, profiles: Mapping[str, Profile | None], rooms: RoomPolicy) -> str:
    if user in rooms.priority:
        return "first in the household's priority list"
    profile = profiles.get(user)
    role = profile.household_role if profile else "guest"
    return "the household owner" if role == "owner" else f"priority by role ({role})"


def settle(
    key: str,
    rule: SharedRule,
    wishes: Sequence[Wish],
    order: Sequence[str],
    why_first: Callable[[str], str],
) -> SharedSetting | None:
    """One value for ``key`` among ``wishes`` (``None`` if nobody present has one).

    ``order`` is every present user in priority order; ``why_first(user)`` says why a user has
    priority.
    """
    if not wishes:
        return None
    agreed = _agreement(rule, [w.preference.value for w in wishes])
    if agreed is not None:
        followed = tuple(w.user for w in wishes)
        return _setting(key, agreed, followed, _agreed_reason(rule, wishes), wishes)
    first = next(user for user in order if any(w.user == user for w in wishes))
    chosen = next(w for w in wishes if w.user == first)
    reason = f"no value suits everyone ({_listing(wishes)}); followed {first}, {why_first(first)}"
    return _setting(key, chosen.preference.value, (first,), reason, wishes)


def _setting(
    key: str, value: JsonValue, followed: tuple[str, ...], reason: str, wishes: Sequence[Wish]
) -> SharedSetting:
    return SharedSetting(
        key=key,
        value=value,
        followed=followed,
        reason=reason,
        wishes=tuple((w.user, w.preference.value) for w in wishes),
        provenance=tuple(w.preference.provenance for w in wishes if w.user in followed),
    )


def _agreed_reason(rule: SharedRule, wishes: Sequence[Wish]) -> str:
    if len(wishes) == 1:
        only = wishes[0]
        return f"{only.user}'s preference; nobody else present has one"
    what = "the range everyone present tolerates" if rule.kind == "range" else "everyone agrees"
    return f"{what} ({_listing(wishes)})"


def _listing(wishes: Sequence[Wish]) -> str:
    return ", ".join(f"{w.user} {show(w.preference.value)}" for w in wishes)


def _agreement(rule: SharedRule, values: Sequence[JsonValue]) -> JsonValue | None:
    """The value that suits everyone, or ``None``."""
    ranges = [_as_range(v) for v in values] if rule.kind == "range" else []
    if ranges and all(r is not None for r in ranges):
        low = max(r[0] for r in ranges if r is not None)
        high = min(r[1] for r in ranges if r is not None)
        if low > high:
            return None
        if all(isinstance(v, int | float) for v in values):
            return values[0]  # equal numbers: the intersection is that number
        return {"min": _number(low), "max": _number(high)}
    first = show(values[0])
    return values[0] if all(show(v) == first for v in values) else None


def _as_range(value: JsonValue) -> tuple[float, float] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value), float(value)
    if isinstance(value, dict):
        low, high = value.get("min"), value.get("max")
        if isinstance(low, int | float) and isinstance(high, int | float) and low <= high:
            return float(low), float(high)
    return None


def _number(value: float) -> int | float:
    """18.0 → 18: whole degrees stay whole in prompts and JSON."""
    return int(value) if value.is_integer() else value
