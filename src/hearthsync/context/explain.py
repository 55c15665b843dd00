"""Explanations: why the robot will use this value, in one sentence the person can check.

    await explain(peer, "alice", "tea/mug")
    'the green mug, because you asked for it on 2026-03-14 on the kitchen robot; confirmed 12
    times since'

The sentence is built from the resolved preference's provenance only (seed §7: "I used the green
mug because you told me to on March 14" is good; a similarity score is useless): the value (an
object's label when the value names a placed object), the condition it applies under, how the
person expressed it, the date and robot of that statement, and the confirmations since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from pydantic import JsonValue

from hearthsync.context.engine import ContextEngine, engine_for, household_policy
from hearthsync.context.feedback import hlc_date, hlc_ms, signals_by_key
from hearthsync.context.items import ResolvedPreference, show
from hearthsync.context.policy import HouseholdPolicy
from hearthsync.context.port import PeerReader
from hearthsync.context.resolve import DAY_MS, resolve
from hearthsync.context.scopes import ScopeDeniedError, ScopedReader
from hearthsync.context.situation import Situation, describe_condition, situation
from hearthsync.errors import NotFoundError, ValidationError, unknown_user
from hearthsync.ids import KEY_RE, check_name, key_domain

#: what a person asking about their own preferences may read (never ``health``)
EXPLAIN_SCOPES = ("core", "history", "spatial")
_HOW = {
    "correction": "you asked for it",
    "explicit": "you said so",
    "implicit": "you chose it",
    "learned": "it is what you usually choose",
}


async def explain(
    peer: PeerReader,
    user: str,
    key: str,
    *,
    time: dt.datetime | None = None,
    location: str | None = None,
    present: Iterable[str] = (),
    devices: Mapping[str, str] | None = None,
    policy: HouseholdPolicy | None = None,
    task: str | None = None,
) -> str:
    """One sentence saying which value of ``key`` applies for ``user`` now, and why.

    ``devices`` names robots by device id (this peer's own name is known).  Raises
    `NotFoundError` if ``user`` has no value of ``key`` that applies in the situation, and
    `ScopeDeniedError` for a key in a domain that needs the ``health`` scope.
    """
    if policy is None:  # the household's in force on the peer, as get_context reads it
        policy = household_policy(peer)
    resolved, now, reader = _resolved(
        engine_for(peer), user, key, time, location, present, policy, task
    )
    names = {peer.device_id: peer.device, **(devices or {})}
    return sentence(resolved, phrase(resolved.value, reader), names, now.at.tzinfo)


def _resolved(
    engine: ContextEngine,
    user: str,
    key: str,
    time: dt.datetime | None,
    location: str | None,
    present: Iterable[str],
    policy: HouseholdPolicy,
    task: str | None = None,
) -> tuple[ResolvedPreference, Situation, ScopedReader]:
    # checked as `get_context` checks it (found in review: a phone number given as the user
    # was repeated in the error, and a list raised a bare TypeError)
    check_name(user, field="user")
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValidationError(f"key must look like 'domain/key', got {key!r:.80}", field="key")
    if user not in engine.peer.users():
        forgotten = user in engine.peer.forgotten_users()
        raise NotFoundError(unknown_user(user, forgotten=forgotten))
    # for a task, what it is granted (a medication task may explain a medication key: with
    # no task, no health key could ever be explained; found by a new user); else the scopes
    # of a sentence any robot may say
    name = "explain" if task is None else task
    scopes: tuple[str, ...] = (
        EXPLAIN_SCOPES if task is None else tuple(policy.tasks.grant(task).scopes)
    )
    domain = key_domain(key)
    if not policy.tasks.visible(domain, scopes):
        raise ScopeDeniedError(policy.tasks.sensitive[domain], name)
    now = situation(user, time, location, present).without(engine.peer.forgotten_users())
    reader = ScopedReader(engine.peer, name, scopes)
    candidates = engine.views.preferences(reader, user).by_key.get(key, ())
    first = resolve(key, candidates, now)
    if first is None:
        raise NotFoundError(f"{user} has no value of {key!r} that applies {now.describe()}")
    if not reader.may("history"):
        # a task not granted the history (climate, vacuuming) explains without counting
        # confirmations, as its context resolves without them (found in review: every
        # explanation for such a task was refused for want of the history scope)
        return first, now, reader
    # every confirmation since the statement (a day's slack: an event's ts is its robot's
    # clock); a statement stamped after now (a stamp from a clock far ahead) counts from now:
    # the events' bounds refused its year, and the explanation failed on a field the caller
    # never gave (found in review)
    since = min(hlc_ms(first.provenance.hlc), now.ms) - DAY_MS
    events = reader.events(user, since=since, until=now.ms + 1)
    signals = signals_by_key(events).get(key, [])
    return resolve(key, candidates, now, signals) or first, now, reader


def phrase(value: JsonValue, reader: ScopedReader) -> str:
    """How to name ``value``: "the green mug" for a placed object, else the value in words."""
    if isinstance(value, str):
        labels = {p.object: p.label for p in reader.placements()} if reader.may("spatial") else {}
        if value in labels:
            return f"the {labels[value][0].lower()}{labels[value][1:]}"
        return value.replace("_", " ")
    return show(value)


def sentence(
    resolved: ResolvedPreference,
    what: str,
    devices: Mapping[str, str],
    tz: dt.tzinfo | None,
) -> str:
    """``<value>[ <condition>], because <how> on <date> on the <robot> robot[; confirmed N
    times since][; <drift>]``."""
    when = describe_condition(resolved.condition)
    head = f"{what} {when}" if when else what
    origin = resolved.provenance
    date = hlc_date(origin.hlc, tz or dt.UTC)
    robot = devices.get(origin.device) or origin.device[:8]
    # "on the kitchen robot", but "on kitchen-robot" for a robot already named so
    where = robot if robot.lower().endswith("robot") else f"the {robot} robot"
    parts = [f"{head}, because {_HOW.get(resolved.source, 'you said so')} on {date} on {where}"]
    if resolved.confirmations:
        times = "once" if resolved.confirmations == 1 else f"{resolved.confirmations} times"
        parts.append(f"confirmed {times} since")
    if resolved.drift:
        parts.append("but you have often chosen otherwise lately, so it is worth asking")
    return "; ".join(parts)
