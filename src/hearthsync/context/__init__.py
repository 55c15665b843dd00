"""The context engine: one permission-checked, explainable context before a robot acts.

    from hearthsync.context import get_context, explain, maintain

    context = await get_context(peer, "alice", task="prepare_morning_beverage",
                                location="kitchen", time=now, query="which mug")
    context.preference("beverage/coffee").value
    context.to_prompt(400)
    await explain(peer, "alice", "tea/mug")     # 'the green mug, because you asked for it ...'
    await maintain(peer)                        # the slow loop: promote, decay, flag drift

The fast loop records what happened with `correct` and `feedback`.  See
docs/explanation/context.md for the rules and docs/reference/context.md for the API.
"""

from hearthsync.context.assembled import Context
from hearthsync.context.engine import ContextEngine, engine_for, get_context
from hearthsync.context.explain import explain
from hearthsync.context.feedback import correct, feedback
from hearthsync.context.items import (
    ActiveRoutine,
    EventItem,
    HealthFact,
    Provenance,
    Relation,
    ResolvedPreference,
    SetAside,
    SharedSetting,
    SpatialFact,
    SpatialMove,
)
from hearthsync.context.maintain import Change, MaintenanceReport, maintain
from hearthsync.context.policy import (
    DEFAULT_POLICY,
    HouseholdPolicy,
    RoomPolicy,
    SharedRule,
    TaskGrant,
    TaskPolicy,
)
from hearthsync.context.prompt import estimate_tokens
from hearthsync.context.scopes import ScopeDeniedError
from hearthsync.context.situation import Situation

__all__ = [
    "DEFAULT_POLICY",
    "ActiveRoutine",
    "Change",
    "Context",
    "ContextEngine",
    "EventItem",
    "HealthFact",
    "HouseholdPolicy",
    "MaintenanceReport",
    "Provenance",
    "Relation",
    "ResolvedPreference",
    "RoomPolicy",
    "ScopeDeniedError",
    "SetAside",
    "SharedRule",
    "SharedSetting",
    "Situation",
    "SpatialFact",
    "SpatialMove",
    "TaskGrant",
    "TaskPolicy",
    "correct",
    "engine_for",
    "estimate_tokens",
    "explain",
    "feedback",
    "get_context",
    "maintain",
]
