"""Document ids (`hearthsync.crdt.kinds`): one spelling per document."""

from __future__ import annotations

import pytest

from hearthsync.crdt.kinds import Kind, events_doc, parse
from hearthsync.errors import ValidationError


@pytest.mark.parametrize("month", ["\uff12\uff10\uff12\uff16-06", "\u0662\u0660\u0662\u0666-06"])
def test_a_month_is_written_in_ascii_digits(month: str) -> None:
    """Found in review: ``\\d`` took any Unicode digit, so a peer's update to the events
    document of month 2026-06 in full-width digits was stored and sent on, and no query
    ever listed it (months are compared as text, and only ASCII ones are ever made)."""
    with pytest.raises(ValidationError, match="not a hearthsync document id"):
        parse(f"user/alice/events/{month}")
    info = parse(events_doc("alice", "2026-06"))
    assert (info.kind, info.subject, info.month) == (Kind.EVENTS, "alice", "2026-06")
