"""Forgetting a user, on this robot and through the household (DESIGN: Forgetting).

``peer.forget("alice")`` writes a signed tombstone into the household document and then
purges, in this order, so that a crash in between is finished on the next open:

1. the household forgets the user (their entry leaves ``users``, the tombstone enters
   ``forgotten``), and the home documents forget what they say about them: the user's routines,
   relationships and things (the placements they owned), every device's version of each;
2. the user's own documents (profile, preferences, calibration, health, every month of
   events) leave memory and the store; their embeddings and vector index files are deleted;
   their data keys are destroyed, so copies held elsewhere can no longer be read;
3. the documents that held anything of theirs are compacted (deleted content leaves the
   snapshots) and the SQLite file is vacuumed with ``secure_delete`` on and its WAL emptied,
   so no byte of what they said remains in any file of this robot; then the store records
   that the purge of the user is complete (``meta['purged:<user>']``).

At every open, each tombstoned user without that record is purged again (every step is
idempotent).  What is left cannot tell a finished purge from one a crash cut short: the update
logs of the home documents and the ``vectors`` rows still hold the user's words when the
documents, the index files and the keys are already gone.

Other robots receive the tombstone with the household document; each checks its signature
and that its device is one the household certified, then runs steps 2 and 3 itself, and step
1's home edits for whatever it alone still held.  From then on the user's data is refused: an
update of their documents is dropped, a key granted for them refused, ``add_user`` of the same
id an error.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hearthsync.crdt.handles import SEP, GraphDoc, HouseholdDoc, SpatialDoc
from hearthsync.crdt.kinds import HOME
from hearthsync.crdt.replica import Replica
from hearthsync.crypto.statement import FORGET, Statement, check_statement
from hearthsync.errors import ClosedError, CryptoError, NotFoundError
from hearthsync.ids import DocId, UserId
from hearthsync.model.pii import quoted

if TYPE_CHECKING:
    from hearthsync.peer import Peer

log = logging.getLogger(__name__)

HOUSEHOLD = DocId("household")
#: the ``meta`` key recording that the purge of a user finished (see the module doc)
PURGED = "purged:{user}"


class Left(enum.Enum):
    """What kind of thing a robot still holds of a forgotten user (`Remnant`)."""

    NO_TOMBSTONE = "no tombstone honoured"
    DOCUMENTS = "documents"
    DATA_KEYS = "data keys"
    INDEX_FILES = "vector index files"
    HOME_MENTIONS = "mentions in the home documents"
    USER_ENTRY = "the user's entry"
    PURGE_UNFINISHED = "a purge not finished"


@dataclass(frozen=True, slots=True)
class Remnant:
    """One kind of thing a robot still holds of a forgotten user, and a line saying it."""

    left: Left
    text: str

    def __str__(self) -> str:
        return self.text


class Forgetting:
    """The forgetting of one peer: issuing tombstones, honouring received ones, purging."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._lock = asyncio.Lock()  # one purge at a time: each vacuums the whole file
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()  # tombstones already acted on in this run
        self._again: set[str] = set()  # purge once more when the one running ends
        self._warned: set[str] = set()  # tombstones that did not check out (logged once)
        #: users purged here to the end (`PURGED`): forgotten, if the tombstones are unreadable
        self._purged_here: set[str] = set()

    # ------------------------------------------------------------------ the household's view

    def tombstones(self) -> dict[str, Statement]:
        """A valid tombstone (a ``forget`` statement) of each forgotten user, this robot's
        own where it made or endorsed one."""
        found: dict[str, Statement] = {}
        refused: dict[str, str] = {}
        for slot, text in sorted(self._forgotten_map().items()):
            user = slot.partition(SEP)[0]
            tombstone = self._valid(user, text, refused)
            if tombstone is not None and (
                user not in found or tombstone.device == self._peer.device_id
            ):
                found[user] = tombstone
        # a tombstone that does not check out matters only if no other one does: one by a
        # robot revoked since is the rule once the others endorsed it (warning of it at every
        # open of every robot said something was wrong when nothing was)
        for user, why in refused.items():
            if user not in found and user not in self._warned:
                self._warned.add(user)  # checked again when trust changes: not acted on
                log.warning("not (yet) honouring the tombstone of %r: %s", user, why)
        return found

    def forgotten(self) -> frozenset[str]:
        """The users whose data this robot refuses: those with a valid tombstone.

        A tombstone that does not check out (one a robot wrote after it was revoked, which
        another robot relayed before it heard of the revocation) does not count, now or on
        any robot once they all know the revocation; counting every tombstone filed made the
        robots that had it refuse the user's data while the others still took it, and the
        user's documents never converged again (found by the chaos harness, seed 100444).

        While the household document is corrupt (no tombstone can be read until a peer
        replaces it), the users purged here are: taking a forgotten user's documents back
        from a robot that never heard of the tombstone would undo the forgetting here."""
        if HOUSEHOLD in self._peer._docs.corrupt:
            return frozenset(self._purged_here)
        return frozenset(self.tombstones())

    def _endorsed(self, user: str) -> bool:
        return f"{user}{SEP}{self._peer.device_id}" in self._forgotten_map()

    def _forgotten_map(self) -> dict[str, str]:
        if self._peer._docs.get(HOUSEHOLD) is None:
            return {}
        handle: HouseholdDoc = self._peer._handle(HOUSEHOLD, HouseholdDoc)
        return {str(k): str(v) for k, v in handle.forgotten.items()}

    def _valid(self, user: str, text: str, refused: dict[str, str]) -> Statement | None:
        """The tombstone, if it is well formed, signed, and by a device this robot trusts:
        itself, or one with a certificate of the household, valid now and not revoked; else
        None, and why in ``refused`` (under ``user``)."""
        peer = self._peer
        trust = peer.household.trust if peer.household is not None else None
        try:
            tombstone = Statement.from_text(text)
            if (tombstone.kind, tombstone.subject) != (FORGET, user):
                raise CryptoError(
                    f"a {tombstone.kind} of {tombstone.subject!r} filed under {user!r}"
                )
            if user == HOME:  # no user: the household's own documents (found in review)
                raise CryptoError(f"{HOME!r} names the household's documents, not a user")
            check_statement(
                tombstone, own_device=peer.device_id, trust=trust, now=int(peer._wall())
            )
        except CryptoError as exc:
            refused[user] = str(exc)
            return None
        return tombstone

    # ------------------------------------------------------------------ issuing

    async def forget(self, user: str) -> Statement:
        """Forget ``user`` everywhere; returns once this robot holds nothing of theirs."""
        peer = self._peer
        if user == HOME:
            raise NotFoundError(f"{HOME!r} names the household's shared documents, not a user")
        existing = self.tombstones().get(user)
        if existing is not None:
            await self.purge(user)
            return existing
        state = peer.household
        keyed = state.keyring.keyed_users() if state is not None else frozenset()
        # a user the owner keyed because a robot asked (`Peer.keys_wanted`) is on no list,
        # yet its keys are held: forgettable, or the owner could never shred them, nor make
        # room for others to be keyed so (found in review)
        if user not in peer._known_users() and user not in keyed:
            raise NotFoundError(f"unknown user {quoted(user)}: nothing to forget")
        self._seen.add(user)
        tombstone = await self._endorse(user)
        await self.purge(user)
        return tombstone

    async def _endorse(self, user: str) -> Statement:
        """Sign, as this robot, that ``user`` is forgotten, and keep it in this robot's slot.

        A robot that honours another's tombstone endorses it too: should the first signer be
        revoked later, robots that learn of the revocation first would refuse its tombstone
        while those that honoured it already cannot undo (found by the chaos harness); every
        honouring robot's own signature makes the forgetting count everywhere."""
        peer = self._peer
        at, _ = peer._stamp()
        certificate = peer.household.certificate.to_wire() if peer.household else b""
        tombstone = Statement.issue(peer.identity, FORGET, user, at, certificate=certificate)
        await peer._docs.write(HOUSEHOLD, lambda _: self._bury(tombstone))
        return tombstone

    def _bury(self, tombstone: Statement) -> None:
        """Record ``tombstone`` in its device's slot (as registers do: every robot's stays)."""
        handle: HouseholdDoc = self._peer._handle(HOUSEHOLD, HouseholdDoc)
        handle.users.pop(tombstone.subject, None)
        handle.forgotten[f"{tombstone.subject}{SEP}{tombstone.device}"] = tombstone.to_text()

    def _home_edits(self, user: str) -> list[asyncio.Future[Any]]:
        """Writes that make the home documents forget ``user`` (only where they mention them)."""
        peer = self._peer
        edits: list[asyncio.Future[Any]] = []
        if peer._docs.get(DocId("home/graph")) is not None:
            edits.append(
                peer._docs.write(DocId("home/graph"), lambda _: self._forget_in_graph(user))
            )
        if peer._docs.get(DocId("home/spatial")) is not None:
            edits.append(
                peer._docs.write(DocId("home/spatial"), lambda _: self._forget_in_spatial(user))
            )
        return edits

    def _forget_in_graph(self, user: str) -> None:
        graph: GraphDoc = self._peer._handle(DocId("home/graph"), GraphDoc)
        for key, routine in list(graph.routines.items()):
            if routine.user == user:
                graph.routines.remove(key)
        for key, edge in list(graph.relationships.items()):
            if user in (edge.subject, edge.object):
                graph.relationships.remove(key)

    def _forget_in_spatial(self, user: str) -> None:
        """Their things are forgotten too (every device's version): an object's label may
        say whose it is ("Alice's green mug"); the robots learn its place again by seeing it."""
        spatial: SpatialDoc = self._peer._handle(DocId("home/spatial"), SpatialDoc)
        theirs = [
            key
            for key in spatial.placements.keys()  # noqa: SIM118 - a SlotMap, not a dict
            if any(version.owner == user for version in spatial.placements.versions(key))
        ]
        for key in theirs:
            spatial.placements.remove(key)
        # and where their things were moved: the history names the objects
        spatial.changes.remove(lambda change: change.object in theirs)

    # ------------------------------------------------------------------ honouring

    def on_household_change(self) -> None:
        """The household document or this robot's trust changed (a merge from another robot,
        a local write, a certificate learned): act on tombstones not acted on yet, in the
        background."""
        for user in self.tombstones():
            if user in self._seen:
                continue
            self._seen.add(user)
            self._start(user, always=True)

    def on_home_merged(self, update: bytes) -> None:
        """A home document merged ``update`` from another robot.  A robot that was away while
        a user was forgotten brings what it wrote of them meanwhile (a routine, a thing they
        own), even deleted by its own purge since: it showed here, and its text stayed in
        this robot's update log, for good, as this robot had purged already (found in
        review).  An update that names a forgotten user makes this robot purge them again,
        which deletes what shows, compacts and scrubs the file.

        A home document names a user only as a whole JSON string in a record (a routine's
        ``user``, an edge's ``subject`` or ``object``, a thing's ``owner``: what the purge
        deletes by), so ``"al"``, quotes included, is looked for: the bare id was found in
        any text holding it (a forgotten "al" in "meal", "hallway"), and every such update
        cost a compaction and a VACUUM of the whole file."""
        purging = {task.get_name() for task in self._tasks if not task.done()}
        for user in self._peer._forgotten_users():
            if f'"{user}"'.encode() not in update:  # ids are [a-z0-9_-]: JSON escapes none
                continue
            if _task_name(user) in purging:
                self._again.add(user)  # past its home edits, maybe: once more after it
            else:
                self._start(user, always=True)

    def _start(self, user: str, *, always: bool) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._honour(user, always=always), name=_task_name(user)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _honour(self, user: str, *, always: bool) -> None:
        """Endorse the tombstone, then purge (``always``, or if the purge is not known to have
        finished: at open, where purging again would compact and vacuum the whole file)."""
        try:
            if not self._endorsed(user):
                await self._endorse(user)
            if always or not self._purged(user) or self._holds_anything_of(user):
                await self.purge(user)
        except ClosedError:
            log.info("the peer closed while forgetting %r: finished when it next opens", user)
            return
        except Exception:  # a failed purge is retried at the next open
            log.exception("forgetting %r failed; it is retried when the store is next opened", user)
        if user in self._again:  # more of them arrived while this purge ran (`on_home_merged`)
            self._again.discard(user)
            self._start(user, always=True)

    async def resume(self, *, wait: bool = True) -> None:
        """At open: finish every purge a crash interrupted, that is of each tombstoned user
        whose purge is not recorded as finished (`_purged`; every step is idempotent).

        ``wait=False`` leaves them running in the background: a store that commits only when
        told to (the chaos simulation) could not commit the purge's writes while its opening
        waited for them (found by the chaos harness, seed 100510: a robot restarted mid-purge
        and never finished booting)."""
        prefix = PURGED.format(user="")
        finished = await self._peer._sqlite.meta_starting(prefix)
        self._purged_here = {key[len(prefix) :] for key, done in finished.items() if done}
        started = []
        for user in self.tombstones():
            self._seen.add(user)
            started.append(self._start(user, always=False))
        if wait:
            await asyncio.gather(*started)

    async def close(self) -> None:
        """Let the purges running finish (their writes land as the flusher commits them);
        a store that commits only when told (a simulation) would wait for them for ever, so
        there they stop, and the next open resumes them (every step is idempotent).  A
        cancellation of the closer is not swallowed (found in review)."""
        tasks = list(self._tasks)
        if not self._peer._docs.auto_commit:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ purging

    def _purged(self, user: str) -> bool:
        """Did a purge of ``user`` run to its end on this store (its last step recorded)?  The
        records are read once, by `resume`, and kept as purges start and end."""
        return user in self._purged_here

    def remnants(self, user: str) -> list[Remnant]:
        """What this robot still holds of ``user``, whom the household forgot: one per kind
        of remnant, none once forgetting is done here.  The purge's last record (`_purged`)
        counts: what cannot be seen from memory (the update logs, the ``vectors`` rows) is
        gone only then."""
        peer = self._peer
        found = []
        if user not in self.forgotten():
            found.append(Remnant(Left.NO_TOMBSTONE, f"honours no tombstone of {user}"))
        found += self._held(user)
        if user in peer.users():
            found.append(Remnant(Left.USER_ENTRY, f"lists {user} as a user"))
        if not self._purged(user):
            found.append(Remnant(Left.PURGE_UNFINISHED, f"has not finished purging {user}"))
        return found

    def _holds_anything_of(self, user: str) -> bool:
        """Cheaply: does this robot hold something of ``user`` that a purge would delete?

        Not a test of a finished purge (`_purged` is): the home documents' update logs and
        the ``vectors`` rows do not show here, and a purge cut short after the keys were
        destroyed left its user's words in them for good (found in review).  It catches what
        came back after a finished purge: a robot that had not heard of the tombstone yet may
        have written their routine or their things into a home document since."""
        return bool(self._held(user))

    def _held(self, user: str) -> list[Remnant]:
        """What of ``user`` a purge deletes and memory shows (see `_holds_anything_of` for
        what it does not show)."""
        peer = self._peer
        found = []
        docs = self._documents_of(user)
        if docs:
            shown = ", ".join(docs[:3])
            found.append(
                Remnant(Left.DOCUMENTS, f"holds {len(docs)} documents of {user} ({shown})")
            )
        keyring = peer.household.keyring if peer.household is not None else None
        if keyring is not None and not keyring.is_forgotten(user):
            found.append(Remnant(Left.DATA_KEYS, f"holds the data keys of {user}"))
        if any(peer._vectors.directory.glob(f"{user}.*")):
            found.append(Remnant(Left.INDEX_FILES, f"holds vector index files of {user}"))
        if self._home_mentions(user):
            found.append(Remnant(Left.HOME_MENTIONS, f"its home documents mention {user}"))
        return found

    def _home_mentions(self, user: str) -> bool:
        peer = self._peer
        if peer._docs.get(DocId("home/graph")) is not None:
            graph: GraphDoc = peer._handle(DocId("home/graph"), GraphDoc)
            if any(r.user == user for _, r in graph.routines.items()):
                return True
            if any(user in (e.subject, e.object) for _, e in graph.relationships.items()):
                return True
        if peer._docs.get(DocId("home/spatial")) is not None:
            spatial: SpatialDoc = peer._handle(DocId("home/spatial"), SpatialDoc)
            placements = spatial.placements
            return any(v.owner == user for k in placements.keys() for v in placements.versions(k))  # noqa: SIM118
        return False

    def _documents_of(self, user: str) -> list[DocId]:
        docs = self._peer._docs
        held = [d for d, replica in docs.replicas.items() if _subject(replica) == user]
        broken = [d for d in docs.corrupt if d.startswith(f"user/{user}/")]
        return sorted(held + broken)

    async def purge(self, user: str) -> None:
        """Delete what this robot holds of ``user``, then scrub the file (steps 2 and 3)."""
        peer = self._peer
        async with self._lock:
            # a purge again (what a robot that had not heard of the tombstone wrote since) is
            # unfinished until its own end: one cut short is redone at the next open
            self._purged_here.discard(user)
            await peer._sqlite.commit_meta({PURGED.format(user=user): ""})
            await asyncio.gather(*self._home_edits(user))
            gone = NotFoundError(f"user {user!r} was forgotten before this write was durable")
            await peer._docs.drop_subject(user, gone)
            async with peer._vector_lock:
                await peer._vectors.drop(user)
                await peer._sqlite.drop_vectors(user)
            forget_words = getattr(peer._vectors.embedder, "forget_words", None)
            if callable(forget_words):  # an embedder that memoises what it embedded
                forget_words()
            if peer.household is not None:
                peer.household.keyring.forget_user(user)
                peer.keys_changed()
            await peer._docs.compact()
            await peer._sqlite.scrub()
            # last, once nothing of theirs is left: a crash before this line is finished at
            # the next open (`resume`), whatever the steps before it had done
            await peer._sqlite.commit_meta({PURGED.format(user=user): "1"})
            self._purged_here.add(user)
        log.info("forgot %r", UserId(user))
        for listener in list(peer.on_forgotten):
            listener(user)


def _task_name(user: str) -> str:
    """The name of the task honouring ``user``'s tombstone (`Forgetting._start`)."""
    return f"hearthsync-forget-{user}"


def _subject(replica: Replica) -> str | None:
    subject = replica.info.subject
    return None if subject == HOME else subject
