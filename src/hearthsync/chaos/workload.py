"""The writes a simulated robot makes, and how the checkers will find each one again.

Every write goes through the public `Peer` API, exactly as a robot's reasoning layer would
make it, and returns a `Write`: where the write lives (document, root, slot) and what it
carried (its hybrid timestamp), so that `hearthsync.chaos.check` can prove, after the heal,
that every acknowledged write is present on every robot allowed to read it.

The details of a write (which user, which key, which value) are drawn when it runs, from its
own seed: they depend on what the robot knows then (the users it has heard of), and drawing
them from a per-write generator keeps every other write unchanged when a fault is removed
from the plan (`hearthsync.chaos.harness.shrink`).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from hearthsync.chaos.check import Write, tombstoned
from hearthsync.chaos.plan import FIRST_USERS, LATER_USERS, OBJECTS, PREF_KEYS, REGIONS, Op
from hearthsync.crdt.handles import PrefsDoc
from hearthsync.crdt.kinds import HOME, Kind, events_doc, user_doc
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import MissingKeyError, NotFoundError, ValidationError
from hearthsync.ids import DocId
from hearthsync.model.records import Condition
from hearthsync.peer import Peer

#: the scope each kind of write lands in (a robot not granted it does not attempt the write)
OP_SCOPE = {
    "pref": "core", "profile": "core", "calibration": "core", "move": "spatial",
    "event": "history", "user": "household", "health": "health", "forget": "household",
}  # fmt: skip
CONDITIONS = (None, Condition(days="weekday"), Condition(days="weekend"))
CALIBRATION_FIELDS = ("verbosity", "proactivity", "pace")
HEALTH_KEYS = ("allergy/nuts", "mobility/cane", "medication/evening")
DELETE_P = 0.15  #: of preference writes that retract the current value instead (a tombstone)


class TinyEmbedder:
    """A deterministic 8-dimensional embedder: event recall is not under test here, and the
    default 384-dimensional one would make every simulated event cost an HNSW insert of a
    realistic size.  The vector memory itself (derived, rebuilt after a crash) still runs."""

    @property
    def name(self) -> str:
        return "chaos-tiny-8"

    @property
    def dim(self) -> int:
        return 8

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raw = [hashlib.blake2b(t.encode(), digest_size=8).digest() for t in texts]
        matrix = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(texts), 8)
        vectors = matrix.astype(np.float32) - 127.5
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: np.ndarray = (vectors / np.maximum(norms, 1e-6)).astype(np.float32)
        return unit


def perform(
    op: Op, robot: int, peer: Peer, keyring: Keyring, forget_targets: set[str] | None = None
) -> Awaitable[Write | None]:
    """The coroutine that makes write ``op`` on ``peer`` (robot number ``robot``); a user it
    sets out to forget is added to ``forget_targets`` first (the checkers excuse only those:
    `hearthsync.chaos.check.verify`)."""
    rng = random.Random(op.seed)
    known = [u for u in peer.users() if u in FIRST_USERS + LATER_USERS]
    user = rng.choice(known) if known else FIRST_USERS[0]
    marker = f"r{robot}-{op.index}"
    writer = Writer(robot, peer, keyring, forget_targets)
    match op.kind:
        case "pref":
            key, condition = rng.choice(PREF_KEYS), rng.choice(CONDITIONS)
            if rng.random() < DELETE_P and peer.preference(user, key, condition) is not None:
                retracted = lambda: peer.preference(user, key, condition) is None  # noqa: E731
                return writer.explained(user, writer.delete_pref(user, key, condition), retracted)
            return writer.explained(user, writer.set_pref(user, key, marker, condition))
        case "profile":
            return writer.explained(user, writer.set_profile(user, marker))
        case "calibration":
            field = rng.choice(CALIBRATION_FIELDS)  # robots apart change different fields
            return writer.explained(
                user, writer.set_calibration(user, field, round(rng.random(), 3))
            )
        case "move":
            return writer.explained(
                None, writer.move(rng.choice(OBJECTS), rng.choice(REGIONS), marker)
            )
        case "event":
            return writer.explained(user, writer.record_event(user, marker))
        case "health":
            return writer.explained(user, writer.set_health(user, rng.choice(HEALTH_KEYS), marker))
        case "forget":  # only users added during the run: the first ones keep the work going
            later = [u for u in known if u in LATER_USERS]
            if later:
                target = rng.choice(later)
                return writer.explained(target, writer.forget(target))
    # a new user (a user op, or a forget with no one to forget): never one this robot knows
    # was forgotten (a returning person needs a new id); if none is left, an idempotent re-add
    gone = tombstoned(peer)
    fresh = [u for u in LATER_USERS if u not in known and u not in gone]
    return writer.add_user(rng.choice(fresh) if fresh else user)


class CausalityError(AssertionError):
    """A write stamped no later than a version of its register its robot already held: it
    would lose to what it overwrote on every robot (DESIGN invariant 3)."""


#: the profile attributes the workload writes
PROFILE_FACTS = ("note", "seen")


def _follows(what: str, stamp: str, held: Sequence[str]) -> None:
    """Check that a register write's ``stamp`` follows every version its robot ``held``."""
    newest = max(held, default="")
    if stamp <= newest:
        raise CausalityError(f"{what} stamped {stamp}, not after {newest}, which it overwrote")


