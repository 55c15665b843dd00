"""Task scopes: the policy as data, and reads that never leave the task's scopes."""

from __future__ import annotations

from typing import Any

import pytest

from hearthsync import Peer, ValidationError
from hearthsync.context import (
    DEFAULT_POLICY,
    HouseholdPolicy,
    ScopeDeniedError,
    TaskGrant,
    TaskPolicy,
    get_context,
)
from hearthsync.context.policy import MAX_POLICY_BYTES
from hearthsync.context.port import SCOPE_OF
from hearthsync.context.scopes import ScopedReader
from tests.context.conftest import at, clock


class Spy:
    """A peer that notes the scope of every read made through it."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self.scopes_read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        scope = SCOPE_OF.get(name)
        if scope is not None:
            self.scopes_read.add(scope)
        return getattr(self._peer, name)


@pytest.fixture
async def busy(home: Peer) -> Peer:
    """Alice with something in every scope."""
    await home.set_preference("alice", "beverage/coffee", "oat latte")
    await home.set_health("alice", "allergy/nuts", "severe")
    await home.record_event("alice", "COMMAND", "beverage", text="coffee please", ts=clock(0))
    await home.place("green-mug", "Green mug", region="shelf-2", owner="alice")
    await home.set_routine("alice-breakfast", "Breakfast", user="alice", after="07:00")
    return home


def test_the_policy_round_trips_through_json() -> None:
    text = DEFAULT_POLICY.to_json()

    assert HouseholdPolicy.from_json(text) == DEFAULT_POLICY
    assert DEFAULT_POLICY.tasks.grant("medication_reminder").scopes == (
        "core", "health", "history",
    )  # fmt: skip
    assert "health" not in DEFAULT_POLICY.tasks.grant("prepare_morning_beverage").scopes


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"tasks": {"default": {"scopes": ["secrets"]}}}', "tasks.default.scopes.0"),
        ('{"tasks": {"default": {"scopes": []}, "tasks": {"Bad Task": {"scopes": []}}}}',
         "tasks.tasks.Bad Task.[key]"),
        ('{"tasks": {"default": {"scopes": []}, "sensitive": {"medication": "vault"}}}',
         "tasks.sensitive.medication"),
        ('{"tasks": {"default": {"scopes": []}}, "recall_k": 1000}', "recall_k"),
        ('{"tasks": {"default": {"scopes": []}}, "pets": 2}', "pets"),
        ("[" * (MAX_POLICY_BYTES + 1), "policy"),
    ],
)  # fmt: skip
def test_a_bad_policy_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HouseholdPolicy.from_json(text)
    assert caught.value.field == field


async def test_unknown_tasks_get_the_household_default(busy: Peer) -> None:
    policy = HouseholdPolicy(tasks=TaskPolicy(default=TaskGrant(scopes=("core",))))

    context = await get_context(
        busy, "alice", task="sweep_the_garage", time=at(clock(0, "09:00")), policy=policy
    )

    assert context.granted == ("core",)
    assert context.withheld == ("health", "history", "spatial")
    assert [p.key for p in context.preferences] == ["beverage/coffee"]
    assert (context.events, context.places, context.health) == ((), (), ())


@pytest.mark.parametrize(
    "task",
    ["prepare_morning_beverage", "adjust_climate", "medication_reminder", "vacuum", "unknown"],
)
async def test_get_context_reads_no_scope_the_task_is_not_granted(busy: Peer, task: str) -> None:
    spy = Spy(busy)

    context = await get_context(
        spy,  # type: ignore[arg-type]
        "alice", task=task, location="shelf-2", time=at(clock(0, "09:00")), query="coffee",
    )  # fmt: skip

    granted = set(DEFAULT_POLICY.tasks.grant(task).scopes)
    assert spy.scopes_read == granted  # every granted scope is used, no other is touched
    assert set(context.withheld) == {"core", "health", "history", "spatial"} - granted
    assert bool(context.health) == ("health" in granted)
    assert bool(context.places) == ("spatial" in granted)
    if "history" not in granted:
        assert context.events + context.recalled == ()


def test_the_scoped_reader_refuses_a_withheld_scope(peer: Peer) -> None:
    reader = ScopedReader(peer, "prepare_morning_beverage", ("core", "history"))

    with pytest.raises(ScopeDeniedError) as caught:
        reader.health("alice")

    assert (caught.value.scope, caught.value.task) == ("health", "prepare_morning_beverage")
    assert reader.preferences("alice") == []


async def test_a_sensitive_domain_follows_its_scope_not_its_document(busy: Peer) -> None:
    await busy.set_preference("alice", "medication/reminder", "lamp cue")
    await busy.record_event("alice", "COMMAND", "medication", text="lamp cue given", ts=clock(0))

    general = await get_context(busy, "alice", task="general_assistant", time=at(clock(0, "09:00")))
    strict = DEFAULT_POLICY.model_copy(
        update={"tasks": DEFAULT_POLICY.tasks.model_copy(update={"sensitive": {}})}
    )
    unguarded = await get_context(
        busy, "alice", task="general_assistant", time=at(clock(0, "09:00")), policy=strict
    )

    assert [p.key for p in general.preferences] == ["beverage/coffee"]
    assert [e.event.domain for e in general.events] == ["beverage"]
    assert [p.key for p in unguarded.preferences] == ["beverage/coffee", "medication/reminder"]
    assert [e.event.domain for e in unguarded.events] == ["medication", "beverage"]
