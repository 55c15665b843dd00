"""The view's contract, the constructor's validation, and what a browser refuses to report."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from hearthsync.discovery import Discovery, PeerFound, PeerLost, PeerView
from hearthsync.discovery.events import MAX_PEERS
from hearthsync.discovery.mdns import TXT_VERSION
from hearthsync.errors import ValidationError
from hearthsync.protocol.session import PROTOCOL_VERSION
from tests.discovery.support import OTHER_TAG, TAG, Recorder


def test_the_view_emits_only_real_changes() -> None:
    view, events = PeerView(), Recorder()
    view.subscribe(events)
    assert view.found("kitchen", "10.0.0.5", 1)
    assert not view.found("kitchen", "10.0.0.5", 1)  # nothing new
    assert view.found("kitchen", "10.0.0.9", 1)  # moved: reported again
    assert view.lost("kitchen")
    assert not view.lost("kitchen")
    assert not view.lost("never-seen")
    assert events.events() == [
        PeerFound("kitchen", "10.0.0.5", 1),
        PeerFound("kitchen", "10.0.0.9", 1),
        PeerLost("kitchen"),
    ]


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    view, events = PeerView(), Recorder()

    def broken(event: object) -> None:
        raise RuntimeError("consumer bug")

    view.subscribe(broken)
    unsubscribe = view.subscribe(events)
    view.found("kitchen", "10.0.0.5", 1)
    assert events.events() == [PeerFound("kitchen", "10.0.0.5", 1)]
    assert "consumer bug" in caplog.text
    unsubscribe()
    view.lost("kitchen")
    assert len(events.events()) == 1


def test_the_view_is_bounded() -> None:
    view = PeerView()
    for n in range(MAX_PEERS + 10):
        view.found(f"robot-{n}", "10.0.0.5", 1)
    assert len(view.peers()) == MAX_PEERS
    assert view.found("robot-0", "10.0.0.6", 1)  # a known peer may still move


def test_a_robot_known_takes_the_place_of_a_record_nobody_proved_in_a_full_view() -> None:
    """Found in review: anyone who sniffed the tag (in clear in every announcement) could
    fill the view with made-up robots, and a robot of the household that restarted after was
    never reported, so never dialed.  A preferred one (`hearth run`: a robot whose
    certificate it holds) takes the place of the oldest that is not."""
    known = {"attic", "hall"}
    view, events = PeerView(preferred=known.__contains__), Recorder()
    for n in range(MAX_PEERS):
        view.found(f"fake-{n}", "10.0.0.9", 1)
    view.subscribe(events)

    assert not view.found("fake-more", "10.0.0.9", 1)  # no room for another stranger
    assert view.found("attic", "10.0.0.5", 1)
    assert view.found("hall", "10.0.0.6", 1)

    assert events.events() == [
        PeerLost("fake-0"), PeerFound("attic", "10.0.0.5", 1),
        PeerLost("fake-1"), PeerFound("hall", "10.0.0.6", 1),
    ]  # fmt: skip
    assert len(view.peers()) == MAX_PEERS


def test_a_full_view_of_robots_known_keeps_them() -> None:
    view = PeerView(preferred=lambda key: True)
    for n in range(MAX_PEERS):
        view.found(f"robot-{n}", "10.0.0.5", 1)
    assert not view.found("robot-new", "10.0.0.5", 1)  # nothing not preferred to give way
    assert "robot-0" in view.peers()


def test_a_preference_that_fails_prefers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def broken(key: str) -> bool:
        raise RuntimeError("consumer bug")

    view = PeerView(preferred=broken)
    for n in range(MAX_PEERS):
        view.found(f"robot-{n}", "10.0.0.5", 1)
    assert not view.found("attic", "10.0.0.5", 1)
    assert "the preference for attic failed" in caplog.text


async def test_a_closed_view_ends_new_and_old_streams() -> None:
    view = PeerView()
    view.found("kitchen", "10.0.0.5", 1)
    old = view.stream(replay=False)
    view.close()
    assert not view.found("hall", "10.0.0.6", 1)
    assert [e async for e in old] == []
    assert [e async for e in view.stream()] == [PeerFound("kitchen", "10.0.0.5", 1)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device_id": "kitchen robot"}, "device"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"tag": "my-household"}, "tag"),  # a name, not a derived hex tag
        ({"tag": "abc"}, "tag"),
        ({"service_type": "_hearth._tcp"}, "service_type"),
        ({"service_type": "x._hearth._tcp.local."}, "service_type"),
        ({"interfaces": "127.0.0.1"}, "interfaces"),
        ({"interfaces": ["eth0"]}, "interfaces"),
        ({"addresses": ["10.0.0.300"]}, "addresses"),
        ({"reannounce_s": 0}, "reannounce_s"),
    ],
)
def test_bad_arguments_are_refused_up_front(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"device_id": "hub", "port": 8765, "tag": TAG} | kwargs
    with pytest.raises(ValidationError) as caught:
        Discovery(**args)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_services_that_break_the_rules_are_ignored_with_a_reason(
    local: Callable[..., Discovery], service_type: str
) -> None:
    """TXT records come from anyone on the LAN: each claim is checked before it is reported."""
    ignored, events = Recorder(), Recorder()
    forged = {
        "liar": {"tag": TAG, "id": "somebody-else", "v": TXT_VERSION},
        "future": {"tag": TAG, "id": "future", "v": str(PROTOCOL_VERSION + 1)},
        "untagged": {"id": "untagged", "v": TXT_VERSION},
    }
    async with (
        AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only) as azc,
        local("hub", 9001, on_ignored=ignored, on_event=events) as hub,
    ):
        for name, properties in forged.items():
            info = AsyncServiceInfo(
                service_type,
                f"{name}.{service_type}",
                port=9100,
                properties=properties,
                server=f"{name}.local.",
                parsed_addresses=["127.0.0.1"],
            )
            await azc.async_register_service(info, cooperating_responders=True)
        async with local("kitchen", 9002):  # a well-behaved robot, registered last
            await events.found("kitchen")
            for name in forged:
                await ignored.wait_for(partial(_names, f"{name}."))
        reasons = {name.split(".")[0]: reason for name, reason in hub.ignored().items()}
        assert reasons == {
            "hub": "own device",
            "liar": "TXT id does not match the instance name",
            "future": f"protocol version '{PROTOCOL_VERSION + 1}', ours is {PROTOCOL_VERSION}",
            "untagged": "other household (tag differs)",
        }
        assert events.ids() == {"kitchen"}


def _names(prefix: str, item: tuple[str, str]) -> bool:
    return item[0].startswith(prefix)


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"tag": OTHER_TAG}, "other household (tag differs)"),
        ({"v": str(PROTOCOL_VERSION + 1)}, "protocol version"),
        ({"id": "somebody-else"}, "TXT id does not match the instance name"),
    ],
    ids=["other-household", "other-version", "bad-id"],
)
async def test_a_peer_whose_records_turn_to_something_ignored_is_lost(
    local: Callable[..., Discovery], service_type: str, changed: dict[str, str], reason: str
) -> None:
    """Found in review: the service was ignored, yet stayed in the view, so the robot kept
    dialing a peer of another household, or of a version it cannot speak."""
    ignored, events = Recorder(), Recorder()
    properties = {"tag": TAG, "id": "porch", "v": TXT_VERSION}
    async with (
        AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only) as azc,
        local("hub", 9001, on_ignored=ignored, on_event=events) as hub,
    ):
        porch = _porch(service_type, properties)
        await (await azc.async_register_service(porch, cooperating_responders=True))
        assert await events.found("porch") == PeerFound("porch", "127.0.0.1", 9100)
        since = events.mark()
        await (await azc.async_update_service(_porch(service_type, properties | changed)))
        assert await events.lost("porch", since=since) == PeerLost("porch")
        await ignored.wait_for(lambda i: i[0] == f"porch.{service_type}" and reason in i[1])
        assert hub.peers() == {}
        assert reason in hub.ignored()[f"porch.{service_type}"]


def _porch(service_type: str, properties: dict[str, str]) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        service_type, f"porch.{service_type}", port=9100, properties=properties,
        server="porch.local.", parsed_addresses=["127.0.0.1"],
    )  # fmt: skip
