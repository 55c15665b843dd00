"""Validated records: what hearthsync stores about people and places."""

from hearthsync.model.records import (
    Calibration,
    Condition,
    ContextSnapshot,
    EventType,
    HealthRecord,
    InteractionEvent,
    Placement,
    Pose,
    Preference,
    Profile,
    Record,
    Region,
    Relationship,
    Routine,
    Source,
    SpatialChange,
)

__all__ = [
    "Calibration",
    "Condition",
    "ContextSnapshot",
    "EventType",
    "HealthRecord",
    "InteractionEvent",
    "Placement",
    "Pose",
    "Preference",
    "Profile",
    "Record",
    "Region",
    "Relationship",
    "Routine",
    "Source",
    "SpatialChange",
]
