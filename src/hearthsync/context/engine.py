"""`get_context`: one permission-checked, explainable context, assembled in memory.

    engine = ContextEngine(peer)
    context = await engine.get_context("alice", task="prepare_morning_beverage",
                                       location="kitchen", time=saturday_morning)
    context.preference("beverage/coffee").value      # 'cortado'
    context.to_prompt(300)

The engine reads only through a `ScopedReader` of the task's scopes, so a scope the task is not
granted is never read; it reads in memory (the peer's documents and the derived views it keeps
here), and only semantic recall touches the peer's vector index.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass, field

from hearthsync.context.assembled import Context
from hearthsync.context.feedback import Signal, signals_by_key
from hearthsync.context.items import (
    ActiveRoutine,
    EventItem,
    HealthFact,
    Relation,
    ResolvedPreference,
    SharedSetting,
    SpatialFact,
    SpatialMove,
)
from hearthsync.context.policy import DEFAULT_POLICY, HouseholdPolicy, TaskGrant
from hearthsync.context.port import PeerReader
from hearthsync.context.prompt import check_budget
from hearthsync.context.resolve import Choice, finish
from hearthsync.context.scopes import ScopedReader
from hearthsync.context.shared import Wish, priority_reason, ranking, settle
from hearthsync.context.situation import Situation, routine_active, situation, window_ms
from hearthsync.context.views import SpatialView, Views
from hearthsync.errors import NotFoundError, ValidationError, unknown_user
from hearthsync.ids import check_name
from hearthsync.model.records import MAX_TEXT

MAX_CHANGES = 20
MAX_RELATIONS = 20
#: the most hits one recall asks for while hits the task may not see crowd out the rest
MAX_RECALL_FETCH = 256


@dataclass(frozen=True, slots=True)
class _Request:
    """One validated call: who, for what, when, under which grant."""

    user: str
    task: str
    now: Situation
    window_ms: int
    grant: TaskGrant
    policy: HouseholdPolicy
    reader: ScopedReader
    #: `visible` by domain, for this call
    domains: dict[str, bool] = field(default_factory=dict)

    def visible(self, domain: str) -> bool:
        """Relevant to the task, and not in a sensitive domain the task may not see."""
        seen = self.domains.get(domain)
        if seen is None:
            seen = self.domains[domain] = self.grant.relevant(domain) and self.policy.tasks.visible(
                domain, self.grant.scopes
            )
        return seen


class ContextEngine:
    """Assembles contexts from one peer, keeping derived views between calls."""

    def __init__(self, peer: PeerReader) -> None:
        self.peer = peer
        self.views = Views()
        #: per user, per key: the last preference finished without feedback signals, with
        #: the choice and the minute it was finished for (see `_resolve_all`)
        self._finished: dict[str, dict[str, tuple[Choice, int, ResolvedPreference]]] = {}
        # a forgotten user's views and resolved values go with their documents, not at the
        # next `get_context` (found in review: `explain` never dropped them, and they stayed
        # in memory until some context was asked for)
        listeners = getattr(peer, "on_forgotten", None)
        if isinstance(listeners, list):
            listeners.append(self.forget)

    def forget(self, user: str) -> None:
        """Drop what this engine derived of ``user`` (forgotten: nothing of theirs may
        outlive their documents, derived data included)."""
        self.views.drop(user)
        self._finished.pop(user, None)

    def keep(self, users: Collection[str]) -> None:
        """Drop what this engine derived of users no longer in the household."""
        self.views.keep(users)
        for gone in [u for u in self._finished if u not in users]:
            del self._finished[gone]

    async def get_context(
        self,
        user: str,
        *,
        task: str,
        location: str | None = None,
        time: dt.datetime | None = None,
        present: Iterable[str] = (),
        history_window: str = "7d",
        query: str | None = None,
        max_tokens: int | None = None,
        policy: HouseholdPolicy | None = None,
    ) -> Context:
        """The context for ``user`` doing ``task`` (see the module docstring).

        ``policy``: the household's in force on the peer (`household_policy`) unless given.

        ``time`` is a timezone-aware datetime (default: now, in this machine's zone);
        ``present`` names the other people in the room; ``max_tokens`` is the default budget of
        `Context.to_prompt`.  Bad arguments raise `ValidationError` naming the argument; an
        unknown user raises `NotFoundError`.
        """
        request = self._request(user, task, location, time, present, history_window, policy)
        _check_query(query)
        check_budget(max_tokens)
        events = self._recent(request)
        signals = signals_by_key(e.event for e in events)
        preferences, shared = self._preferences(request, signals)
        spatial = self._spatial(request)
        return Context(
            user=user,
            task=task,
            situation=request.now,
            granted=request.grant.scopes,
            withheld=request.policy.tasks.withheld(task),
            profile=request.reader.profile(user) if request.reader.may("core") else None,
            calibration=request.reader.calibration(user) if request.reader.may("core") else None,
            preferences=preferences,
            shared=shared,
            routines=self._routines(request),
            places=spatial[0],
            changes=spatial[1],
            relations=self._relations(request),
            health=self._health(request),
            events=tuple(events[: request.policy.max_events]),
            recalled=await self._recalled(request, query),
            query=query,
            max_tokens=max_tokens,
        )

    # ------------------------------------------------------------------ the request

    def _request(
        self,
        user: str,
        task: str,
        location: str | None,
        time: dt.datetime | None,
        present: Iterable[str],
        history_window: str,
        policy: HouseholdPolicy | None,
    ) -> _Request:
        check_name(user, field="user")
        if policy is None:
            policy = household_policy(self.peer)
        if not isinstance(policy, HouseholdPolicy):
            raise ValidationError("policy must be a HouseholdPolicy", field="policy")
        grant = policy.tasks.grant(task)
        now = situation(user, time, location, present).without(self.peer.forgotten_users())
        window = window_ms(history_window)
        users = self.peer.users()
        self.keep(users)
        if user not in users:
            forgotten = user in self.peer.forgotten_users()
            raise NotFoundError(unknown_user(user, forgotten=forgotten))
        reader = ScopedReader(self.peer, task, grant.scopes)
        return _Request(user, task, now, window, grant, policy, reader)

    # ------------------------------------------------------------------ history

    def _recent(self, request: _Request) -> list[EventItem]:
        """The relevant events of the window, newest first (empty without ``history``)."""
        if not request.reader.may("history"):
            return []
        until = request.now.ms + 1
        found = request.reader.events(request.user, since=until - request.window_ms, until=until)
        return [EventItem(e) for e in reversed(found) if request.visible(e.domain)]

    async def _recalled(self, request: _Request, query: str | None) -> tuple[EventItem, ...]:
        """The semantic top-k for ``query``, leaving out what the task may not see."""
        k = request.policy.recall_k
        if not query or not k or not request.reader.may("history"):
            return ()
        # hits of domains the task may not see, or that are not relevant to it, are left out,
        # as they are from the recent events; more are fetched while they crowd out the
        # visible ones (found in review: ten withheld hits left none).  Recall's cost grows
        # with k, so only a filtering task asks for more than k, and at most MAX_RECALL_FETCH
        filtered = bool(request.grant.domains) or any(
            s not in request.grant.scopes for s in request.policy.tasks.sensitive.values()
        )
        fetch = k * 2 if filtered else k
        while True:
            hits = await request.reader.recall(request.user, query, k=fetch)
            # a similarity of zero or less says the event is unrelated, whatever the embedder
            shown = [
                EventItem(hit.event, round(hit.score, 4))
                for hit in hits
                if hit.score > 0 and request.visible(hit.event.domain)
            ]
            exhausted = len(hits) < fetch or (hits and hits[-1].score <= 0)
            if len(shown) >= k or exhausted or fetch >= MAX_RECALL_FETCH:
                return tuple(shown[:k])
            fetch = min(fetch * 4, MAX_RECALL_FETCH)

    def _health(self, request: _Request) -> tuple[HealthFact, ...]:
        if not request.reader.may("health"):
            return ()
        return tuple(HealthFact(r) for r in request.reader.health(request.user) if not r.deleted)

    # ------------------------------------------------------------------ preferences

    def _preferences(
        self, request: _Request, signals: dict[str, list[Signal]]
    ) -> tuple[tuple[ResolvedPreference, ...], tuple[SharedSetting, ...]]:
        if not request.reader.may("core"):
            return (), ()
        shared_keys = request.policy.rooms.shared
        resolved = self._resolve_all(request, request.user, request.now, signals)
        own = tuple(p for p in resolved if p.key not in shared_keys)
        mine = {p.key: p for p in resolved if p.key in shared_keys}
        return own, self._shared(request, mine)

    def _resolve_all(
        self,
        request: _Request,
        user: str,
        now: Situation,
        signals: dict[str, list[Signal]],
        only: Container[str] | None = None,
    ) -> list[ResolvedPreference]:
        """``user``'s preferences visible to the task (those named in ``only``), resolved."""
        view = self.views.preferences(request.reader, user)
        signature = view.signature(now)
        finished = self._finished.setdefault(user, {})
        minute = now.ms // 60_000
        found: list[ResolvedPreference] = []
        for key, domain in view.keys:
            wanted = request.visible(domain) and (only is None or key in only)
            choice = view.choice(key, signature, now) if wanted else None
            if choice is None:
                continue
            evidence = signals.get(key, ())
            if evidence:
                found.append(finish(key, choice, now, evidence))
                continue
            # Without feedback, a resolved preference depends on the clock only through its
            # confidence's decay (a half-life of days): kept for the minute, it spares a
            # general assistant's context re-finishing hundreds of preferences every call.
            kept = finished.get(key)
            if kept is None or kept[0] is not choice or kept[1] != minute:
                kept = finished[key] = (choice, minute, finish(key, choice, now))
            found.append(kept[2])
        return found

    def _shared(
        self, request: _Request, mine: dict[str, ResolvedPreference]
    ) -> tuple[SharedSetting, ...]:
        """Each shared key relevant to the task, settled among everyone present."""
        people = [request.user, *sorted(u for u in request.now.present if u in self.peer.users())]
        theirs = {user: self._their_preferences(request, user) for user in people[1:]}
        profiles = {user: request.reader.profile(user) for user in people}
        order = ranking(people, profiles, request.policy.rooms)
        settled: list[SharedSetting] = []
        rooms = request.policy.rooms
        for key, rule in sorted(rooms.shared.items()):
            wishes = [Wish(request.user, mine[key])] if key in mine else []
            wishes += [Wish(u, theirs[u][key]) for u in people[1:] if key in theirs[u]]
            setting = settle(
                key, rule, wishes, order, lambda u: priority_reason(u, profiles, rooms)
            )
            if setting is not None:
                settled.append(setting)
        return tuple(settled)

    def _their_preferences(self, request: _Request, user: str) -> dict[str, ResolvedPreference]:
        """Another present person's shared-setting values, under their own conditions: with
        everyone in the room present, visitors who are no user included, as the asking
        user's are (found in review: only users counted for the others, so a "with grandma"
        wish held for whoever asked and for no one else, and the setting depended on who
        asked)."""
        present = (request.now.present | {request.user}) - {user}
        now = Situation(request.now.at, request.now.location, frozenset(present))
        shared = request.policy.rooms.shared
        return {p.key: p for p in self._resolve_all(request, user, now, {}, only=shared)}

    # ------------------------------------------------------------------ the home

    def _routines(self, request: _Request) -> tuple[ActiveRoutine, ...]:
        """Routines under way: the user's, the home's, those of the people present, and any
        whose constraints bind every robot (Charlie's sleep-in)."""
        if not request.reader.may("core"):
            return ()
        people = {None, request.user, *request.now.present}
        return tuple(
            ActiveRoutine(r)
            for r in sorted(request.reader.routines(), key=lambda r: r.id)
            if routine_active(r, request.now) and (r.user in people or r.constraints)
        )

    def _relations(self, request: _Request) -> tuple[Relation, ...]:
        if not request.reader.may("core"):
            return ()
        edges = request.reader.relationships(request.user)
        live = sorted((r for r in edges if not r.deleted), key=lambda r: r.set_at, reverse=True)
        return tuple(Relation(r) for r in live[:MAX_RELATIONS])

    def _spatial(
        self, request: _Request
    ) -> tuple[tuple[SpatialFact, ...], tuple[SpatialMove, ...]]:
        if not request.reader.may("spatial"):
            return (), ()
        view = self.views.spatial(request.reader)
        places = _places(view, request.user, request.now.location)
        since = request.now.ms - request.window_ms
        return places, _moves(view, places, request.now.location, request.now, since)


def _places(view: SpatialView, user: str, location: str | None) -> tuple[SpatialFact, ...]:
    """The user's things wherever they are, then everything at the location."""
    facts = {p.object: p for p in view.by_owner.get(user, ())}
    for region in view.within(location) if location else ():
        for placement in view.by_region.get(region, ()):
            facts.setdefault(placement.object, placement)
    return tuple(
        SpatialFact(p, _label(view, p.region), p.owner == user)
        for p in sorted(facts.values(), key=lambda p: (p.owner != user, p.object))
    )


def _label(view: SpatialView, region: str | None) -> str | None:
    found = view.regions.get(region) if region else None
    return found.label if found else None


def _moves(
    view: SpatialView,
    places: Sequence[SpatialFact],
    location: str | None,
    now: Situation,
    since_ms: int,
) -> tuple[SpatialMove, ...]:
    """Moves of the window of the things in ``places``, and of anything into or out of
    ``location`` (newest first)."""
    objects = {fact.placement.object for fact in places}
    here = view.within(location) if location else []
    start, end = view.window(since_ms, now.ms)
    return tuple(
        SpatialMove(change, view.labels.get(change.object, change.object))
        for change in view.concerning(objects, here, start, end, MAX_CHANGES)
    )


def _check_query(query: str | None) -> None:
    if query is not None and (not isinstance(query, str) or len(query) > MAX_TEXT):
        raise ValidationError(f"query must be text of at most {MAX_TEXT} characters", field="query")


def household_policy(peer: object) -> HouseholdPolicy:
    """The policy in force on ``peer``: the household's (`Peer.policy`: signed by an owner or
    admin, synced), or the built-in one for a reader that keeps none.

    The module's functions used the built-in one unless told: ``get_context(peer, ...)``
    gave a task the scopes the household had taken from it (found by a new user)."""
    read = getattr(peer, "policy", None)
    found = read() if callable(read) else None
    return found if isinstance(found, HouseholdPolicy) else DEFAULT_POLICY


_ENGINES: weakref.WeakKeyDictionary[object, ContextEngine] = weakref.WeakKeyDictionary()


def engine_for(peer: PeerReader) -> ContextEngine:
    """The engine of ``peer`` (one per peer, so its derived views are reused)."""
    engine = _ENGINES.get(peer)
    if engine is None:
        engine = _ENGINES[peer] = ContextEngine(peer)
    return engine


async def get_context(
    peer: PeerReader,
    user: str,
    *,
    task: str,
    location: str | None = None,
    time: dt.datetime | None = None,
    present: Iterable[str] = (),
    history_window: str = "7d",
    query: str | None = None,
    max_tokens: int | None = None,
    policy: HouseholdPolicy | None = None,
) -> Context:
    """`ContextEngine.get_context` on ``peer``'s engine (under the household's policy in
    force on ``peer`` unless ``policy`` is given)."""
    return await engine_for(peer).get_context(
        user, task=task, location=location, time=time, present=present,
        history_window=history_window, query=query, max_tokens=max_tokens, policy=policy,
    )  # fmt: skip
