"""The records hearthsync stores, validated at the edge (DESIGN: data model, invariant 5).

Every record is a frozen pydantic model.  Construction validates everything: ids are well
formed, sizes are bounded, blocked categories of personal data are refused with an error naming
the field (see `hearthsync.model.pii`).  Records are stored in CRDT documents as compact JSON;
`encode` and `decode` are the only two ways in and out.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints
from pydantic.fields import FieldInfo

from hearthsync.errors import ValidationError
from hearthsync.ids import DEVICE_RE, KEY_RE, NAME_RE
from hearthsync.model.pii import (
    SUSPECT,
    blocked_category_of_text,
    blocked_text_error,
    check_no_pii,
)

MAX_TEXT = 2_000  #: characters in any free-text field
MAX_JSON_BYTES = 16_384  #: encoded size of any free-form JSON field (payload, value)
MAX_LIST = 64  #: items in any list field
MAX_DEPTH = 5  #: nesting of free-form JSON


_NAME_RULE = "must be 1-64 characters of a-z, 0-9, '_' or '-'"
_KEY_RULE = "must look like 'domain/key' (a-z, 0-9, '_', '-', '.')"
#: patterns checked by pydantic-core itself (no Python call per field: writes are hot)
_RULES = {f"^{NAME_RE.pattern}$": _NAME_RULE, f"^{KEY_RE.pattern}$": _KEY_RULE}


#: integers of more digits are refused: pydantic writes any integer, but neither it nor
#: Python's ``json`` reads back more than 4,300 digits (the stored record never read again)
MAX_INT_DIGITS = 4_300
_INT_LIMIT = 10**MAX_INT_DIGITS


def _depth(value: object, level: int = 0) -> int:
    """How deep ``value`` nests; raises `ValueError` for an integer JSON cannot read back."""
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    if type(value) is int:
        _readable_int(value)
    return level


def _readable_int(value: int) -> int:
    if not -_INT_LIMIT < value < _INT_LIMIT:
        raise ValueError(f"must be an integer of at most {MAX_INT_DIGITS} digits")
    return value


def _bounded_json(value: JsonValue) -> JsonValue:
    """``value`` if JSON holds it as it is, within the limits.  A NaN or infinity (JSON has
    none: it was stored as null, and a null fact is a removal), a lone surrogate (no UTF-8:
    the write failed at its commit, outside any check) and an integer of more than
    `MAX_INT_DIGITS` (no JSON reader takes it back) are refused (found in review)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _readable_int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number, not NaN or an infinity")
        return value
    if isinstance(value, str):
        size = len(_utf8(value)) + 2
        if 6 * size > MAX_JSON_BYTES:  # escaped (a control character is six bytes), it may
            # be over: measured as JSON writes it, as a string in a list is (found in review:
            # 16,000 NULs were stored as 96 KB)
            size = len(_utf8(json.dumps(value, ensure_ascii=False)))
        if size > MAX_JSON_BYTES:
            raise ValueError(f"{size} bytes encoded, the limit is {MAX_JSON_BYTES}")
        return value
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("must hold finite numbers only, not NaN or an infinity") from None
    size = len(_utf8(text))
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{size} bytes encoded, the limit is {MAX_JSON_BYTES}")
    return value


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError("holds text that is not valid Unicode (a lone surrogate)") from None


#: written by the peer, not by people: clocks and device ids, whose digits are not personal
#: data; and ``evidence``, which holds only event ids and markers (`_evidence_item`).  Ids that
#: people choose (users, objects, regions) are checked: "555-123-4567" is a well-formed name.
_SYSTEM_FIELDS = frozenset(
    {"set_at", "device", "hlc", "at", "ts", "stamps", "key_stamps", "evidence"}
)

#: an event id, as `Peer` makes them (``ev-`` + hex): written by the peer, never checked
_EVENT_ID = r"ev-[a-z0-9]{6,40}"
_EVENT_ID_RULE = f"^{_EVENT_ID}$"
_EVENT_ID_ONLY = re.compile(_EVENT_ID)
_HLC = rf"\d{{16}}\.\d{{5}}\.{DEVICE_RE.pattern}"  # `hearthsync.hlc.Timestamp`
#: a ``Preference.evidence`` item: an event id, or a marker the slow loop keeps beside them
#: (`hearthsync.context.feedback`: ``hearth:stated=<hlc>``, ``hearth:stable``,
#: ``hearth:drift=<event id>``).  Nothing else, so no personal data and no free text.
_EVIDENCE = re.compile(
    rf"{_EVENT_ID}|hearth:stable|hearth:stated=(?:{_HLC})?|hearth:drift={_EVENT_ID}"
)


