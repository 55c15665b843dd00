"""When a simulated household has settled: the condition the simulation waits for after the
heal before the checkers look.

Quiescent means: every pair of robots (the revoked one aside) linked and authenticated,
nothing waiting to commit on any robot, no session waiting for an answer, no robot busy with
work of its own (a user being forgotten), and the same state vectors everywhere in the scopes
two robots share.  The checkers then compare content too.  (Messages in flight are counted by
the network, which checks them first.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hearthsync.peer import Peer

if TYPE_CHECKING:
    from hearthsync.chaos.sim import Robot

NOTHING = b"\x00"  #: the state vector of a document that has seen nothing


def busy(members: list[Robot]) -> str | None:
    """Why ``members`` are not quiescent yet (None: they are)."""
    for robot in members:
        if robot.peer is None or robot.writers or robot.to_ack or robot.commit_at:
            return f"r{robot.index} is down or has writes to commit"
        if core_pending(robot.peer):
            return f"r{robot.index} is still forgetting a user"
        for other in members:
            if other is robot:
                continue
            conn = robot.conns.get(other.index)
            if conn is None:
                return f"r{robot.index} has no connection to r{other.index}"
            session = conn.sides[robot.index].session
            if session.state.value != "open":
                return f"r{robot.index}->r{other.index} is {session.state.value}"
            if getattr(session, "_requested", None):  # no public way to ask; see core_pending
                return f"r{robot.index}->r{other.index} waits for an answer"
    # idle: converged when every pair holds the same state vectors in the scopes both read;
    # else a repair is still to come
    held = {r.index: state_vectors(r.peer) for r in members if r.peer is not None}
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            shared = a.scopes & b.scopes
            mine = {d: sv for d, (scope, sv) in held[a.index].items() if scope in shared}
            theirs = {d: sv for d, (scope, sv) in held[b.index].items() if scope in shared}
            if mine != theirs:
                return f"r{a.index} and r{b.index} have not converged yet"
    return None


def state_vectors(peer: Peer) -> dict[str, tuple[str, bytes]]:
    """Every document's (scope, state vector); one that has seen nothing counts as not held
    (as in `hearthsync.chaos.check.document_states`)."""
    held = ((doc_id, peer.state_vector(doc_id)) for doc_id in peer.document_ids())
    return {d: (scope_of(peer, d), sv) for d, sv in held if sv != NOTHING}


def core_pending(peer: Peer) -> bool:
    """Whether the peer has work of its own under way: writes queued for the next commit, or
    a user being forgotten in the background.  Read from its internals: the peer has no public
    way to say it is idle (`Peer.flush` waits instead, and here nothing may wait)."""
    docs = getattr(peer, "_docs", None)
    forgetting = getattr(peer, "_forgetting", None)
    queued = getattr(getattr(docs, "_queue", None), "done", None) is not None
    purging = any(not t.done() for t in getattr(forgetting, "_tasks", ()))
    return queued or purging


def scope_of(peer: Peer, doc_id: str) -> str:
    """The scope of ``doc_id`` as the peer's sync port describes it."""
    return peer.docs.describe(doc_id).scope
