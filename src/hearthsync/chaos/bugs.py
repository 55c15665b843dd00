"""Deliberately broken builds (`hearthsync.chaos.plan.BUGS`): proof that the checkers catch
what they claim to.  A harness that never fails proves nothing; ``hearth chaos --bug NAME``
must fail, with a seed and a command that replay the failure.

Each bug is one a real implementation could have, chosen so that the protocol cannot repair
it on its own (anti-entropy repairs anything a state vector reveals: a merely dropped update is
asked for again, so it would not show):

* ``lose-every-10th-commit``: the store acknowledges every tenth delta of a commit and never
  writes it; only a crash reveals it, and only where no other robot got the delta first (a
  robot alone behind a partition);
* ``drop-every-10th-delta``: a merge that loses data: every tenth update received is merged
  and acknowledged, then what it brought vanishes from the replica, while the state vector
  still counts it.

And one per gap a review found in the checkers (each passed them before they were made
stricter; `install` puts them on a robot at every boot):

* ``drop-merged-values``: a profile or calibration change is stamped and acknowledged, but
  stores the field's default, not the value written (the checkers compare values);
* ``forget-an-extra-user``: forgetting anyone forgets bob as well (only users the workload
  asked to forget may be forgotten);
* ``refuse-every-preference``: every preference write fails with `NotFoundError` (which is
  accepted only for a forgotten or unknown user);
* ``keep-forgotten-rows``: forgetting drops a user's documents from memory, not from the
  store (every robot restarts from its store at the end, and is checked again);
* ``never-scrub-after-forgetting``: a purge deletes a forgotten user's documents and keys, then
  stops silently, before vacuuming the file and recording its end, so their words stay in its
  free pages and WAL (memory shows nothing of them: the checkers ask the purge's own record of
  its end, `Peer.forgetting_remnants`; a purge that recorded an end it never reached would
  pass them);
* ``keep-forgotten-embeddings``: a purge deletes everything of its user but the ``vectors``
  rows (each the event's text beside its embedding), then records its end: memory shows
  nothing and the purge's record says done (the checkers read each store as the final crash
  left it: a purge that records its end must have left no row of its user);
* ``purge-a-revoked-robots-writes``: on learning a revocation, a robot deletes every slot the
  revoked robot wrote, its accepted past writes too (those a member held must stay);
* ``seal-under-the-oldest-epoch``: the keyring seals under the oldest epoch it holds, so a
  rotation never takes effect (which writes must not reach the revoked robot is decided from
  when each robot learned of the revocation, not from the epoch the keyring reports).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Map

from hearthsync.crdt.handles import ROOTS
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import MissingKeyError, NotFoundError
from hearthsync.ids import DocId
from hearthsync.model.records import Preference
from hearthsync.peer import Peer
from hearthsync.store.sqlite import Batch

EVERY = 10

#: a document's content as the bug sees it: root name -> its Python value
Content = dict[str, Any]


def lossy_store(peer: Peer, tick: Callable[[], bool]) -> None:
    """Make ``peer``'s store drop the deltas for which ``tick()`` is true."""
    store = peer._sqlite
    commit = store.commit

    async def lossy(batch: Batch) -> None:
        batch.updates = [update for update in batch.updates if not tick()]
        await commit(batch)

    store.commit = lossy  # type: ignore[method-assign]
    # a snapshot rewrites a document from memory, lost deltas and all, and would hide the bug
    # until the next crash came before it (the simulation compacts from 512 bytes of log)
    peer._docs.compact_min_log_bytes = 2**62


def content(peer: Peer, doc_id: str) -> Content:
    """What ``doc_id`` holds on ``peer`` now (nothing if absent)."""
    replica = peer._docs.get(DocId(doc_id))
    if replica is None:
        return {}
    return {
        name: replica.doc.get(name, type=kind).to_py() for name, kind in ROOTS[replica.info.kind]
    }


def forget_merge(peer: Peer, doc_id: str, before: Content) -> int:
    """Delete from ``doc_id`` whatever changed since ``before`` (what the last merge brought),
    in a transaction whose delta is neither stored nor sent: the replica loses it, its state
    vector keeps counting it.  Returns how many entries were dropped."""
    replica = peer._docs.get(DocId(doc_id))
    if replica is None:
        return 0
    dropped = 0
    with replica.doc.transaction(origin="broken-merge"):
        for name, kind in ROOTS[replica.info.kind]:
            root = replica.doc.get(name, type=kind)
            old = before.get(name)
            if isinstance(root, Map):
                for key in [k for k, v in root.items() if (old or {}).get(k) != v]:
                    del root[key]
                    dropped += 1
            elif isinstance(root, Array):
                dropped += _drop_new_entries(root, old or [])
    return dropped