#: the validation context of a record read back from a document (`Record.decode`): the rules
#: for what people write (personal data, evidence's shape) held when it was written, on the
#: robot that wrote it.  Applied again on reading, a rule added since (or one a newer robot
#: of the household has and this one has not) would make that record unreadable, and every
#: read of the document it is in with it.
_STORED = {"stored": True}


#: the values `check_no_pii` looks into (a tuple: ``dict | list | tuple`` in a call is a new
#: union each time, twice the cost of the ``isinstance`` itself)
_CONTAINERS = (dict, list, tuple)


def _as_written(info: pydantic.ValidationInfo) -> bool:
    """Whether the record is being written (checked) rather than read back from a document."""
    return not (info.context and info.context.get("stored"))


def is_event_id(text: str) -> bool:
    """Whether ``text`` is an event id as `Peer` makes them (``ev-`` and hex)."""
    return _EVENT_ID_ONLY.fullmatch(text) is not None


def _evidence_item(item: str, info: pydantic.ValidationInfo) -> str:
    if _as_written(info) and not _EVIDENCE.fullmatch(item):
        # the value is not repeated: it may be personal data
        raise ValueError(
            "must be an event id ('ev-' then 6 to 40 of a-z 0-9) or a 'hearth:' marker"
        )
    return item


Name = Annotated[str, StringConstraints(pattern=f"^{NAME_RE.pattern}$")]
Key = Annotated[str, StringConstraints(pattern=f"^{KEY_RE.pattern}$")]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]


def _domain_key(key: str, info: pydantic.ValidationInfo) -> str:
    """A key written now names its domain (``beverage/coffee``: the domain decides which
    tasks may read it).  One read back keeps the shape it was written with: a key of one
    segment was taken until 2026-12-06, and refusing it on reading made that preference
    vanish from a store written before (the rule of `_STORED`)."""
    if _as_written(info) and "/" not in key:
        raise ValueError(_KEY_RULE)
    return key


#: the key of a preference or health record: a `Key` with its domain when written
DomainKey = Annotated[Key, AfterValidator(_domain_key)]


def _ascii_time(value: str, info: pydantic.ValidationInfo) -> str:
    """A time of day written now is in ASCII digits: pydantic's ``\\d`` takes any Unicode
    digit, and a bound is compared as text with the clock's ``HH:MM``
    (`hearthsync.context.situation.in_window`), so 07:00 in Arabic-Indic digits held at no
    time (found in review).  One read back keeps its digits (the rule of `_STORED`)."""
    if _as_written(info) and not value.isascii():
        raise ValueError("must be HH:MM in ASCII digits, 00:00 to 23:59")
    return value


