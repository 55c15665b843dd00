"""Frames lost inside one session, followed by an ACK that proves less than it is taken to.

An ACK's state vector proves which items the peer holds, not which deletions it applied nor
what it holds aside beyond a gap in an author's clock.  In protocol 5, a lost removal, offer or
delta held aside, followed by the ACK of an earlier write, cancelled the re-offer that would
have repaired it, for as long as the session lasted.  Protocol 6 settles such a document only
by a MATCHED of the digest offered, or by the peer's own SYNC_STEP1 (SPEC §6.4).  Found in
review (2026-12-07): each test failed before.
"""

from __future__ import annotations

import pytest
from pycrdt import Doc, Map

from hearthsync.crypto.keyring import Keyring
from hearthsync.ids import DocId
from hearthsync.protocol import frames as f
from hearthsync.protocol.session import (
    SETTLE_MAX_S,
    UNRELAYED_OFFER_S,
    Acked,
    Session,
    answer_from,
)
from tests.crypto.conftest import NOW, Home
from tests.protocol.test_session import (
    ELSEWHERE,
    Robot,
    _beyond_a_gap_elsewhere,
    _removed_elsewhere,
    _written_and_applied,
    connect,
    inventories,
    pump,
    robot,
    told_neighbours,
)

Link = tuple[Robot, Session]


@pytest.fixture
def kitchen(home: Home, admin_keys: Keyring) -> Robot:
    return robot(home, admin_keys, home.kitchen, "kitchen")


@pytest.fixture
def hall(home: Home, admin_keys: Keyring) -> Robot:
    return robot(home, admin_keys, home.hall, "hall")


def _an_ack_in_flight(
    kitchen: Robot, hall: Robot, neighbours: tuple[str, ...] = ()
) -> tuple[DocId, Link, Link, list[bytes]]:
    """The kitchen holds ``tea/mug`` and, linked to the hall (which says it has sessions with
    ``neighbours``), writes ``coffee``; the hall's ACK of it is on its way back, not delivered."""
    doc = DocId("user/alice/prefs")
    kitchen.docs.write(doc, "tea/mug", "green")
    a, b = connect(kitchen, hall)
    if neighbours:
        told_neighbours(a[1], neighbours)
    return doc, a, b, _written_and_applied(a, b, doc, "coffee", "oat")


def _offers(a: Link, b: Link, start: float, end: float) -> list[DocId]:
    """Tick both sides every 0.5 s from ``start`` to ``end``, delivering everything; return
    the documents ``a`` offered in inventories meanwhile."""
    offered: list[DocId] = []
    t = start
    while t <= end:
        a[1].tick(NOW + t)
        b[1].tick(NOW + t)
        sent = a[1].data_to_send()
        offered += [entry.doc_id for inv in inventories(sent) for entry in inv.entries]
        for data in sent:
            b[1].receive_data(data, NOW + t)
        pump(a, b, NOW + t)
        t += 0.5
    return offered


def _lose(a: Link) -> list[f.Frame]:
    """What ``a`` has queued, lost on the way."""
    return [f.decode(data) for data in a[1].data_to_send()]


