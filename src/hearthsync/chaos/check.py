"""What the chaos checkers compare: the state of every document a peer holds.

Two peers have converged when they hold the same documents with the same canonical state
vector *and* the same content.  Content is compared as well as state vectors because equal
state vectors can hide a difference (an update held back as pending, a replica rebuilt under
another client id): the content is what a robot reads.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Map

from hearthsync.crdt.handles import ROOTS, SlotMap
from hearthsync.crdt.statevector import canonical
from hearthsync.forgetting import Left
from hearthsync.ids import DocId
from hearthsync.model.records import (
    Calibration,
    HealthRecord,
    InteractionEvent,
    Placement,
    Preference,
    Profile,
    Record,
)
from hearthsync.peer import Peer

#: one document as the checkers see it: (canonical state vector in hex, content as JSON)
DocState = tuple[str, str]


EMPTY_STATE = "00"  #: the canonical state vector of a document that has seen nothing


def document_states(peer: Peer, scopes: frozenset[str] | None = None) -> dict[str, DocState]:
    """Every document ``peer`` holds (only those of ``scopes`` if given), by id.

    A document that has seen nothing and shows nothing counts as not held: a robot creates one
    when the first update it gets for it cannot be merged yet (it waits for an earlier one),
    and reading it is reading nothing, exactly as on a robot that never heard of it.
    """
    found: dict[str, DocState] = {}
    for doc_id, replica in sorted(peer._docs.replicas.items()):
        if scopes is not None and replica.info.scope not in scopes:
            continue
        content: dict[str, Any] = {}
        for name, kind in ROOTS[replica.info.kind]:
            content[name] = replica.doc.get(name, type=kind).to_py()
        state = canonical(replica.state_vector()).hex()
        if state == EMPTY_STATE and not any(content.values()):
            continue
        found[doc_id] = (state, json.dumps(content, sort_keys=True, separators=(",", ":")))
    return found


def digest(peer: Peer, scopes: frozenset[str] | None = None) -> str:
    """A short hash of `document_states`: equal digests, equal documents."""
    h = hashlib.blake2b(digest_size=16)
    for doc_id, (sv, content) in document_states(peer, scopes).items():
        h.update(json.dumps([doc_id, sv, content]).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------- acknowledged writes


@dataclass
class Write:
    """An acknowledged write, and where to find it in any replica.

    Registers (preferences, profiles, calibration, placements) live in per-device slots
    (`hearthsync.crdt.handles.SlotMap`): a later write of the same robot replaces an earlier
    one in its slot, so a write is *present* when the writer's slot holds it with the value
    it wrote (the same hybrid timestamp and `expect`), or a later version (a greater
    timestamp; for a field-merged record, the written field's own stamp).  Events are
    present when their id is in the log with the text written; a new user when the household
    lists them.
    """

    robot: int
    kind: str  #: pref, profile, calibration, move, event, user
    doc_id: DocId
    scope: str
    root: str  #: the document's root type holding it
    slot: str  #: slot key (registers), event id (events) or user id (users)
    set_at: str  #: the hybrid timestamp of a register write ("" otherwise)
    #: the key epoch the writer sealed ``scope`` under when it wrote; -1: none, no key of the
    #: newest epoch held (sealed once one is granted, under it: `Keyring.sealing_epoch`)
    epoch: int
    acked_at: float = 0.0
    #: what the write carried, as entries of the stored record (an event's text, a
    #: preference's value, a placement's label and region, a merged field and its value):
    #: where the write's own version is held (the same stamp), it must hold these
    expect: dict[str, Any] = field(default_factory=dict)
    #: a field-merged record (profile, calibration): the field written, whose own stamp
    #: (``stamps[field]``) is compared rather than the record's; ``field/entry``: an entry of
    #: a field merged entry by entry (``key_stamps[field][entry]``)
    merged: str = ""
    started_at: float = 0.0  #: simulated time the write was made (its op's time)
    #: the newest key epoch the writer held for the document when it wrote (-1: unknown)
    held_epoch: int = -1
    #: a write of a robot revoked later: the members that held it when its revocation ran
    #: (they must keep it); None: not known to any member then, not required
    kept_by: frozenset[int] | None = None

    def describe(self) -> str:
        what = self.slot.replace(SLOT_SEP, "@")
        return f"{self.kind} by r{self.robot} in {self.doc_id} [{what}]"


SLOT_SEP = "\x1f"


class Holdings:
    """What one peer holds, indexed once for many `Write` lookups."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._slots: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._logs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def holds(self, write: Write) -> bool:
        """Whether the peer holds ``write`` (or what overtook it), with the value written."""
        return self.why_not(write) is None

    def why_not(self, write: Write) -> str | None:
        """None if the peer holds ``write``; else "missing", or how the value held differs."""
        replica = self._peer._docs.get(write.doc_id)
        if replica is None:
            return "missing"
        key = (write.doc_id, write.root)
        if write.kind == "event":
            log = self._logs.get(key)
            if log is None:
                array = replica.doc.get(write.root, type=Array)
                log = {entry["id"]: entry for entry in map(json.loads, array)}
                self._logs[key] = log
            found = log.get(write.slot)
            return "missing" if found is None else _differs(found, write)
        if write.kind == "user":  # a user of the household, as the robot lists them
            return None if write.slot in self._peer.users() else "missing"
        if write.kind == "forget":  # a tombstone of the user, in any robot's slot
            return None if write.slot in tombstoned(self._peer) else "missing"
        slots = self._slots.get(key)
        if slots is None:
            ymap = replica.doc.get(write.root, type=Map)
            slots = {slot: json.loads(text) for slot, text in ymap.items()}
            self._slots[key] = slots
        record = slots.get(write.slot)
        if record is None:
            return "missing"
        if write.merged:
            name, _, entry = write.merged.partition("/")  # a field, or an entry of one
            held = record.get("stamps", {}).get(name, "")
            if entry:
                # its own stamp: every entry the workload writes has one.  Falling back on the
                # field's, a fact a broken merge dropped counted as held once the robot wrote
                # another fact (found in review).  A removal may be trimmed away with its stamp
                # (`trim_removals`): then the fact's absence is what was written
                entries = record.get("key_stamps", {}).get(name, {})
                if entry not in entries:
                    removal = all(value is None for value in write.expect.values())
                    return _differs(record, write) if removal else "missing"
                held = entries[entry]
        else:
            held = record.get("set_at", "")
        if held < write.set_at:
            return "missing"
        return _differs(record, write) if held == write.set_at else None


#: the record each root of the workload's writes holds: a stored record leaves out the fields
#: at their default (`Record.encode`), which the comparison must read as that default
_RECORDS: dict[str, type[Record]] = {
    "prefs": Preference, "profile": Profile, "calibration": Calibration,
    "health": HealthRecord, "placements": Placement, "events": InteractionEvent,
}  # fmt: skip


def _differs(record: dict[str, Any], write: Write) -> str | None:
    """How ``record`` differs from what ``write`` carried (None: it holds every entry)."""
    model = _RECORDS.get(write.root)

    def held(name: str) -> Any:
        field_name, _, entry = name.partition("/")
        if entry:  # an entry of a keyed field (profile attributes)
            return record.get(field_name, {}).get(entry)
        if name in record or model is None or name not in model.model_fields:
            return record.get(name)
        return model.model_fields[name].get_default(call_default_factory=True)

    wrong = {name: held(name) for name, value in write.expect.items() if held(name) != value}
    if not wrong:
        return None
    return f"holds {wrong} instead of {write.expect}"


# ---------------------------------------------------------------------- the checkers


@dataclass(frozen=True, slots=True)
class Replica:
    """One robot as the checkers see it after the run."""

    index: int
    peer: Peer
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Findings:
    verified: int  #: acknowledged writes found on every robot that may read them
    lost: list[str]  #: acknowledged writes missing somewhere they should be
    divergences: list[str]  #: pairs of robots whose shared documents differ
    #: writes a robot made once it had processed the revocation (and its new keys) that reached
    #: the revoked robot, or were sealed under an epoch the revoked robot may hold
    leaks: list[str]
    #: acknowledged writes no robot is required to hold: the revoked robot's that no member
    #: held when the revocation ran (the others rightly refuse what it writes after it), and
    #: those about a user the workload asked to forget
    exempt: int = 0
    #: what a robot still holds of a user that was forgotten (documents, listing, data keys)
    remnants: list[str] = field(default_factory=list)


def verify(
    members: list[Replica],
    writes: list[Write],
    *,
    revoked: Sequence[Replica] = (),
    revoked_epochs: dict[int, dict[str, int]] | None = None,
    forget_targets: set[str] | None = None,
    revocation_known: dict[int, dict[int, float]] | None = None,
    views: bool = True,
) -> Findings:
    """Check a quiescent household: convergence, no loss, no leak past a revocation.

    * every pair of ``members`` holds identical documents (state vector and content) in
      every scope both may read, and no robot holds a document outside its scopes;
    * every acknowledged write of a member is present, with the value written, on every
      member that may read it; a write of a revoked robot on every member that held it when
      its revocation ran and is a member still (`Write.kept_by`; the others rightly refuse
      the rest);
    * only users named by a forget the workload attempted (``forget_targets``, acknowledged
      or not; None: trust the acknowledged forgets alone) are forgotten anywhere, and nothing
      of a forgotten user remains;
    * for each ``revoked`` robot (its index: the epochs its revocation started, in
      ``revoked_epochs``), no write a robot made once it knew of that revocation
      (``revocation_known``: revoked robot -> robot -> simulated time from which it had
      processed the revocation and the new keys) reached it, each was sealed under the
      revocation's new epoch or later, and it holds no key of those epochs.
    """
    states = {m.index: document_states(m.peer) for m in members}
    names: dict[str, str] = {m.peer.device_id: f"r{m.index}" for m in members}
    for victim in revoked:
        names[victim.peer.device_id] = f"r{victim.index} (revoked)"
    divergences = _divergences(members, states, names)
    holdings = {m.index: Holdings(m.peer) for m in members}
    lost: list[str] = []
    taken_past_revocation: list[str] = []
    verified = exempt = 0
    revoked_indices = {victim.index for victim in revoked}
    acked = {w.slot for w in writes if w.kind == "forget"}
    # a user the workload asked to forget: the system under test is not asked who that is
    asked = acked if forget_targets is None else acked | forget_targets
    claimed = {user for m in members for user in m.peer.forgotten()}
    # a tombstone a robot cannot check (yet) still forbids the user there
    seen = claimed | {user for m in members for user in tombstoned(m.peer)}
    for user in sorted(seen - asked):
        where = [f"r{m.index}" for m in members if user in tombstoned(m.peer)]
        lost.append(f"user {user} forgotten on {','.join(where)}, though no robot was asked to")
    # forgotten: what a member acknowledged forgetting, and every tombstone a member holds
    # of a user someone asked to forget (a robot revoked later may have forgotten someone
    # before, and been heard)
    forgotten = {w.slot for w in writes if w.kind == "forget" and w.robot not in revoked_indices}
    forgotten |= claimed & asked
    buried = forgotten | (seen & asked)
    for write in writes:
        if write.kind != "forget" and about(write) in buried:
            exempt += 1
            continue
        if write.robot in revoked_indices:
            # held when its robot was revoked, by robots that are members still
            due = [m for m in members if m.index in (write.kept_by or ())]
            if not due:
                exempt += 1
                taken_past_revocation.extend(
                    _taken_past_revocation(
                        write, members, holdings, revocation_known, revoked_indices
                    )
                )
                continue
        else:
            due = [m for m in members if write.scope in m.scopes]
        wrong = [(m.index, holdings[m.index].why_not(write)) for m in due]
        missing = [f"r{i}" for i, why in wrong if why == "missing"]
        differ = [f"r{i} {why}" for i, why in wrong if why not in (None, "missing")]
        when = f"(acknowledged at t={write.acked_at:.3f})"
        if missing:
            lost.append(f"{write.describe()} {when} missing on {','.join(missing)}")
        if differ:
            lost.append(f"{write.describe()} {when} with another value: {'; '.join(differ)}")
        if not missing and not differ:
            verified += 1
    epochs, known = revoked_epochs or {}, revocation_known
    leaks = [
        leak
        for victim in revoked
        for leak in _leaks(writes, victim, epochs.get(victim.index, {}),
                           None if known is None else known.get(victim.index, {}))
    ]  # fmt: skip
    leaks += taken_past_revocation
    if views:  # what each robot reads through its typed views, against a fresh reading
        divergences += [line for m in members for line in _stale_reads(m)]
    remnants = [line for m in members for line in _remnants(m, forgotten, states[m.index])]
    return Findings(verified, lost, divergences, leaks, exempt, remnants)


def _taken_past_revocation(
    write: Write,
    members: list[Replica],
    holdings: dict[int, Holdings],
    known: dict[int, dict[int, float]] | None,
    revoked: set[int],
) -> list[str]:
    """Members holding a revoked robot's ``write`` made once every member had processed its
    revocation: each refuses what that robot writes from then on, and none can have taken it
    from another member.  Without this, members that went on taking a revoked robot's
    writes passed every checker (found in review: the list was enforced on grants only).

    A robot revoked later counts as a member while the members had not all processed its own
    revocation when the write was made: taken from the revoked robot before it heard of that
    revocation, the write reached the members through it (seed 31200059: r2, cut off with r1,
    took r1's writes and passed them on at the heal; r2's own revocation came later)."""
    if known is None or write.kind in ("user", "forget"):
        return []
    learnt = known.get(write.robot, {})
    relays = [m.index for m in members] + [
        other
        for other in sorted(revoked - {write.robot})
        if any(known.get(other, {}).get(m.index, math.inf) >= write.started_at for m in members)
    ]
    if any(index not in learnt for index in relays):
        return []  # a member that never processed the revocation may rightly take it
    if write.started_at <= max(learnt[index] for index in relays):
        return []
    # a slot (or an event) of the revoked robot's own: held only if taken from it
    takers = [f"r{m.index}" for m in members if holdings[m.index].holds(write)]
    if not takers:
        return []
    return [
        f"{write.describe()}, made at t={write.started_at:.3f} after every member knew of "
        f"r{write.robot}'s revocation, taken by {','.join(takers)}"
    ]


def _stale_reads(member: Replica) -> list[str]:
    """Where what ``member`` reads through its typed views differs from a fresh reading of
    the same documents: the checkers compare documents, and a view that missed a change (a
    cache not cleared) showed robots different values over identical documents unnoticed
    (found in review)."""
    peer = member.peer
    found: list[str] = []
    for doc_id, (replica, handle) in sorted(peer._handles.items()):
        if peer._docs.get(doc_id) is not replica:
            continue  # replaced since: the next read rebuilds it
        make: Callable[[Any], object] = type(handle)
        fresh = make(replica)
        for name, view in vars(handle).items():
            if not isinstance(view, SlotMap):
                continue
            again: SlotMap[Any] = getattr(fresh, name)
            keys = set(view._index()) | set(again._index())
            for key in sorted(keys):
                if view.versions(key) != again.versions(key):
                    found.append(f"r{member.index} reads {doc_id} {name}[{key}] stale")
                    break
    return found


def _leaks(
    writes: list[Write],
    revoked: Replica,
    revoked_epochs: dict[str, int],
    known: dict[int, float] | None,
) -> list[str]:
    """What reached ``revoked`` of the writes it must not read.  Which those are is decided
    from what the harness knows (when each robot had processed the revocation), not from
    the epoch the system under test reports; the epoch is then checked too.  Without
    ``known``, the writes reporting a post-revocation epoch (the older, weaker check)."""
    if not revoked_epochs:
        return []
    leaks: list[str] = []
    # the keys first: with a new epoch's key, the revoked robot reads whatever ciphertext of
    # it it comes by later (from a relay, say), even though no write reached it here
    state = revoked.peer.household
    for scope, rotated in sorted(revoked_epochs.items()):
        # any key: a user's data key alone opens that user's documents (a check of the scope
        # key passed a robot holding only new data keys, found in review)
        top = state.keyring.newest_held(scope) if state is not None else -1
        if top >= rotated:
            leaks.append(f"r{revoked.index} holds a key of {scope} epoch {top}")
    held = Holdings(revoked.peer)
    for write in writes:
        new_epoch = revoked_epochs.get(write.scope)
        if write.robot == revoked.index or new_epoch is None:
            continue
        if write.kind in ("user", "forget"):
            continue  # every robot may register or forget the same user: not attributable
        if known is None:
            if write.epoch < new_epoch:
                continue
        else:
            since = known.get(write.robot)
            if since is None or write.started_at <= since or write.held_epoch < new_epoch:
                # made before its robot knew of the revocation, or held the new key (grants
                # arrive one key at a time): it may reach the revoked robot
                continue
            if 0 <= write.epoch < new_epoch:
                leaks.append(f"{write.describe()} made at t={write.started_at:.3f}, after "
                             f"r{write.robot} processed the revocation, sealed under epoch "
                             f"{write.epoch} < {new_epoch}")  # fmt: skip
        if held.why_not(write) != "missing":
            leaks.append(f"{write.describe()} (epoch {write.epoch}) reached r{revoked.index}")
    return leaks


def tombstoned(peer: Peer) -> set[str]:
    """Every user with a tombstone in the peer's household document, checked or not."""
    replica = peer._docs.get(DocId("household"))
    if replica is None:
        return set()
    return {slot.partition("\x1f")[0] for slot in replica.doc.get("forgotten", type=Map).keys()}  # noqa: SIM118


def about(write: Write) -> str | None:
    """The user a write is about (its document's subject, or the user it registers)."""
    if write.kind == "user":
        return write.slot
    parts = write.doc_id.split("/")
    return parts[1] if parts[0] == "user" else None


def _remnants(member: Replica, forgotten: set[str], held: dict[str, DocState]) -> list[str]:
    """What ``member`` still holds of the ``forgotten`` users (DESIGN: Forgetting)."""
    found = []
    users = set(member.peer.users())
    household = member.peer.household
    for user in sorted(forgotten):
        docs = sorted(d for d in held if d.startswith(f"user/{user}/"))
        if docs:
            found.append(f"r{member.index} still holds {docs[:3]} of forgotten {user}")
        if user in users:
            found.append(f"r{member.index} still lists forgotten {user} as a user")
        if household is not None and not household.keyring.is_forgotten(user):
            found.append(f"r{member.index} still holds the data keys of forgotten {user}")
        # what the robot's own account adds (`Peer.forgetting_remnants`): index files, the
        # home documents' mentions, and a purge that did not run to its end (the update logs
        # and vector rows, which memory does not show, are gone only then)
        found += [
            f"r{member.index} {remnant} (forgotten)"
            for remnant in member.peer.forgetting_remnants(user)
            if remnant.left in _OWN_ACCOUNT
        ]
    return found


_OWN_ACCOUNT = {Left.INDEX_FILES, Left.HOME_MENTIONS, Left.PURGE_UNFINISHED}


def _divergences(
    members: list[Replica], states: dict[int, dict[str, DocState]], names: dict[str, str]
) -> list[str]:
    """One line per document two members (both allowed to read it) hold differently, saying
    how it differs and whose entries differ: the first thing to know when reading a failure."""
    found: list[str] = []
    for m in members:
        outside = sorted(d for d in states[m.index] if _scope(m.peer, d) not in m.scopes)
        if outside:
            found.append(f"r{m.index} holds documents outside its scopes: {outside[:3]}")
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            shared = a.scopes & b.scopes
            mine = {d: s for d, s in states[a.index].items() if _scope(a.peer, d) in shared}
            theirs = {d: s for d, s in states[b.index].items() if _scope(b.peer, d) in shared}
            differ = sorted(d for d in set(mine) | set(theirs) if mine.get(d) != theirs.get(d))
            for doc_id in differ[:5]:
                how = _how(mine.get(doc_id), theirs.get(doc_id), names)
                found.append(f"r{a.index} and r{b.index} differ in {doc_id}: {how}")
    return found


def _how(mine: DocState | None, theirs: DocState | None, names: dict[str, str]) -> str:
    if mine is None or theirs is None:
        held = mine or theirs
        assert held is not None
        devices = sorted({names.get(d, d or "?") for d in _differing_authors(held[1], "{}")})
        return f"held by only one of them (entries by {', '.join(devices) or 'nobody'})"
    what = "state vectors differ" if mine[0] != theirs[0] else "same state vector, other content"
    devices = sorted({names.get(d, d or "?") for d in _differing_authors(mine[1], theirs[1])})
    return f"{what} (entries by {', '.join(devices) or 'nobody'})"


def _differing_authors(mine: str, theirs: str) -> set[str]:
    """The devices whose entries differ between two documents' contents: a slot key ends in
    its device; a log entry (event, spatial change) names its device."""
    a, b = json.loads(mine), json.loads(theirs)
    authors: set[str] = set()
    for root in set(a) | set(b):
        x, y = a.get(root), b.get(root)
        if isinstance(x, dict) and isinstance(y, dict):
            for key in set(x) | set(y):
                if x.get(key) != y.get(key):
                    authors.add(key.rpartition(SLOT_SEP)[2] if SLOT_SEP in key else "")
        elif isinstance(x, list) and isinstance(y, list):
            for entry in set(x) ^ set(y):
                authors.add(str(json.loads(entry).get("device", "")))
        else:
            authors.add("")
    return authors


def _scope(peer: Peer, doc_id: str) -> str:
    replica = peer._docs.get(DocId(doc_id))
    assert replica is not None
    return replica.info.scope