#: a time of day, ``HH:MM`` (a condition's or a routine's bound)
ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$"), AfterValidator(_ascii_time)]
Json = Annotated[JsonValue, AfterValidator(_bounded_json)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Hlc = Annotated[str, Field(max_length=120)]
EventId = Annotated[str, Field(pattern=_EVENT_ID_RULE)]


class Record(BaseModel):
    """Base of every stored record: frozen, strict about unknown fields, PII-checked."""

    # a NaN or infinity in a pose or polygon was stored as null and lost the record at the
    # next read (found in review)
    # and an error, even of a record built directly (not through `build`), never repeats the
    # value it refuses: it may be personal data, and errors get logged
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=False, allow_inf_nan=False,
        hide_input_in_errors=True,
    )  # fmt: skip

    @pydantic.model_validator(mode="after")
    def _no_blocked_personal_data(self, info: pydantic.ValidationInfo) -> Self:
        if not _as_written(info):
            return self
        for name, keyed in _checked_fields(type(self)):
            value = getattr(self, name)
            if keyed:  # a removal carries nothing to check, and must be able to take out a
                # fact stored before a check refused its key
                value = {key: item for key, item in value.items() if item is not None}
            if type(value) is str:
                # the cheap test first: most text holds no digits (and many ids are empty)
                if value and SUSPECT.search(value):
                    check_no_pii(value, field=name)
            elif value and isinstance(value, _CONTAINERS):  # nested records check themselves
                check_no_pii(value, field=name)  # (an empty one holds nothing to check)
        return self

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """Validate ``fields`` into a record or raise `ValidationError` naming the field."""
        try:
            return cls(**fields)
        except pydantic.ValidationError as exc:
            raise _translate(cls, exc, fields) from None

    @classmethod
    def derived(cls, **fields: Any) -> Self:
        """A record made from stored ones (a move, from the place it replaces): checked for
        its shape, not against the rules for what people write, which held when what it
        copies was written (`_STORED`); raises `ValidationError` naming the field."""
        try:
            return cls.model_validate(fields, context=_STORED)
        except pydantic.ValidationError as exc:
            raise _translate(cls, exc, fields) from None

    #: the field whose value is the record's key in a slot map (its slot key, before any
    #: ``#condition``), so a document need not store it twice (`hearthsync.crdt.handles`)
    SLOT_KEY_FIELD: ClassVar[str | None] = None

    def encode(self, *, without: frozenset[str] = frozenset()) -> str:
        """Compact JSON: defaults left out, and the fields in ``without`` (which the document
        holding it implies) too; `decode` with the same fields as ``given`` reverses it."""
        return self.model_dump_json(
            exclude_defaults=True, exclude=set(without) if without else None
        )

    @classmethod
    def decode(cls, text: str, *, given: str = "") -> Self:
        """Validate ``text``; ``given`` is a JSON object's opening with implied fields
        (``'{"user":"alice",'``), put before the stored fields so that a stored value wins."""
        if given:
            text = given + text[1:] if text != "{}" else given[:-1] + "}"
        try:
            return cls.model_validate_json(text, context=_STORED)
        except pydantic.ValidationError as exc:
            raise _translate(cls, exc) from None


def given_fields(fields: dict[str, str]) -> str:
    """The ``given`` of `Record.decode` for these implied fields: a JSON object's opening
    (``'{"user":"alice",'``), or ``""`` for none."""
    if not fields:
        return ""
    return json.dumps(fields, separators=(",", ":"))[:-1] + ","


@functools.cache
def _checked_fields(cls: type[Record]) -> tuple[tuple[str, bool], ...]:
    """`_content_fields`, each with whether it is keyed (`FieldMerged.KEYED`): looked up once
    per class, as a missing attribute costs a raised error on each pydantic instance."""
    keyed: tuple[str, ...] = getattr(cls, "KEYED", ())
    return tuple((name, name in keyed) for name in _content_fields(cls))


@functools.cache
def _content_fields(cls: type[Record]) -> tuple[str, ...]:
    """The fields people write that can hold text: the ones checked for personal data.

    Clocks, device and event ids are written by the peer; numbers, flags and fixed choices
    hold no text.
    """
    return tuple(
        name
        for name, info in cls.model_fields.items()
        if name not in _SYSTEM_FIELDS and not _textless(info)
    )


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X``, ``X | None`` and ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else annotation
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _textless(info: FieldInfo) -> bool:
    """Numbers, flags, fixed choices, nested records (they check themselves), and event ids
    (the peer's: ``ev-`` and hex, whose digits may by chance look like a card number)."""
    annotation = _unwrapped(info.annotation)
    if annotation in (bool, int, float) or typing.get_origin(annotation) is Literal:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel | enum.Enum):
        return True
    return any(getattr(m, "pattern", None) == _EVENT_ID_RULE for m in info.metadata)


#: the branches of a JSON value's union, which pydantic puts in an error's location
_JSON_BRANCHES = frozenset({"list", "dict", "str", "int", "float", "bool"})