def test_an_offered_deletion_whose_inventory_is_lost_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """An answer that brought a deletion is offered (never relayed); the offer is lost, and
    the ACK of the write before it covers the state vector the offer noted."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))  # a third's answer
    assert not a[1].relays(doc, answer_from(ELSEWHERE))
    a[1].tick(NOW + 0.5)
    lost = _lose(a)
    assert [e.doc_id for x in lost if isinstance(x, f.Inventory) for e in x.entries] == [doc]
    for data in ack_in_flight:  # lands after the offer went
        a[1].receive_data(data, NOW + 0.6)
    _offers(a, b, 1.0, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def test_a_removal_sent_live_and_lost_is_offered_again(kitchen: Robot, hall: Robot) -> None:
    """A removal (forgetting removes entries) adds no item: the ACK of the write before it
    covers the state vector noted when it was sent."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    removal = _removed_elsewhere(kitchen, doc, "tea/mug")  # as if written here
    kitchen.docs.apply(doc, removal)
    assert a[1].send_update(doc, removal)
    assert [type(x) for x in _lose(a)] == [f.Update]
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    _offers(a, b, 0.5, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def test_a_held_back_delta_beyond_a_gap_whose_offer_is_lost_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """Not relayed (the hall said it has a session with the author); its offer is lost, and
    the offer noted the bare state vector, dropping the clocks the delta reaches."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall, neighbours=(ELSEWHERE,))
    beyond = _beyond_a_gap_elsewhere(kitchen, doc)
    assert not a[1].relays(doc, ELSEWHERE, beyond)
    a[1].tick(NOW + UNRELAYED_OFFER_S)
    lost = _lose(a)
    assert [e.doc_id for x in lost if isinstance(x, f.Inventory) for e in x.entries] == [doc]
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + UNRELAYED_OFFER_S + 0.1)
    assert doc in _offers(a, b, UNRELAYED_OFFER_S + 0.5, UNRELAYED_OFFER_S + 3 * SETTLE_MAX_S)


def test_a_relayed_delta_beyond_a_gap_lost_on_the_way_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """Relayed (the hall has no session with its author) and lost: the state vector noted
    when it was sent does not move for content held aside."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    beyond = _beyond_a_gap_elsewhere(kitchen, doc)
    assert a[1].relays(doc, ELSEWHERE, beyond)
    assert a[1].send_update(doc, beyond)
    assert [type(x) for x in _lose(a)] == [f.Update]
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    assert doc in _offers(a, b, 0.5, 3 * SETTLE_MAX_S)


def test_content_held_aside_then_released_by_the_peers_own_update_converges(
    kitchen: Robot, hall: Robot
) -> None:
    """A third robot (gone since) wrote cup, then pot.  The kitchen got only pot, held it
    aside, and relayed it to the hall: lost, and the ACK of an earlier write cancelled the
    re-offer.  The hall then got cup and sent it on; the kitchen's gap fills and it shows pot.
    What came from the peer is never relayed back to it: the two differ for good."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    third = Doc(client_id=4343)
    third.apply_update(kitchen.docs.docs[doc].get_update())
    captured: list[bytes] = []
    subscription = third.observe(lambda event: captured.append(event.update))
    for key in ("tea/cup", "tea/pot"):
        with third.transaction():
            third.get("m", type=Map)[key] = "third"
    third.unobserve(subscription)
    cup, pot = captured
    kitchen.docs.apply(doc, pot)  # beyond the gap: held aside, no state vector moves
    assert a[1].relays(doc, ELSEWHERE, pot)
    assert a[1].send_update(doc, pot)
    assert [type(x) for x in _lose(a)] == [f.Update]
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    hall.docs.apply(doc, cup)  # from the third robot directly
    assert b[1].relays(doc, ELSEWHERE, cup)
    assert b[1].send_update(doc, cup)
    pump(a, b, NOW + 0.2)  # the kitchen applies cup and ACKs it
    assert not a[1].relays(doc, hall.identity.device_id, cup)  # never back to the peer
    _offers(a, b, 0.5, 3 * SETTLE_MAX_S)
    assert kitchen.docs.content(doc) == hall.docs.content(doc)


def test_a_matched_offer_settles_only_what_was_offered(kitchen: Robot, hall: Robot) -> None:
    """A MATCHED proves the peer held the digest offered; a removal sent after the offer is
    still owed, and is offered again when its MATCHED comes back for the old digest."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))
    assert not a[1].relays(doc, answer_from(ELSEWHERE))  # offered at the next tick
    a[1].tick(NOW + 0.5)
    offer = a[1].data_to_send()
    assert [e.doc_id for x in inventories(offer) for e in x.entries] == [doc]
    removal = _removed_elsewhere(kitchen, doc, "coffee")  # written here after the offer
    kitchen.docs.apply(doc, removal)
    assert a[1].send_update(doc, removal)
    assert [type(x) for x in _lose(a)] == [f.Update]  # lost
    hall.docs.apply(doc, _removed_elsewhere(hall, doc, "tea/mug"))  # as the offer's answer
    for data in offer:
        b[1].receive_data(data, NOW + 0.6)
    answers = [f.decode(data) for data in b[1].data_to_send()]
    assert [type(x) for x in answers] == [f.Matched]  # the hall holds the offered digest
    for answer in answers:
        a[1].receive_data(f.encode(answer), NOW + 0.7)
    assert doc in _offers(a, b, 1.0, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {}


def test_an_answer_of_a_deletion_alone_lost_before_its_done_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """The hall asks for a document it lacks only a deletion of; the answer is lost, its
    SYNC_DONE arrives (the hall stops asking), and the ACK of an earlier write covers the
    state vector the answer was noted with: it must not settle it."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))  # a third's removal
    lineage = kitchen.docs.lineage(doc)
    assert lineage is not None
    asked = f.SyncStep1(doc, lineage, hall.docs.state_vector(doc))
    a[1].receive_data(f.encode(asked), NOW + 0.1)
    answer = [f.decode(data) for data in a[1].data_to_send()]
    assert [type(x) for x in answer] == [f.SyncStep2, f.SyncDone]
    b[1].receive_data(f.encode(answer[1]), NOW + 0.2)  # the SYNC_STEP2 is lost
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.3)
    assert doc in _offers(a, b, 0.5, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def _asked_and_answered(a: Link, b: Link, now: float) -> list[f.Frame]:
    """``a`` offers what is due; ``b`` asks for it; ``a``'s answer, not yet delivered."""
    a[1].tick(NOW + now)
    for data in a[1].data_to_send():
        b[1].receive_data(data, NOW + now)
    asked = [f.decode(data) for data in b[1].data_to_send()]
    assert [type(x) for x in asked] == [f.SyncStep1]
    for frame in asked:
        a[1].receive_data(f.encode(frame), NOW + now + 0.1)
    answer = [f.decode(data) for data in a[1].data_to_send()]
    assert [type(x) for x in answer] == [f.SyncStep2, f.SyncDone]
    return answer


def _done_without_its_answer_then_the_ack(
    a: Link,
    b: Link,
    done: f.Frame,
    ack_in_flight: list[bytes],
    at: float,
) -> None:
    """The answer's SYNC_STEP2 is lost and its SYNC_DONE arrives (the hall asks no more) at
    ``at``; then the ACK of an earlier write; then the kitchen's re-offers, for a while."""
    b[1].receive_data(f.encode(done), NOW + at)
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + at + 0.1)
    _offers(a, b, at + 0.2, 3 * SETTLE_MAX_S)


def test_an_offered_deletion_whose_answer_is_lost_while_its_done_arrives_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """Found in review of protocol 6: the hall asks for an offered deletion; the answer is
    lost, its SYNC_DONE arrives (the hall asks no more), and the ACK of an earlier write
    settled the answer."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))
    assert not a[1].relays(doc, answer_from(ELSEWHERE))
    answer = _asked_and_answered(a, b, 0.5)
    _done_without_its_answer_then_the_ack(a, b, answer[1], ack_in_flight, 0.7)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def test_an_answer_of_items_and_a_deletion_lost_while_its_done_arrives_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """Found in review of protocol 6: the answer carries a third robot's item and a removal;
    it is lost, its SYNC_DONE arrives, the hall gets the item from the third robot, and its
    ACK of the kitchen's next write covers what the answer was noted with."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    third = Doc(client_id=4343)
    third.apply_update(kitchen.docs.docs[doc].get_update())
    captured: list[bytes] = []
    subscription = third.observe(lambda event: captured.append(event.update))
    with third.transaction():
        third.get("m", type=Map)["tea/cup"] = "third"
    third.unobserve(subscription)
    (cup,) = captured
    kitchen.docs.apply(doc, cup)  # both came in a third robot's catch-up answer
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))
    assert not a[1].relays(doc, answer_from(ELSEWHERE))
    answer = _asked_and_answered(a, b, 0.5)
    b[1].receive_data(f.encode(answer[1]), NOW + 0.7)  # the SYNC_STEP2 is lost
    hall.docs.apply(doc, cup)  # from the third robot, directly
    assert a[1].send_update(doc, kitchen.docs.write(doc, "tea/pot", "black"))
    for data in a[1].data_to_send():
        b[1].receive_data(data, NOW + 0.8)
    pump(a, b, NOW + 0.9)  # the hall applies it and ACKs it
    _offers(a, b, 1.0, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc)