def _drop_new_entries(array: Array[Any], old: list[Any]) -> int:
    known = Counter(json.dumps(entry, sort_keys=True) for entry in old)
    fresh = []
    for index, entry in enumerate(array):
        text = json.dumps(entry, sort_keys=True)
        if known[text]:
            known[text] -= 1
        else:
            fresh.append(index)
    for index in reversed(fresh):
        del array[index]
    return len(fresh)


# ---------------------------------------------------------------------- bugs of the review


def install(bug: str | None, peer: Peer, keyring: Keyring) -> None:
    """Break ``peer`` (just booted, with ``keyring``) as ``bug`` says; other bugs: nothing."""
    match bug:
        case "drop-merged-values":
            _drop_merged_values(peer)
        case "forget-an-extra-user":
            _forget_bob_too(peer)
        case "refuse-every-preference":
            _refuse_preferences(peer)
        case "keep-forgotten-rows":
            _keep_rows(peer)
        case "never-scrub-after-forgetting":
            _never_scrub(peer)
        case "keep-forgotten-embeddings":
            _keep_embeddings(peer)
        case "purge-a-revoked-robots-writes":
            _purge_revoked(peer)
        case "seal-under-the-oldest-epoch":
            _oldest_epoch(keyring)


def _drop_merged_values(peer: Peer) -> None:
    merged_write = peer._merged_write

    def broken(doc_id: Any, make: Any, slots: Any, key: str, checked: Any, fields: Any) -> Any:
        defaults = {name: type(checked).model_fields[name].get_default() for name in fields}
        return merged_write(doc_id, make, slots, key, checked.model_copy(update=defaults), fields)

    peer._merged_write = broken  # type: ignore[method-assign]


def _forget_bob_too(peer: Peer) -> None:
    forget = peer.forget

    async def broken(user: str) -> Any:
        done = await forget(user)
        if user != "bob" and "bob" in peer.users():
            await peer._forgetting.forget("bob")
        return done

    peer.forget = broken  # type: ignore[method-assign]


def _refuse_preferences(peer: Peer) -> None:
    def broken(user: str, *args: Any, **kwargs: Any) -> asyncio.Future[Preference]:
        raise NotFoundError(f"unknown user {user!r}")

    peer.set_preference = broken  # type: ignore[method-assign]


def _keep_rows(peer: Peer) -> None:
    async def broken(doc_ids: Any) -> None:
        return None

    peer._sqlite.drop_docs = broken  # type: ignore[method-assign]


def _keep_embeddings(peer: Peer) -> None:
    async def skipped(user: str) -> None:
        return None

    peer._sqlite.drop_vectors = skipped  # type: ignore[method-assign]


def _never_scrub(peer: Peer) -> None:
    """The purge stops silently before the vacuum (a ``return`` left in, an error swallowed):
    no vacuum, and its end never recorded.  Raising instead was caught by the older checks,
    as an error logged (found in review)."""
    commit_meta = peer._sqlite.commit_meta

    async def skipped() -> None:
        return None

    async def unrecorded(meta: dict[str, str]) -> None:
        ended = {key for key, value in meta.items() if key.startswith("purged:") and value}
        await commit_meta({key: value for key, value in meta.items() if key not in ended})

    peer._sqlite.scrub = skipped  # type: ignore[method-assign]
    peer._sqlite.commit_meta = unrecorded  # type: ignore[method-assign]


def _purge_revoked(peer: Peer) -> None:
    trust_changed = peer.trust_changed

    def broken() -> None:
        trust_changed()
        trust = peer.household.trust if peer.household is not None else None
        if trust is None:
            return
        for doc_id, replica in sorted(peer._docs.replicas.items()):

            def change(_: Any, replica: Any = replica) -> None:
                for name, kind in ROOTS[replica.info.kind]:
                    root = replica.doc.get(name, type=kind)
                    if isinstance(root, Map):
                        for key in [k for k in root.keys() if "\x1f" in k]:  # noqa: SIM118
                            if trust.is_revoked(key.rpartition("\x1f")[2]):
                                del root[key]

            peer._docs.write(doc_id, change)

    peer.trust_changed = broken  # type: ignore[method-assign]


def _oldest_epoch(keyring: Keyring) -> None:
    def broken(scope: str, user: str | None) -> int:
        if user is None:
            epochs = {e for (s, e) in keyring._scope_keys if s == scope}
        else:
            epochs = {e for (u, s, e) in keyring._data_keys if u == user and s == scope}
        if not epochs:
            raise MissingKeyError(f"no key held for scope {scope!r}, user {user!r}")
        return min(epochs)

    keyring.sealing_epoch = broken  # type: ignore[method-assign]