def _located(loc: tuple[int | str, ...], given: Any) -> list[int | str]:
    """``loc`` as a place in what was ``given``: the union branches pydantic names in it are
    left out (a NaN in a preference's value was ``value.float``, in a list ``value.list.1.float``,
    found in review).  A part that is a key or an index of the value reached so far is a place;
    a branch name that is not is left out; past anything else (a record given as an object,
    say), the rest is kept as pydantic gives it."""
    parts: list[int | str] = []
    here, walking = given, given is not None
    for part in loc:
        if walking:
            if isinstance(here, Mapping) and part in here:
                here = here[part]
                parts.append(part)
                continue
            if isinstance(here, list | tuple) and isinstance(part, int) and 0 <= part < len(here):
                here = here[part]
                parts.append(part)
                continue
            if part in _JSON_BRANCHES:
                continue
            walking = False
        parts.append(part)
    return parts


def _translate(
    cls: type[BaseModel], exc: pydantic.ValidationError, given: Mapping[str, Any] | None = None
) -> ValidationError:
    first = exc.errors(include_url=False)[0]
    # a key of a mapping is part of the location: one that looks like personal data (a phone
    # number as a fact's name) is not repeated, there or in the message (errors get logged)
    parts = [
        str(part)
        for part in _located(first["loc"], given)
        if not (isinstance(part, str) and blocked_category_of_text(part))
    ]
    field = ".".join(parts) or None
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, ValidationError):  # ours, raised inside a validator: keep its class
        return type(cause)(str(cause), field=cause.field or field)
    msg = first["msg"].removeprefix("Value error, ")
    where = f"{cls.__name__}.{field}" if field else cls.__name__
    rule = _RULES.get(str(first.get("ctx", {}).get("pattern", "")))
    if rule:  # the message would repeat what was given: not if it is personal data
        given = first.get("input")
        refused = (
            blocked_text_error(given, field=field or where) if isinstance(given, str) else None
        )
        if refused is not None:
            return refused
        msg = f"{rule}, got {given!r:.80}"
    return ValidationError(f"{where}: {msg}", field=field)


# ---------------------------------------------------------------------------------- people


class FieldMerged(Record):
    """A record merged field by field: each robot's version carries, in ``stamps``, the hybrid
    time at which each of its fields got its value, and a reader takes every field from the
    version that set it last (`merge_fields`).  Two robots apart that change different fields
    both keep their change; a record read as a whole would keep only the later robot's.

    A version without ``stamps`` (written before they existed) set all its fields at its
    ``set_at``.
    """

    MERGED: ClassVar[tuple[str, ...]] = ()  #: the fields merged one by one
    #: the mappings among ``MERGED`` merged entry by entry, each entry with its own stamp in
    #: ``key_stamps``; an entry set to ``None`` is removed (kept as ``None``, so the removal
    #: outranks older versions of it, and shown by `shown` without it)
    KEYED: ClassVar[tuple[str, ...]] = ()

    stamps: Annotated[dict[Name, Hlc], Field(max_length=16)] = {}
    key_stamps: Annotated[dict[Name, dict[Name, Hlc]], Field(max_length=4)] = {}

    @pydantic.model_validator(mode="after")
    def _stamps_name_fields(self) -> Self:
        unknown = sorted(set(self.stamps) - set(self.MERGED))
        if unknown:
            raise ValueError(f"stamps name fields it does not merge: {', '.join(unknown)}")
        unkeyed = sorted(set(self.key_stamps) - set(self.KEYED))
        if unkeyed:
            raise ValueError(f"key_stamps name fields it does not merge by key: {unkeyed}")
        return self

    def shown(self) -> Self:
        """This record as people read it: without the removed entries of its keyed fields."""
        removed = {
            name: {k for k, v in getattr(self, name).items() if v is None} for name in self.KEYED
        }
        if not any(removed.values()):
            return self
        update: dict[str, Any] = {
            name: {k: v for k, v in getattr(self, name).items() if v is not None}
            for name in self.KEYED
        }
        update["key_stamps"] = {
            name: {k: at for k, at in stamps.items() if k not in removed.get(name, ())}
            for name, stamps in self.key_stamps.items()
        }
        return self.model_copy(update=update)


