"""The request and response bodies of the local HTTP API (the OpenAPI document derives from them).

Requests are validated twice: here for shape and size (DESIGN invariant 5: every input from
outside is bounded before it touches anything), then by the peer's own records for content
(ids, keys, personal data), whose `ValidationError` names the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from hearthsync.context import Context
from hearthsync.context.feedback import Outcome
from hearthsync.model.records import (
    MAX_TEXT,
    Condition,
    ContextSnapshot,
    EventType,
    Key,
    Name,
    Pose,
    Source,
)

if TYPE_CHECKING:
    from hearthsync.peer import PeerStatus

Short = Annotated[str, Field(max_length=200)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContextRequest(Body):
    """What `get_context` needs: who, for which task, where, when, with whom, and a query."""

    user: Short
    task: Short
    location: Short | None = None
    time: AwareDatetime | None = None
    present: Annotated[list[Short], Field(max_length=16)] = []
    history_window: Annotated[str, Field(max_length=16)] = "7d"
    query: Text | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class ContextReply(BaseModel):
    """The context, and its prompt packed within ``max_tokens`` (everything if unset)."""

    context: Context
    prompt: str


class PreferenceWrite(Body):
    user: Short
    key: Short
    value: JsonValue
    source: Source = "explicit"
    confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    condition: Condition | None = None
    evidence: Annotated[list[Annotated[str, Field(max_length=80)]], Field(max_length=64)] = []
    note: Text = ""


class PreferenceDelete(Body):
    """Which preference to delete: ``key`` under exactly ``condition`` (None: unconditional)."""

    user: Name
    key: Key
    condition: Condition | None = None


class CorrectionWrite(Body):
    """The person corrected the robot: recorded, and applied at once (`context.correct`)."""

    user: Short
    key: Short
    value: JsonValue
    served: JsonValue = None
    condition: Condition | None = None
    text: Text = ""
    context: ContextSnapshot | None = None


class FeedbackWrite(Body):
    """Implicit feedback about a served value (`context.feedback`)."""

    user: Short
    key: Short
    value: JsonValue
    outcome: Outcome = "kept"
    text: Text = ""
    context: ContextSnapshot | None = None


class EventWrite(Body):
    user: Short
    type: EventType
    domain: Short
    text: Text = ""
    payload: JsonValue = None
    context: ContextSnapshot | None = None
    ts: Annotated[int, Field(ge=0, lt=2**53)] | None = None


class PlacementWrite(Body):
    object: Short
    label: Short
    region: Short | None = None
    owner: Short | None = None
    kind: Literal["belongs", "observed"] = "belongs"
    pose: Pose | None = None


class ExplainRequest(Body):
    user: Short
    key: Short
    time: AwareDatetime | None = None
    location: Short | None = None
    present: Annotated[list[Short], Field(max_length=16)] = []
    #: explain with the scopes this task is granted (a medication key needs a task granted
    #: health); none: those of a sentence any robot may say
    task: Short | None = None


class Explanation(BaseModel):
    sentence: str


class MaintainRequest(Body):
    lookback: Annotated[str, Field(max_length=16)] = "90d"
    users: Annotated[list[Short], Field(max_length=64)] | None = None


class Maintained(BaseModel):
    """What the slow loop changed, one sentence per change."""

    changes: list[str]


class _Given(Body):
    """A write whose optional fields are passed on only when given (``None``: not given)."""

    def given(self, *but: str) -> dict[str, Any]:
        """Every field given, but those named (passed on by position)."""
        names = type(self).model_fields
        return {n: getattr(self, n) for n in names if n not in but and getattr(self, n) is not None}


class _ProfileFields(_Given):
    roles: Annotated[list[Short], Field(max_length=64)] | None = None
    languages: Annotated[list[Short], Field(max_length=16)] | None = None
    accessibility: Annotated[list[Short], Field(max_length=64)] | None = None
    household_role: Short | None = None
    #: a patch, merged fact by fact; ``null`` removes a fact
    attributes: dict[str, JsonValue] | None = None


class UserWrite(_ProfileFields):
    """A person to register (or, registered already, the profile fields to change)."""

    user: Short
    name: Short


class Users(BaseModel):
    users: list[str]


class ProfileWrite(_ProfileFields):
    """Profile fields of a registered user to change (the others keep their value)."""

    user: Short
    name: Short | None = None


class CalibrationWrite(_Given):
    """Calibration fields of a registered user to change (the others keep their value)."""

    user: Short
    proactivity: float | None = None
    verbosity: float | None = None
    pace: float | None = None
    personal_space_m: float | None = None


class HealthWrite(Body):
    user: Short
    key: Short
    value: JsonValue
    note: Text = ""


class RegionWrite(_Given):
    region: Short
    label: Short
    frame: Short | None = None
    polygon: Annotated[list[tuple[float, float]], Field(max_length=256)] | None = None
    parent: Short | None = None
    tags: Annotated[list[Short], Field(max_length=64)] | None = None


class RoutineWrite(_Given):
    routine: Short
    label: Short
    user: Short | None = None
    days: Annotated[list[Short], Field(max_length=7)] | None = None
    after: Short | None = None
    before: Short | None = None
    actions: Annotated[list[Short], Field(max_length=64)] | None = None
    constraints: Annotated[list[Short], Field(max_length=64)] | None = None


class RelationWrite(Body):
    subject: Short
    relation: Short
    object: Short
    note: Text = ""


class ForgetRequest(Body):
    user: Short


class Forgotten(BaseModel):
    """The tombstone left: who was forgotten, by which robot, when (hybrid timestamp)."""

    user: str
    device_id: str
    at: str


class DocumentSize(BaseModel):
    """One document as the store holds it (`hearth status`)."""

    doc_id: str
    scope: str
    records: int
    snapshot_bytes: int
    log_entries: int
    log_bytes: int


class Status(BaseModel):
    device: str
    device_id: str
    users: list[str]
    documents: int
    corrupt: dict[str, str]
    #: with ``?detail=true`` only: the store's file size, each document's sizes, and how many
    #: events each vector index answers for
    file_bytes: int | None = None
    sizes: list[DocumentSize] | None = None
    vectors: dict[str, int] | None = None

    @classmethod
    def of(cls, status: PeerStatus) -> Status:
        """The detailed status of a peer (`Peer.status`)."""
        return cls(
            device=status.device,
            device_id=status.device_id,
            users=status.users,
            documents=len(status.documents),
            corrupt=status.corrupt,
            file_bytes=status.file_bytes,
            sizes=[
                DocumentSize(
                    doc_id=doc.doc_id,
                    scope=doc.scope,
                    records=doc.records,
                    snapshot_bytes=doc.snapshot_bytes,
                    log_entries=doc.log_entries,
                    log_bytes=doc.log_bytes,
                )
                for doc in status.documents
            ],
            vectors=status.vectors,
        )


class Problem(BaseModel):
    """Every 4xx answer: what is wrong, and the field it is wrong in (if one)."""

    error: str
    field: str | None = None


def problem(error: str, field: str | None = None) -> dict[str, Any]:
    return Problem(error=error, field=field).model_dump()
