"""The household policy the context engine obeys: which scopes a task may read, which domains
are relevant to it, and how shared settings are resolved when several people are present.

A policy is plain data (a validated pydantic record) so that it serialises to JSON and can live
in the household document later::

    policy = HouseholdPolicy.from_json(text)      # ValidationError names the bad field
    policy.tasks.grant("medication_reminder").scopes   # ('core', 'health', 'history')

Unknown tasks get ``tasks.default``.  A task is never granted a scope by accident: the built-in
default grants ``health`` to the medication task only (seed §5: "the general-purpose assistant
mode cannot access health records").
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import pydantic
from pydantic import Field

from hearthsync.errors import ValidationError
from hearthsync.ids import NAME_RE
from hearthsync.model.records import Key, Name, Record

ScopeName = Literal["core", "health", "history", "spatial"]
#: every scope a task can be granted (``household`` holds no personal data for a task to read)
READABLE: tuple[ScopeName, ...] = ("core", "health", "history", "spatial")
MAX_TASKS = 256
MAX_POLICY_BYTES = 65_536


class TaskGrant(Record):
    """What one task may read: scopes, and the preference/event domains relevant to it."""

    scopes: Annotated[tuple[ScopeName, ...], Field(max_length=len(READABLE))]
    #: the domains (first segment of a key) relevant to the task; empty: every domain
    domains: Annotated[tuple[Name, ...], Field(max_length=64)] = ()

    @pydantic.field_validator("scopes")
    @classmethod
    def _canonical(cls, scopes: tuple[ScopeName, ...]) -> tuple[ScopeName, ...]:
        return tuple(sorted(set(scopes)))

    def relevant(self, domain: str) -> bool:
        return not self.domains or domain in self.domains


class TaskPolicy(Record):
    """Tasks mapped to grants; ``sensitive`` domains need a scope beyond the one they live in.

    Events and preferences are stored in the ``history`` and ``core`` scopes whatever their
    domain, so a medication reminder logged as an event would otherwise reach any task that
    reads history.  ``sensitive={"medication": "health"}`` withholds every item of that domain
    from tasks not granted ``health``.
    """

    default: TaskGrant
    tasks: dict[Name, TaskGrant] = Field(default_factory=dict, max_length=MAX_TASKS)
    sensitive: dict[Name, ScopeName] = Field(default_factory=dict, max_length=64)

    def grant(self, task: str) -> TaskGrant:
        """The grant of ``task`` (the default for a task the policy does not name)."""
        if not isinstance(task, str) or not NAME_RE.fullmatch(task):
            raise ValidationError(
                f"task must be 1-64 characters of a-z, 0-9, '_' or '-', got {task!r:.80}",
                field="task",
            )
        return self.tasks.get(task, self.default)

    def withheld(self, task: str) -> tuple[ScopeName, ...]:
        granted = self.grant(task).scopes
        return tuple(scope for scope in READABLE if scope not in granted)

    def visible(self, domain: str, scopes: tuple[str, ...]) -> bool:
        """Whether an item of ``domain`` may be shown to a task holding ``scopes``."""
        needed = self.sensitive.get(domain)
        return needed is None or needed in scopes


class SharedRule(Record):
    """How one shared setting (the thermostat) is resolved among the people present.

    ``range``: each person's value is a range (``{"min": 19, "max": 22}``) or a number; the
    setting is the range everyone tolerates, else the range of the person with priority.
    ``choice``: one value; the one everyone agrees on, else the choice of the person with
    priority.
    """

    kind: Literal["range", "choice"] = "range"


class RoomPolicy(Record):
    """Shared settings, and who has priority when no value suits everyone.

    Priority follows ``priority`` (user ids, first wins), then household role (owner, then
    adults and residents, then staff, then children, then guests), then user id.
    """

    shared: dict[Key, SharedRule] = Field(default_factory=dict, max_length=256)
    priority: Annotated[tuple[Name, ...], Field(max_length=64)] = ()


class HouseholdPolicy(Record):
    """Everything `get_context` needs to know about the household's rules."""

    tasks: TaskPolicy
    rooms: RoomPolicy = RoomPolicy()
    #: at most this many recent events per context (the newest relevant ones)
    max_events: Annotated[int, Field(ge=0, le=1_000)] = 40
    #: semantic recall returns this many events for a query
    recall_k: Annotated[int, Field(ge=0, le=100)] = 5

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Parse a policy from JSON (at most `MAX_POLICY_BYTES`), naming any bad field."""
        if len(text) > MAX_POLICY_BYTES:
            raise ValidationError(
                f"a policy is at most {MAX_POLICY_BYTES:,} bytes of JSON, got {len(text):,}",
                field="policy",
            )
        return cls.decode(text)

    def to_json(self) -> str:
        return self.model_dump_json()


_CORE_SPATIAL_HISTORY: tuple[ScopeName, ...] = ("core", "history", "spatial")

DEFAULT_POLICY = HouseholdPolicy(
    tasks=TaskPolicy(
        default=TaskGrant(scopes=_CORE_SPATIAL_HISTORY),
        tasks={
            "general_assistant": TaskGrant(scopes=_CORE_SPATIAL_HISTORY),
            "prepare_morning_beverage": TaskGrant(
                scopes=_CORE_SPATIAL_HISTORY,
                domains=("beverage", "breakfast", "coffee", "kitchen", "social", "tea"),
            ),
            "medication_reminder": TaskGrant(
                scopes=("core", "health", "history"),
                domains=("health", "language", "medication", "reminder", "social"),
            ),
            "companion_chat": TaskGrant(
                scopes=("core", "history"), domains=("family", "language", "music", "social")
            ),
            "vacuum": TaskGrant(scopes=("core", "spatial"), domains=("cleaning", "noise")),
            "deliver_items": TaskGrant(
                scopes=("core", "spatial"), domains=("delivery", "ergonomics", "handoff")
            ),
            "adjust_climate": TaskGrant(scopes=("core",), domains=("comfort",)),
        },
        sensitive={"health": "health", "medication": "health"},
    ),
    rooms=RoomPolicy(shared={"comfort/temperature": SharedRule(kind="range")}),
)