class Profile(FieldMerged):
    """Who a person is to the household (``user/<id>/profile``)."""

    MERGED = ("name", "roles", "languages", "accessibility", "household_role", "attributes")
    KEYED = ("attributes",)

    user: Name
    name: ShortText
    roles: Annotated[tuple[Name, ...], Field(max_length=MAX_LIST)] = ()
    languages: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]],
        Field(max_length=16),
    ] = []
    accessibility: Annotated[tuple[ShortText, ...], Field(max_length=MAX_LIST)] = ()
    household_role: Literal[
        "owner", "adult", "child", "guest", "resident", "patient", "caregiver", "worker", "staff"
    ] = "adult"
    #: facts about the person, merged fact by fact; ``None`` removes one.  Removed facts are
    #: kept (`FieldMerged.KEYED`), up to `MAX_LIST` of them, the oldest dropped first.  A
    #: change sets at most `MAX_LIST` facts (and `Peer.set_profile` keeps a person within
    #: that, as far as one robot sees); a stored version is read whatever it holds, so that
    #: every robot shows the same profile, however many facts robots apart added between them
    attributes: dict[Name, Json] = {}
    set_at: Hlc = ""
    device: str = ""

    @pydantic.field_validator("attributes")
    @classmethod
    def _few_attributes(
        cls, attributes: dict[str, JsonValue], info: pydantic.ValidationInfo
    ) -> dict[str, JsonValue]:
        held = sum(value is not None for value in attributes.values())
        if held > MAX_LIST and _as_written(info):
            raise ValueError(f"{held} facts set, the limit is {MAX_LIST}")
        return attributes


class Calibration(FieldMerged):
    """How a robot should behave with this person (``user/<id>/calibration``).

    The three unit values run from 0 (never, terse, slow) to 1 (always, chatty, brisk).
    """

    MERGED = ("proactivity", "verbosity", "pace", "personal_space_m")

    user: Name
    proactivity: Unit = 0.5
    verbosity: Unit = 0.5
    pace: Unit = 0.5
    personal_space_m: Annotated[float, Field(ge=0.0, le=5.0)] = 0.8
    set_at: Hlc = ""
    device: str = ""


class Condition(Record):
    """When a preference applies.  An empty condition applies always."""

    days: Literal["weekday", "weekend"] | None = None
    after: ClockTime | None = None
    before: ClockTime | None = None
    location: Name | None = None
    with_users: Annotated[tuple[Name, ...], Field(max_length=16)] = ()

    def key(self) -> str:
        """A canonical string naming this condition ('' when unconditional)."""
        parts: list[str] = []
        if self.days:
            parts.append(self.days)
        if self.after or self.before:
            parts.append(f"{self.after or ''}-{self.before or ''}")
        if self.location:
            parts.append(f"at:{self.location}")
        if self.with_users:
            parts.append("with:" + "+".join(sorted(self.with_users)))
        return ",".join(parts)


#: the empty condition: a preference that applies always
ALWAYS = Condition()


def as_condition(condition: Condition | Mapping[str, Any] | None) -> Condition:
    """``condition`` as a record (None: always), a mapping of its fields validated as every
    record is (an error names ``condition.<field>``)."""
    if condition is None:
        return ALWAYS
    if isinstance(condition, Condition):
        return condition
    if not isinstance(condition, Mapping):
        raise ValidationError(
            f"condition must be a Condition or a mapping of its fields, not "
            f"{type(condition).__name__}",
            field="condition",
        )
    try:
        return Condition.build(**condition)
    except ValidationError as exc:
        field = f"condition.{exc.field}" if exc.field else "condition"
        raise type(exc)(f"condition: {exc}", field=field) from None


Source = Literal["explicit", "correction", "implicit", "learned"]


class Preference(Record):
    """One value a person prefers for ``key`` (``domain/key``) under ``condition``.

    ``set_at`` is the writer's hybrid logical timestamp and ``device`` the robot that wrote it;
    both are filled in by the peer.  ``evidence`` lists the events that justify the value.
    ``cleared`` is the newest deletion of the key its writer knew of when it wrote it (filled
    in by the peer): a version overwrites its robot's own tombstone, and the deletion must
    still hide the other robots' older versions (`hearthsync.context.resolve.candidates`).
    """

    SLOT_KEY_FIELD = "key"

    user: Name
    key: DomainKey
    value: Json
    source: Source = "explicit"
    confidence: Unit = 1.0
    evidence_count: Annotated[int, Field(ge=0, le=10**9)] = 1
    condition: Condition = Condition()
    set_at: Hlc = ""
    device: str = ""
    evidence: Annotated[
        tuple[Annotated[str, Field(max_length=80), AfterValidator(_evidence_item)], ...],
        Field(max_length=MAX_LIST),
    ] = ()
    note: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    deleted: bool = False
    cleared: Hlc = ""


