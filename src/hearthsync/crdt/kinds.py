"""Which documents exist, and the scope, subject and lineage of each (DESIGN: data model).

A document id is a path::

    household                       scope household   subject home
    home/spatial                    scope spatial     subject home
    home/graph                      scope core        subject home
    user/<id>/profile               scope core        subject <id>
    user/<id>/prefs                 scope core        subject <id>
    user/<id>/calibration           scope core        subject <id>
    user/<id>/health                scope health      subject <id>
    user/<id>/events/<yyyy-mm>      scope history     subject <id>

The scope decides which key encrypts a document and which tasks may read it; the subject is
whose data it is (forgetting a user drops every document whose subject is that user).
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from hearthsync.errors import ValidationError
from hearthsync.ids import NAME_RE, DocId, LineageId, Scope, UserId, genesis_lineage

#: the subject of the household's shared documents, so never a user's id: a user "home"
#: was accepted, and forgetting them dropped ``household``, ``home/graph`` and
#: ``home/spatial`` on every robot (found in review)
HOME = "home"


class Kind(enum.StrEnum):
    HOUSEHOLD = "household"
    SPATIAL = "spatial"
    GRAPH = "graph"
    PROFILE = "profile"
    PREFS = "prefs"
    CALIBRATION = "calibration"
    HEALTH = "health"
    EVENTS = "events"


SCOPES: dict[Kind, Scope] = {
    Kind.HOUSEHOLD: Scope("household"),
    Kind.SPATIAL: Scope("spatial"),
    Kind.GRAPH: Scope("core"),
    Kind.PROFILE: Scope("core"),
    Kind.PREFS: Scope("core"),
    Kind.CALIBRATION: Scope("core"),
    Kind.HEALTH: Scope("health"),
    Kind.EVENTS: Scope("history"),
}

_USER_DOC = re.compile(r"user/(?P<user>[^/]+)/(?P<kind>profile|prefs|calibration|health)")
_EVENTS_DOC = re.compile(r"user/(?P<user>[^/]+)/events/(?P<month>[0-9]{4}-(0[1-9]|1[0-2]))")


@dataclass(frozen=True, slots=True)
class DocInfo:
    """What a document id says about the document."""

    doc_id: DocId
    kind: Kind
    scope: Scope
    subject: str
    month: str | None = None

    @property
    def genesis(self) -> LineageId:
        return genesis_lineage(self.doc_id)


@functools.lru_cache(maxsize=65_536)  # ids are parsed on every frame; DocInfo is immutable
def parse(doc_id: str) -> DocInfo:
    """Return the `DocInfo` of a well-formed document id, else raise `ValidationError`."""
    if doc_id == "household":
        return DocInfo(DocId(doc_id), Kind.HOUSEHOLD, SCOPES[Kind.HOUSEHOLD], HOME)
    if doc_id == "home/spatial":
        return DocInfo(DocId(doc_id), Kind.SPATIAL, SCOPES[Kind.SPATIAL], HOME)
    if doc_id == "home/graph":
        return DocInfo(DocId(doc_id), Kind.GRAPH, SCOPES[Kind.GRAPH], HOME)
    match = _USER_DOC.fullmatch(doc_id) or _EVENTS_DOC.fullmatch(doc_id)
    if match and NAME_RE.fullmatch(match["user"]) and match["user"] != HOME:
        kind = Kind(match.groupdict().get("kind") or "events")
        month = match.groupdict().get("month")
        return DocInfo(DocId(doc_id), kind, SCOPES[kind], match["user"], month)
    raise ValidationError(f"not a hearthsync document id: {doc_id!r:.100}", field="doc_id")


def user_doc(user: UserId | str, kind: Kind) -> DocId:
    if kind not in (Kind.PROFILE, Kind.PREFS, Kind.CALIBRATION, Kind.HEALTH):
        raise ValueError(f"{kind} is not a per-user document kind with a fixed id")
    return DocId(f"user/{user}/{kind.value}")


def events_doc(user: UserId | str, month: str) -> DocId:
    return DocId(f"user/{user}/events/{month}")
