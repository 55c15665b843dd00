"""The credentials file: saved by a running robot at every grant, written by other processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hearthsync import enrolment
from tests.test_forgetting import enrol_household


def test_a_save_keeps_what_another_writer_put_in_the_file_and_reads_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot saves its credentials at every key grant it accepts.  It reads the file again
    only if someone else wrote it since (``hearth invite`` beside ``hearth run``), and then
    keeps what they wrote."""
    enrol_household(tmp_path, ["owner"])
    folder, now = tmp_path / "owner", int(time.time())
    running = enrolment.load(folder, now)
    assert running is not None
    reads: list[Path] = []
    load = enrolment.load
    monkeypatch.setattr(enrolment, "load", lambda f, n=None: reads.append(f) or load(f, n))
    enrolment.save(folder, running, now)  # a grant: the file was written by another state
    assert len(reads) == 1
    enrolment.save(folder, running, now)  # another grant: nobody wrote it since
    assert len(reads) == 1
    other = load(folder, now)  # `hearth invite`, in another process
    assert other is not None
    enrolment.add_invite(folder, other, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now)
    enrolment.save(folder, running, now)
    assert len(reads) == 3  # add_invite's own read, then this save's
    kept = load(folder, now)
    assert kept is not None
    assert len(kept.invites) == 1