class HealthRecord(Record):
    """A fact in the ``health`` scope (``user/<id>/health``): medication, condition, schedule."""

    SLOT_KEY_FIELD = "key"

    user: Name
    key: DomainKey
    value: Json
    note: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    set_at: Hlc = ""
    device: str = ""
    deleted: bool = False


# ---------------------------------------------------------------------------------- events


class EventType(enum.StrEnum):
    COMMAND = "COMMAND"
    CORRECTION = "CORRECTION"
    FEEDBACK_EXPLICIT = "FEEDBACK_EXPLICIT"
    FEEDBACK_IMPLICIT = "FEEDBACK_IMPLICIT"
    OBSERVATION = "OBSERVATION"
    SYSTEM = "SYSTEM"


class ContextSnapshot(Record):
    """Where and with whom an interaction happened."""

    location: Name | None = None
    time_of_day: Literal["night", "morning", "afternoon", "evening"] | None = None
    people_present: Annotated[tuple[Name, ...], Field(max_length=16)] = ()
    task: Name | None = None
    ambient: Json = None


class InteractionEvent(Record):
    """One immutable entry of the interaction history (``user/<id>/events/<yyyy-mm>``).

    ``ts`` is when it happened (milliseconds since the epoch, the robot's wall clock, used for
    time windows); ``hlc`` orders it against other robots' events.  ``text`` is what gets
    embedded for semantic recall (see `hearthsync.store.embedding`).
    """

    id: EventId
    user: Name
    type: EventType
    domain: Name
    text: Text = ""
    payload: Json = None
    context: ContextSnapshot = ContextSnapshot()
    ts: Annotated[int, Field(ge=0, lt=2**53)]
    hlc: Hlc = ""
    device: str = ""
    session: Annotated[str, Field(max_length=80)] = ""


# ---------------------------------------------------------------------------------- home


class Pose(Record):
    """A position (metres) and heading (radians) in a named reference frame."""

    frame: Name = "map"
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    yaw: float = 0.0


class Region(Record):
    """A named place: the kitchen, shelf 2, Alice's office.  ``polygon`` is in ``frame``."""

    SLOT_KEY_FIELD = "id"

    id: Name
    label: ShortText
    frame: Name = "map"
    polygon: Annotated[tuple[tuple[float, float], ...], Field(max_length=256)] = ()
    parent: Name | None = None
    tags: Annotated[tuple[Name, ...], Field(max_length=MAX_LIST)] = ()
    set_at: Hlc = ""
    device: str = ""
    deleted: bool = False


class Placement(Record):
    """Where an object belongs or was last put: the green mug on shelf 2."""

    SLOT_KEY_FIELD = "object"

    object: Name
    label: ShortText
    region: Name | None = None
    pose: Pose | None = None
    owner: Name | None = None
    kind: Literal["belongs", "observed"] = "belongs"
    set_at: Hlc = ""
    device: str = ""
    deleted: bool = False


class SpatialChange(Record):
    """One entry of the spatial change history: ``object`` moved from one region to another."""

    object: Name
    from_region: Name | None = None
    to_region: Name | None = None
    at: Hlc = ""
    device: str = ""


class Routine(Record):
    """A recurring pattern: Bob's late nights, Charlie's Saturday sleep-in."""

    SLOT_KEY_FIELD = "id"

    id: Name
    user: Name | None = None
    label: ShortText
    days: Annotated[
        list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]], Field(max_length=7)
    ] = []
    after: ClockTime | None = None
    before: ClockTime | None = None
    actions: Annotated[tuple[ShortText, ...], Field(max_length=MAX_LIST)] = ()
    constraints: Annotated[tuple[ShortText, ...], Field(max_length=MAX_LIST)] = ()
    set_at: Hlc = ""
    device: str = ""
    deleted: bool = False


class Relationship(Record):
    """An edge of the household graph: user ↔ user, user ↔ object, user ↔ place."""

    subject: Name
    relation: Name
    object: Name
    note: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    set_at: Hlc = ""
    device: str = ""
    deleted: bool = False

    def key(self) -> str:
        return f"{self.subject}|{self.relation}|{self.object}"