class UnexplainedRefusal(AssertionError):
    """A write refused as about something unknown (`NotFoundError`) while its robot knows the
    user and holds no tombstone of them: a broken write path, not a race with a forget."""


T = TypeVar("T")


class Writer:
    """One robot's writes, each returning the `Write` the checkers look for."""

    def __init__(
        self, robot: int, peer: Peer, keyring: Keyring, forget_targets: set[str] | None = None
    ) -> None:
        self.robot = robot
        self.peer = peer
        self.keyring = keyring
        self.forget_targets = forget_targets
        #: the newest key epoch the robot held for the write's documents when it started
        self.held_epoch = -1

    def _epoch(self, scope: str, user: str | None = None) -> int:
        """The key epoch this robot seals ``user``'s documents of ``scope`` under, now (and,
        in `held_epoch`, the newest epoch of the scope it holds any key of: the keyring's
        choice is under test; the newest of the user's own keys hid a robot that sealed
        under an older one than the scope's, found in review)."""
        self.held_epoch = self.keyring.newest_held(scope)
        try:
            return self.keyring.sealing_epoch(scope, user)
        except MissingKeyError:
            # a user registered on a robot that makes no keys, or whose key of the scope's
            # newest epoch is not granted here yet: the owner makes it when it hears of the
            # user, and the write is sealed once it is granted (-1: sealed later, under the
            # newest epoch then; left out of the check of the epoch sealed under)
            return -1

    async def explained(
        self, user: str | None, write: Awaitable[T], also: Callable[[], bool] | None = None
    ) -> T:
        """``write``, whose `NotFoundError` stands only if it is explained: ``user`` is
        forgotten (a tombstone, checked or not) or unknown to this robot now, or ``also()``
        says why.  Any other is an `UnexplainedRefusal`, which the simulation reports."""
        try:
            return await write
        except NotFoundError as exc:
            if user is not None and (
                user in tombstoned(self.peer) or user not in self.peer.users()
            ):
                raise
            if also is not None and also():
                raise
            raise UnexplainedRefusal(f"refused though r{self.robot} knows {user!r}: {exc}") from exc

    def _register(
        self, kind: str, doc_id: str, scope: str, root: str, slot: str, set_at: str, epoch: int,
        expect: dict[str, Any], merged: str = "",
    ) -> Write:  # fmt: skip
        slot_key = f"{slot}\x1f{self.peer.device_id}"
        return Write(
            self.robot, kind, DocId(doc_id), scope, root, slot_key, set_at, epoch,
            expect=expect, merged=merged, held_epoch=self.held_epoch,
        )  # fmt: skip

    async def add_user(self, user: str) -> Write | None:
        epoch = self._epoch("household")
        try:
            await self.peer.add_user(user, name=user.title())
        except ValidationError:  # a tombstone this robot cannot check yet still forbids the id
            if user not in tombstoned(self.peer):
                raise
            return None
        return Write(self.robot, "user", DocId("household"), "household", "users", user, "", epoch)

    async def forget(self, user: str) -> Write:
        if self.forget_targets is not None:
            self.forget_targets.add(user)  # attempted: acknowledged or not, it may take effect
        epoch = self._epoch("household")
        await self.peer.forget(user)
        return Write(
            self.robot, "forget", DocId("household"), "household", "forgotten", user, "", epoch
        )

    async def set_pref(
        self, user: str, key: str, marker: str, condition: Condition | None
    ) -> Write:
        epoch = self._epoch("core", user)
        held = [v.set_at for v in self.peer.preference_history(user, key, condition)]
        record = await self.peer.set_preference(user, key, marker, condition=condition)
        _follows(f"preference {user}/{key}", record.set_at, held)
        return self._register(
            "pref", user_doc(user, Kind.PREFS), "core", "prefs", PrefsDoc.slot_key(record),
            record.set_at, epoch, {"value": marker},
        )  # fmt: skip

    async def delete_pref(self, user: str, key: str, condition: Condition | None) -> Write:
        epoch = self._epoch("core", user)
        # the tombstone as written: this robot's latest version of the key may be another
        # write of its own, made at the same moment (seed 510412 read that one instead)
        tombstone = await self.peer.delete_preference(user, key, condition)
        return self._register(
            "pref", user_doc(user, Kind.PREFS), "core", "prefs", PrefsDoc.slot_key(tombstone),
            tombstone.set_at, epoch, {"deleted": True},
        )  # fmt: skip

    async def set_profile(self, user: str, marker: str) -> Write:
        epoch = self._epoch("core", user)
        # two facts, so robots apart set different ones and both must survive (merged by fact)
        fact = PROFILE_FACTS[sum(map(ord, marker)) % len(PROFILE_FACTS)]
        record = await self.peer.set_profile(user, attributes={fact: marker})
        return self._register(
            "profile", user_doc(user, Kind.PROFILE), "core", "profile", "profile",
            record.key_stamps["attributes"][fact], epoch, {f"attributes/{fact}": marker},
            f"attributes/{fact}",
        )  # fmt: skip

    async def set_calibration(self, user: str, field: str, value: float) -> Write:
        epoch = self._epoch("core", user)
        held = self.peer.calibration(user).stamps.get(field, "")
        record = await self.peer.set_calibration(user, **{field: value})
        _follows(f"calibration {user}.{field}", record.stamps[field], [held])
        return self._register(
            "calibration", user_doc(user, Kind.CALIBRATION), "core", "calibration",
            "calibration", record.stamps[field], epoch, {field: value}, field,
        )  # fmt: skip

    async def move(self, thing: str, region: str, marker: str) -> Write:
        epoch = self._epoch("spatial")
        held = self.peer.placement(thing)
        record = await self.peer.place(thing, marker, region=region)
        _follows(f"placement of {thing}", record.set_at, [held.set_at] if held else [])
        return self._register(
            "move",
            f"{HOME}/spatial",
            "spatial",
            "placements",
            thing,
            record.set_at,
            epoch,
            {"label": marker, "region": region},
        )

    async def set_health(self, user: str, key: str, marker: str) -> Write:
        epoch = self._epoch("health", user)
        record = await self.peer.set_health(user, key, marker)
        return self._register(
            "health",
            user_doc(user, Kind.HEALTH),
            "health",
            "health",
            key,
            record.set_at,
            epoch,
            {"value": marker},
        )

    async def record_event(self, user: str, marker: str) -> Write:
        epoch = self._epoch("history", user)
        text = f"observed {marker}"
        event = await self.peer.record_event(user, "OBSERVATION", "chaos", text=text)
        month = time.strftime("%Y-%m", time.gmtime(event.ts // 1000))
        return Write(
            self.robot, "event", events_doc(user, month), "history", "events", event.id, "", epoch,
            expect={"text": text}, held_epoch=self.held_epoch,
        )  # fmt: skip
