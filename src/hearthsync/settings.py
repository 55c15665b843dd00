"""Household settings that every robot obeys: for now, the task policy (which tasks may read
which scopes, shared-setting rules; `hearthsync.context.policy`).

The policy decides where health data goes, so it is a signed ``policy`` statement (SPEC §8,
`hearthsync.crypto.statement`), written by an owner or admin robot, and every robot checks it
before obeying it.  Statements live in the household document's ``settings`` map, one slot per
device (``tasks\\x1f<device id>``, as registers do): two admins changing the policy while
partitioned both keep their statement, and every robot obeys the same one, the newest by
hybrid timestamp (DESIGN invariant 3).  A statement that does not check out is ignored and
reported; with none, the built-in default policy applies.

A signature does not stop a robot that may edit the document (any of the household's) from
writing a device's *older* statement back into its slot, or removing it: so each robot holds
the newest valid statement it has seen of each device, obeys it while it checks out, and writes
it back into its slot when the document holds an older one (or none), where every robot finds
it again.  A statement is held as soon as the document holds it, before anything reads the
policy, and kept in the robot's store (``meta``, `HELD`) with the batch after the one that
brought it: a rollback merged before any read, or a restart, undoes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from hearthsync.context.policy import DEFAULT_POLICY, HouseholdPolicy
from hearthsync.crdt.handles import SEP, HouseholdDoc
from hearthsync.crypto.statement import POLICY, Statement, check_statement
from hearthsync.errors import CryptoError, HearthError, ValidationError
from hearthsync.hlc import MAX_AHEAD_MS, Timestamp
from hearthsync.ids import DocId

if TYPE_CHECKING:
    from hearthsync.peer import Peer

log = logging.getLogger(__name__)

HOUSEHOLD = DocId("household")
TASKS = "tasks"  #: the subject of the task policy's statements
ADMINS = ("owner", "admin")
#: how far this robot's clock may move before the policy in force is checked again
REREAD_S = 60.0
#: the store's ``meta`` keys of the statements held (`HouseholdSettings.hold`): this, the slot
HELD = "held:"


class HouseholdSettings:
    """The settings of one peer's household: read (checked, cached) and written (signed)."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._policy: tuple[HouseholdPolicy, Statement | None] | None = None
        self._read_at = 0.0  #: this robot's clock when the policy was read
        #: the statement last reported as not checking out, by slot (each new one is reported)
        self._refused: dict[str, str] = {}
        #: each device's newest statement seen valid here: a slot set back to an older one,
        #: or emptied, by a robot that may edit the document does not undo it
        self._held: dict[str, str] = {}

    def changed(self) -> None:
        """The household's settings (or this robot's trust) changed: read them again."""
        self._policy = None

    def load(self, held: dict[str, str]) -> None:
        """The statements held when the robot last ran (the store's ``meta`` rows of `HELD`),
        checked again whenever they are read."""
        self._held.update({key.removeprefix(HELD): text for key, text in held.items()})
        self._policy = None

    def hold(self) -> None:
        """Read the settings now, rather than when the policy is next read: hold (and keep in
        the store) each valid statement newer than the one held for its slot, and write back
        the one held where the document holds an older one or none.  A rollback merged before
        the next read, or across a restart, found nothing held (found in review), and writing
        back from a read made `policy()` a write.  Called once the transaction that changed the
        settings has ended, and when the robot starts."""
        if not self._peer._closed:
            self._policy, self._read_at = self._read_policy(), self._peer._wall()

    def policy(self) -> HouseholdPolicy:
        """The task policy in force: the newest valid statement's, else the default.

        Whether a statement is in force depends on the clock too (one more than a day ahead
        is obeyed once the clock gets there; one whose signer's certificate has expired is
        not), so what was read is read again once this robot's clock has moved a minute
        either way (found in review: a verdict held until the household changed)."""
        now = self._peer._wall()
        if self._policy is None or abs(now - self._read_at) >= REREAD_S:
            self._policy, self._read_at = self._read_policy(), now
        return self._policy[0]

    def policy_statement(self) -> Statement | None:
        """Who set the policy in force, and when (None: the built-in default)."""
        self.policy()
        assert self._policy is not None
        return self._policy[1]

    def set_policy(self, policy: HouseholdPolicy) -> Statement:
        """Sign ``policy`` as this robot's statement and queue it (the caller awaits the
        write); `ValidationError` unless this robot is an owner or admin (or of no household)."""
        peer = self._peer
        household = peer.household
        if household is not None and not household.is_admin:
            raise ValidationError(
                "only an owner or admin robot may set the household's task policy", field="policy"
            )
        # after the statement in force (hex in the document, out of `hlc.latest_stored`'s
        # sight; never more than a day ahead of this robot's clock, nor unparsable: `_not_ahead`)
        held = self.policy_statement()
        at, _ = peer._stamp(after=held.at if held is not None else "")
        certificate = household.certificate.to_wire() if household is not None else b""
        statement = Statement.issue(
            peer.identity, POLICY, TASKS, at, body=policy.to_json(), certificate=certificate
        )
        return statement

    def write(self, statement: Statement) -> asyncio.Future[object]:
        """Queue ``statement`` into its device's slot, held and kept with it."""
        slot = f"{statement.subject}{SEP}{statement.device}"
        text = statement.to_text()

        def store(_: object) -> None:
            handle: HouseholdDoc = self._peer._handle(HOUSEHOLD, HouseholdDoc)
            handle.settings[slot] = self._held[slot] = text

        return self._peer._docs.write(HOUSEHOLD, store, meta={HELD + slot: text})

    def _keep(self, held: dict[str, str]) -> None:
        """Keep ``held`` (slot: statement) in the store, with the next batch."""
        meta = {HELD + slot: text for slot, text in held.items()}
        _queue(lambda: self._peer._docs.write(HOUSEHOLD, lambda _: None, meta=meta))

    # ------------------------------------------------------------------ reading

    def _read_policy(self) -> tuple[HouseholdPolicy, Statement | None]:
        best: tuple[tuple[str, str], HouseholdPolicy, Statement] | None = None
        stored = {
            slot: text for slot, text in self._settings().items() if slot.partition(SEP)[0] == TASKS
        }
        for slot in sorted(stored.keys() | self._held.keys()):
            found = self._newest(slot, stored.get(slot))
            if found is None:
                continue
            statement, policy = found
            rank = (statement.at, statement.device)
            if best is None or rank > best[0]:
                best = (rank, policy, statement)
        return (DEFAULT_POLICY, None) if best is None else (best[1], best[2])

    def _newest(self, slot: str, text: str | None) -> tuple[Statement, HouseholdPolicy] | None:
        """The newer valid one of the statement in ``slot`` and the one held for it; the held
        one, when newer, is written back."""
        found = self._valid(slot, text) if text is not None else None
        held = self._held.get(slot)
        if held is not None and held != text:
            kept = self._valid(slot, held)
            if kept is not None and (found is None or kept[0].at > found[0].at):
                log.warning("the task policy in %r was set back or removed: restoring it", slot)
                self._restore(kept[0])
                return kept
        if found is not None and self._held.get(slot) != text:
            assert text is not None
            self._held[slot] = text  # valid only now (its clock came), or its signer known
            self._keep({slot: text})
        return found

    def _restore(self, statement: Statement) -> None:
        """Write ``statement`` back into its slot (when this robot can write: it is serving)."""
        _queue(lambda: self.write(statement))

    def _settings(self) -> dict[str, str]:
        if self._peer._docs.get(HOUSEHOLD) is None:
            return {}
        handle: HouseholdDoc = self._peer._handle(HOUSEHOLD, HouseholdDoc)
        return {str(k): str(v) for k, v in handle.settings.items()}

    def _valid(self, slot: str, text: str) -> tuple[Statement, HouseholdPolicy] | None:
        peer = self._peer
        trust = peer.household.trust if peer.household is not None else None
        try:
            statement = Statement.from_text(text)
            if (statement.kind, statement.subject) != (POLICY, TASKS) or slot != (
                f"{TASKS}{SEP}{statement.device}"
            ):
                raise CryptoError(
                    f"a {statement.kind} statement on {statement.subject!r} in the policy "
                    f"slot {slot!r}"
                )
            now = peer._wall()
            check_statement(
                statement, own_device=peer.device_id, trust=trust, now=int(now), roles=ADMINS,
            )  # fmt: skip
            _not_ahead(statement, now)
            policy = HouseholdPolicy.from_json(statement.body)
        except (CryptoError, ValidationError) as exc:
            if self._refused.get(slot) != text:
                self._refused[slot] = text
                log.warning("ignoring the task policy in %r: %s", slot, exc)
            return None
        return statement, policy