def test_a_lost_removal_then_a_repeated_request_whose_answer_is_lost_is_offered_again(
    kitchen: Robot, hall: Robot
) -> None:
    """Found in review of protocol 6: a removal sent live is lost; a repeat of an earlier
    SYNC_STEP1 settles it (the peer asks), its answer is lost while its SYNC_DONE arrives."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    lineage = kitchen.docs.lineage(doc)
    assert lineage is not None
    repeated = f.SyncStep1(doc, lineage, hall.docs.state_vector(doc))
    removal = _removed_elsewhere(kitchen, doc, "tea/mug")
    kitchen.docs.apply(doc, removal)
    assert a[1].send_update(doc, removal)
    assert [type(x) for x in _lose(a)] == [f.Update]
    a[1].receive_data(f.encode(repeated), NOW + 0.2)
    answer = [f.decode(data) for data in a[1].data_to_send()]
    assert [type(x) for x in answer] == [f.SyncStep2, f.SyncDone]
    _done_without_its_answer_then_the_ack(a, b, answer[1], ack_in_flight, 0.3)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def test_an_offer_of_new_documents_keeps_what_an_ack_cannot_prove_owed(
    kitchen: Robot, hall: Robot
) -> None:
    """Found in review of protocol 6: offering the documents not offered yet (when keys
    arrive) noted each one afresh, so a removal sent and lost before it, then settled by the
    ACK of an earlier write, was never offered again."""
    a, b = connect(kitchen, hall)
    doc = DocId("user/alice/calibration")  # made after the session opened: never offered
    for data in _written_and_applied(a, b, doc, "tea/mug", "green"):
        a[1].receive_data(data, NOW)
    ack_in_flight = _written_and_applied(a, b, doc, "coffee", "oat")
    removal = _removed_elsewhere(kitchen, doc, "tea/mug")
    kitchen.docs.apply(doc, removal)
    assert a[1].send_update(doc, removal)
    assert [type(x) for x in _lose(a)] == [f.Update]
    a[1].keys_learned()  # offers what was never offered: this document
    assert [e.doc_id for x in _lose(a) if isinstance(x, f.Inventory) for e in x.entries] == [doc]
    for data in ack_in_flight:
        a[1].receive_data(data, NOW + 0.1)
    assert doc in _offers(a, b, 0.5, 3 * SETTLE_MAX_S)
    assert hall.docs.content(doc) == kitchen.docs.content(doc) == {"coffee": "oat"}


def test_a_matched_offer_reports_the_state_it_proves_though_the_document_moved_on(
    kitchen: Robot, hall: Robot
) -> None:
    """Found in review of protocol 6: MATCHED reported `Acked` (which the transport link
    keeps its own list of unacknowledged documents by) only while the document was still
    as offered; one written to meanwhile stayed unacknowledged on the link for good."""
    doc, a, b, ack_in_flight = _an_ack_in_flight(kitchen, hall)
    kitchen.docs.apply(doc, _removed_elsewhere(kitchen, doc, "tea/mug"))
    assert not a[1].relays(doc, answer_from(ELSEWHERE))
    a[1].tick(NOW + 0.5)
    offered = kitchen.docs.state_vector(doc)
    hall.docs.apply(doc, _removed_elsewhere(hall, doc, "tea/mug"))  # it holds what was offered
    for data in ack_in_flight + a[1].data_to_send():
        b[1].receive_data(data, NOW + 0.6)
    kitchen.docs.write(doc, "tea/pot", "black")  # moved on, not sent yet
    a[1].events_received()
    for data in b[1].data_to_send():
        a[1].receive_data(data, NOW + 0.7)
    acked = [e for e in a[1].events_received() if isinstance(e, Acked)]
    assert [(e.doc_id, e.state_vector) for e in acked] == [(doc, offered)]
