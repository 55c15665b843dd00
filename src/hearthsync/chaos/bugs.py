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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Map

from hearthsync.crdt.handles import ROOTS
from hearthsync.ids import DocId
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