def _queue(write: Callable[[], asyncio.Future[object]]) -> None:
    """Queue ``write`` (of a statement held, or of its keeping) where this robot can write (it
    is serving); what fails, now or once its batch runs, is reported, never raised to a read."""
    try:
        asyncio.get_running_loop()
        written = write()
    except (RuntimeError, HearthError) as exc:  # no loop, closed, or a corrupt document
        log.warning("the task policy held could not be written: %s", exc)
        return
    written.add_done_callback(_report)


def _report(written: asyncio.Future[object]) -> None:
    if not written.cancelled() and written.exception() is not None:
        log.warning("the task policy held could not be written: %s", written.exception())


def _not_ahead(statement: Statement, now: float) -> None:
    """Refuse a statement stamped more than `MAX_AHEAD_MS` ahead of this robot's clock: an
    admin whose clock glitched to 2056 would otherwise set a policy no later one can outrank,
    for good.  (An admin merely days fast has its policy obeyed once the others' clocks get
    there.)"""
    try:
        at = Timestamp.parse(statement.at).ms
    except ValidationError:
        raise CryptoError(f"statement stamped {statement.at[:40]!r}, not a stamp") from None
    if at > now * 1000 + MAX_AHEAD_MS:
        raise CryptoError(f"statement stamped {at - now * 1000:.0f} ms ahead of this robot's clock")