R = TypeVar("R", bound=Record)
M = TypeVar("M", bound=FieldMerged)


def _merge_entries(
    entries: dict[str, tuple[str, str, Any]],
    everywhere: set[str],
    version: M,
    name: str,
    at: str,
) -> None:
    """Fold ``version``'s entries of the keyed field ``name`` into ``entries`` (key: stamp,
    device, value): each entry from the version that set it last.  A version from before
    entry stamps (none for ``name``) set the whole mapping at the field's stamp ``at``, and a
    key it lacks, it had removed then: it counts as a removal of every key another version
    holds."""
    device = str(getattr(version, "device", ""))
    values: dict[str, Any] = getattr(version, name)
    own = version.key_stamps.get(name)
    found: Iterable[tuple[str, Any, str]]
    if own is None:
        if not at:
            return
        found = ((key, values.get(key), at) for key in everywhere)
    else:
        found = ((key, value, own.get(key) or at) for key, value in values.items())
    for key, value, key_at in found:
        if key_at and (key not in entries or (key_at, device) > entries[key][:2]):
            entries[key] = (key_at, device, value)


def merge_fields(versions: Sequence[M]) -> M | None:
    """One record of every robot's ``versions`` (oldest first, as `SlotMap.versions` gives
    them): each field from the version that set it last (by hybrid time, then device id), with
    the stamps that say so; the rest of the record (``set_at``, ``device``) is the newest
    version's.  ``None`` if there are none."""
    if not versions:
        return None
    best: dict[str, tuple[str, str, Any]] = {}
    keyed: dict[str, dict[str, tuple[str, str, Any]]] = {}
    # every key of each keyed field, which a version from before entry stamps removes if it
    # lacks it: read only where there is such a version
    everywhere = {
        name: {key for version in versions for key in getattr(version, name)}
        for name in versions[0].KEYED
        if any(name not in version.key_stamps for version in versions)
    }

    for version in versions:
        stamps, device = version.stamps, str(getattr(version, "device", ""))
        for name in version.MERGED:
            at = stamps.get(name) if stamps else str(getattr(version, "set_at", ""))
            if name in version.KEYED:
                entries = keyed.setdefault(name, {})
                _merge_entries(entries, everywhere.get(name, set()), version, name, at or "")
                continue
            if at and (name not in best or (at, device) > best[name][:2]):
                best[name] = (at, device, getattr(version, name))
    merged: dict[str, Any] = {name: value for name, (_, _, value) in best.items()}
    stamps = {name: at for name, (at, _, _) in best.items()}
    key_stamps: dict[str, dict[str, str]] = {}
    for name, entries in keyed.items():
        merged[name] = {key: value for key, (_, _, value) in sorted(entries.items())}
        key_stamps[name] = {key: at for key, (at, _, _) in sorted(entries.items())}
        if entries:
            stamps[name] = max(at for at, _, _ in entries.values())
    return versions[-1].model_copy(update=merged | {"stamps": stamps, "key_stamps": key_stamps})


#: removed entries a keyed field keeps (`FieldMerged.KEYED`) beyond those another robot's
#: version still holds: so many facts removed and never set again are rare; past them, the
#: oldest removal is forgotten (a robot that still holds the fact, not heard of here, and
#: writes the profile, would bring it back)
MAX_REMOVED = 64


def trim_removals(
    entries: dict[str, Any], stamps: dict[str, str], others: Sequence[FieldMerged], name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """``entries`` and their ``stamps`` with at most `MAX_REMOVED` removed entries, the
    newest removals kept, and every removal of an entry that one of the ``others`` versions
    of the record still holds (without it, that version's value would show again)."""
    removed = sorted((stamps.get(k, ""), k) for k, v in entries.items() if v is None)
    if len(removed) <= MAX_REMOVED:
        return entries, stamps
    needed = {k for other in others for k, v in getattr(other, name).items() if v is not None}
    droppable = [k for _, k in removed if k not in needed]
    dropped = set(droppable[: max(0, len(removed) - MAX_REMOVED)])
    if not dropped:
        return entries, stamps
    return (
        {k: v for k, v in entries.items() if k not in dropped},
        {k: at for k, at in stamps.items() if k not in dropped},
    )
