"""The local HTTP API through its ASGI client: every route, auth, and refusals that name the
problem and change nothing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message

from hearthsync import Peer, ValidationError
from hearthsync.api import MAX_BODY, make_app
from hearthsync.api.app import MIN_TOKEN
from hearthsync.api.server import TOKEN_FILE, api_token
from hearthsync.errors import StoreError
from tests.context.conftest import at, clock

TOKEN = "kitchen-robot-api-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MONDAY_9 = at(clock(0, "09:00")).isoformat()


@pytest.fixture
async def api(home: Peer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(home, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://robot") as client:
        yield client


def state(peer: Peer) -> dict[str, bytes]:
    """What ``peer`` holds: the state vector of every document that holds anything (a read
    opens the household's empty ones, and that is no change)."""
    held = {doc_id: peer.state_vector(doc_id) for doc_id in peer.document_ids()}
    return {doc_id: vector for doc_id, vector in held.items() if vector != b"\x00"}


ROUTES = [
    ("POST", "/context", {"user": "alice", "task": "general_assistant", "time": MONDAY_9}),
    ("POST", "/explain", {"user": "alice", "key": "beverage/coffee"}),
    ("POST", "/preferences", {"user": "alice", "key": "beverage/coffee", "value": "cortado"}),
    ("POST", "/corrections", {"user": "alice", "key": "tea/mug", "value": "green-mug"}),
    ("POST", "/feedback", {"user": "alice", "key": "tea/mug", "value": "green-mug"}),
    ("POST", "/events", {"user": "alice", "type": "COMMAND", "domain": "tea", "text": "tea"}),
    ("POST", "/placements", {"object": "green-mug", "label": "Green mug"}),
    ("POST", "/maintain", {}),
    ("POST", "/users", {"user": "carol", "name": "Carol"}),
    ("POST", "/profile", {"user": "alice", "languages": ["fr"]}),
    ("POST", "/calibration", {"user": "alice", "verbosity": 0.2}),
    ("POST", "/health", {"user": "alice", "key": "medication/evening", "value": "two pills"}),
    ("POST", "/regions", {"region": "shelf-2", "label": "Shelf 2"}),
    ("POST", "/routines", {"routine": "nap", "label": "Nap", "after": "13:00"}),
    ("POST", "/relations", {"subject": "alice", "relation": "owns", "object": "green-mug"}),
    ("GET", "/users", None),
    ("POST", "/preferences/delete", {"user": "alice", "key": "tea/mug"}),
    ("POST", "/forget", {"user": "alice"}),
    ("GET", "/status", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN}],
)
async def test_every_route_refuses_a_request_without_the_token(
    api: httpx.AsyncClient, home: Peer, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    before = state(home)

    answer = await api.request(method, path, json=body, headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"error": "a valid bearer token is required", "field": None}
    assert answer.headers["www-authenticate"] == "Bearer"
    assert state(home) == before


async def test_neither_the_schema_nor_a_parser_answers_a_caller_without_the_token(
    api: httpx.AsyncClient,
) -> None:
    # found in review: the schema was served to anyone, and a malformed body was a 422
    # describing the parse, before the token was looked at
    schema = await api.get("/openapi.json")
    malformed = await api.post(
        "/context", content=b"{bad", headers={"Content-Type": "application/json"}
    )
    for answer in (schema, malformed):
        assert answer.status_code == 401
        assert answer.json() == {"error": "a valid bearer token is required", "field": None}
    assert (await api.get("/openapi.json", headers=AUTH)).status_code == 200


async def test_writes_then_a_context_and_its_explanation(api: httpx.AsyncClient) -> None:
    writes = [
        ("/preferences", {"user": "alice", "key": "beverage/coffee", "value": "oat latte",
                          "condition": {"days": "weekday"}}),
        ("/corrections", {"user": "alice", "key": "tea/mug", "value": "green-mug",
                          "served": "blue-mug", "text": "the green mug, please"}),
        ("/feedback", {"user": "alice", "key": "tea/mug", "value": "green-mug"}),
        ("/events", {"user": "alice", "type": "COMMAND", "domain": "beverage",
                     "text": "coffee please", "ts": clock(0, "08:00")}),
        ("/placements", {"object": "green-mug", "label": "Green mug", "region": "shelf-2",
                         "owner": "alice"}),
    ]  # fmt: skip
    for path, body in writes:
        answer = await api.post(path, json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text

    answer = await api.post(
        "/context",
        json={"user": "alice", "task": "prepare_morning_beverage", "time": MONDAY_9,
              "location": "shelf-2", "query": "which mug", "max_tokens": 200},
        headers=AUTH,
    )  # fmt: skip

    assert answer.status_code == 200
    reply = answer.json()
    values = {p["key"]: p["value"] for p in reply["context"]["preferences"]}
    assert values == {"beverage/coffee": "oat latte", "tea/mug": "green-mug"}
    assert reply["context"]["withheld"] == ["health"]
    assert reply["context"]["places"][0]["placement"]["object"] == "green-mug"
    assert reply["prompt"].startswith("Context for Alice (alice) · task prepare_morning_beverage")
    explained = await api.post(
        "/explain", json={"user": "alice", "key": "tea/mug", "time": MONDAY_9}, headers=AUTH
    )
    assert explained.json()["sentence"].startswith("the green mug, because you asked for it")
    dose = {"user": "alice", "key": "medication.evening/dose", "value": "two pills"}
    assert (await api.post("/preferences", json=dose, headers=AUTH)).status_code == 201
    asked = {"user": "alice", "key": "medication.evening/dose", "time": MONDAY_9}
    refused = await api.post("/explain", json=asked, headers=AUTH)
    assert refused.status_code == 403, refused.text
    granted = await api.post(
        "/explain", json={**asked, "task": "medication_reminder"}, headers=AUTH
    )  # a task granted health may have it explained
    assert granted.json()["sentence"].startswith("two pills"), granted.text


async def test_status_and_metrics(api: httpx.AsyncClient) -> None:
    body = {"user": "alice", "task": "general_assistant", "time": MONDAY_9}
    await api.post("/context", json=body, headers=AUTH)
    await api.post("/context", json=body | {"user": "nobody"}, headers=AUTH)
    await api.get("/nowhere", headers=AUTH)

    status = (await api.get("/status", headers=AUTH)).json()
    metrics = await api.get("/metrics", headers=AUTH)

    assert (status["device"], status["users"]) == ("kitchen", ["alice", "bob", "charlie"])
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = metrics.text.splitlines()
    for expected in [
        'hearth_requests_total{route="/context",status="200"} 1',
        'hearth_requests_total{route="/context",status="404"} 1',
        'hearth_requests_total{route="other",status="404"} 1',
        'hearth_requests_total{route="/status",status="200"} 1',
        "hearth_context_seconds_count 1",
        'hearth_context_seconds_bucket{le="+Inf"} 1',
        "hearth_users 3",
    ]:
        assert expected in lines


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/preferences", {"user": "alice", "key": "Bad Key", "value": 1}, 422, "key"),
        ("/preferences", {"user": "alice", "key": "a/b", "value": 1, "colour": "red"}, 422,
         "colour"),
        ("/preferences", {"user": "alice", "key": "a/b", "value": 1, "confidence": 7}, 422,
         "confidence"),
        ("/preferences", {"user": "dana", "key": "a/b", "value": 1}, 404, None),
        ("/preferences", {"user": "alice", "key": "contact/x", "value": {"phone": "x"}}, 422,
         "value.phone"),
        ("/events", {"user": "alice", "type": "GOSSIP", "domain": "x"}, 422, "type"),
        ("/feedback", {"user": "alice", "key": "tea/mug", "value": 1, "outcome": "meh"}, 422,
         "outcome"),
        ("/placements", {"object": "Mug!", "label": "Mug"}, 422, "object"),
        ("/context", {"user": "alice", "task": "general", "time": "2026-03-09T09:00:00"}, 422,
         "time"),
        ("/context", {"user": "alice", "task": "general", "history_window": "forever"}, 422,
         "history_window"),
        ("/context", {"user": "dana", "task": "general"}, 404, None),
        ("/context", {"user": "alice", "task": "general", "max_tokens": 3}, 422, "max_tokens"),
        ("/explain", {"user": "alice", "key": "medication/pills"}, 403, "health"),
        ("/maintain", {"lookback": "nope"}, 422, "lookback"),
        ("/maintain", {"lookback": "0d"}, 422, "lookback"),
        ("/maintain", {"users": ["NOT A NAME"]}, 422, "users"),
        ("/maintain", {"users": ["alice", "nobody"]}, 404, None),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_4xx_naming_the_problem_and_changes_nothing(
    api: httpx.AsyncClient, home: Peer, path: str, body: Any, status: int, field: str | None
) -> None:
    before = state(home)

    answer = await api.post(path, json=body, headers=AUTH)

    assert answer.status_code == status
    assert answer.json()["field"] == field
    assert answer.json()["error"]
    await home.flush()
    assert state(home) == before


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/preferences", f'{{"user": "alice", "key": "tea/mug", "value": {nested(300)}}}', "value"),
        ("/events", f'{{"user": "alice", "type": "COMMAND", "domain": "tea", "payload": '
                    f'{{"a": {nested(300)}}}}}', "payload"),
        ("/preferences", f'{{"user": "alice", "key": "tea/mug", "value": {nested(2000)}}}', None),
    ],
    ids=["value", "payload", "deeper than the parser goes"],
)  # fmt: skip
async def test_a_body_nested_too_deeply_is_a_422_naming_its_field(
    api: httpx.AsyncClient, home: Peer, path: str, body: str, field: str | None
) -> None:
    """Found in review: a JSON value nested a few hundred levels deep was refused naming a
    field the request does not have, kilobytes long (``value.list.0.list.0...``, the tags of
    the JSON value's union); a thousand levels, a 400 'There was an error parsing the body'
    that the OpenAPI document does not list."""
    before = state(home)

    answer = await api.post(
        path, content=body.encode(), headers=AUTH | {"content-type": "application/json"}
    )

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert "nested too deeply" in answer.json()["error"]
    assert len(answer.content) < 200
    await home.flush()
    assert state(home) == before


async def test_a_preference_deleted_is_gone_from_the_context_and_from_a_reopened_store(
    api: httpx.AsyncClient, home: Peer
) -> None:
    """A person takes a preference back: the route answers the tombstone once it is durable,
    and contexts stop serving the value; the one set under a condition stays."""
    for condition in (None, {"days": "weekend"}):
        pref = {"user": "alice", "key": "beverage/coffee", "value": "cortado"}
        written = await api.post("/preferences", json=pref | {"condition": condition}, headers=AUTH)
        assert written.status_code == 201
    deleted = await api.post(
        "/preferences/delete", json={"user": "alice", "key": "beverage/coffee"}, headers=AUTH
    )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True
    assert deleted.json()["value"] == "cortado"
    assert home.preference("alice", "beverage/coffee") is None
    kept = home.preference("alice", "beverage/coffee", {"days": "weekend"})
    assert kept is not None
    assert kept.value == "cortado"
    again = await api.post(
        "/preferences/delete", json={"user": "alice", "key": "beverage/coffee"}, headers=AUTH
    )
    assert again.status_code == 404
    assert "alice has no preference 'beverage/coffee'" in again.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"user": "alice", "key": "Bad Key"}, 422, "key"),
        ({"user": "Alice!", "key": "tea/mug"}, 422, "user"),
        ({"user": "alice", "key": "tea/mug", "colour": "red"}, 422, "colour"),
        ({"user": "alice", "key": "tea/mug", "condition": {"days": "someday"}}, 422,
         "condition.days"),
        ({"user": "dana", "key": "tea/mug"}, 404, None),
        ({"user": "alice", "key": "tea/kettle"}, 404, None),
    ],
)  # fmt: skip
async def test_deleting_a_preference_that_is_not_there_or_badly_named_changes_nothing(
    api: httpx.AsyncClient, home: Peer, body: Any, status: int, field: str | None
) -> None:
    await home.set_preference("alice", "tea/mug", "green-mug")
    before = state(home)

    answer = await api.post("/preferences/delete", json=body, headers=AUTH)

    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    assert answer.json()["error"]
    await home.flush()
    assert state(home) == before
    assert home.preference("alice", "tea/mug") is not None


async def test_malformed_and_oversized_bodies_are_refused(
    api: httpx.AsyncClient, home: Peer
) -> None:
    before = state(home)
    broken = await api.post(
        "/preferences", content=b"{not json", headers=AUTH | {"content-type": "application/json"}
    )
    huge = await api.post(
        "/events",
        json={"user": "alice", "type": "COMMAND", "domain": "x", "text": "a" * MAX_BODY},
        headers=AUTH,
    )

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    streamed = await api.post("/events", content=stream(), headers=AUTH)

    assert broken.status_code == 422
    assert broken.json() == {
        "error": "the body is not valid JSON: Expecting property name enclosed in double quotes",
        "field": None,
    }
    assert (huge.status_code, streamed.status_code) == (413, 413)
    assert huge.json() == {"error": f"the body is larger than {MAX_BODY:,} bytes", "field": None}
    assert state(home) == before


async def test_a_request_whose_client_went_away_before_its_body_ended_is_not_carried_out(
    home: Peer,
) -> None:
    """Found in review: a client that declared 200 bytes, sent a whole JSON object and some
    blanks, then went away, had its write carried out (a retry of an event then appends it
    twice); a request never finished is bad input, and changes nothing."""
    app = make_app(home, TOKEN)
    before = state(home)
    body = b'{"user": "alice", "key": "tea/unfinished", "value": "sent half"}  '
    parts: list[Message] = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"200"),
               (b"content-type", b"application/json")]  # fmt: skip
    scope = {"type": "http", "method": "POST", "path": "/preferences", "headers": headers,
             "query_string": b"", "app": app}  # fmt: skip
    await app(scope, receive, send)

    assert sent == []  # nobody to answer
    await home.flush()
    assert state(home) == before
    assert home.preference("alice", "tea/unfinished") is None


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
async def test_a_json_body_sent_as_another_type_is_refused_saying_so(
    api: httpx.AsyncClient, home: Peer, content_type: str | None
) -> None:
    """Found in review: ``curl -d '{...}'`` sends a form's type, and the answer was 'body:
    Input should be a valid dictionary or object to extract fields from', which says nothing
    of the header to add."""
    before = state(home)
    headers = AUTH | ({"content-type": content_type} if content_type else {})
    body = b'{"user": "alice", "key": "tea/mug", "value": "green-mug"}'

    answer = await api.post("/preferences", content=body, headers=headers)

    assert answer.status_code == 422
    assert answer.json() == {
        "error": "the body must be JSON, sent with 'Content-Type: application/json'",
        "field": None,
    }
    assert state(home) == before


async def test_forget_leaves_a_tombstone_and_the_user_is_gone(
    api: httpx.AsyncClient, home: Peer
) -> None:
    answer = await api.post("/forget", json={"user": "alice"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == "alice"
    assert answer.json()["device_id"] == home.device_id
    assert "alice" not in home.users()
    body = {"user": "alice", "task": "general_assistant"}
    gone = await api.post("/context", json=body, headers=AUTH)
    assert gone.status_code == 404
    assert "alice" in gone.json()["error"]
    unknown = await api.post("/forget", json={"user": "nobody"}, headers=AUTH)
    assert unknown.status_code == 404


async def test_the_openapi_document_is_derived_from_the_models(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json", headers=AUTH)).json()

    assert set(document["paths"]) == {path for _, path, _ in ROUTES}
    schemas = document["components"]["schemas"]
    assert {"ContextRequest", "ContextReply", "PreferenceWrite", "Problem"} <= set(schemas)
    assert schemas["ContextRequest"]["required"] == ["user", "task"]
    # how to authenticate, for generated clients (the document said nothing; a new user)
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)


async def test_a_user_is_added_over_http_and_bad_fields_are_named(
    api: httpx.AsyncClient, home: Peer
) -> None:
    """A running robot holds its store: over HTTP, another process could write everything
    but the people to write it for (found by a new user)."""
    added = await api.post(
        "/users", json={"user": "carol", "name": "Carol", "languages": ["fr"]}, headers=AUTH
    )
    assert added.status_code == 201, added.text
    assert added.json()["languages"] == ["fr"]
    assert "carol" in home.users()
    assert "carol" in (await api.get("/users", headers=AUTH)).json()["users"]
    pref = {"user": "carol", "key": "tea/mug", "value": "blue"}
    assert (await api.post("/preferences", json=pref, headers=AUTH)).status_code == 201
    before = home.users()
    for body, field in (
        ({"user": "Dan!", "name": "Dan"}, "user"),
        ({"user": "dan", "name": "Dan", "household_role": "king"}, "household_role"),
        ({"user": "dan", "name": "Dan", "attributes": {"email": "dan@example.org"}}, "email"),
    ):
        refused = await api.post("/users", json=body, headers=AUTH)
        assert refused.status_code == 422, refused.text
        assert field in (refused.json()["field"] or ""), refused.json()
    assert home.users() == before


async def test_profile_and_calibration_change_only_the_fields_given(
    api: httpx.AsyncClient, home: Peer
) -> None:
    """A robot's set-up screen in another language sets how a person is to be treated; over
    HTTP it could not (found by a new user)."""
    before = home.profile("alice")
    assert before is not None
    changed = await api.post(
        "/profile", json={"user": "alice", "languages": ["fr"], "attributes": {"height_cm": 165}},
        headers=AUTH,
    )  # fmt: skip
    assert changed.status_code == 201, changed.text
    after = home.profile("alice")
    assert after is not None
    assert (after.languages, after.attributes["height_cm"]) == (["fr"], 165)
    assert after.name == before.name  # not given: kept
    tuned = await api.post("/calibration", json={"user": "alice", "verbosity": 0.2}, headers=AUTH)
    assert tuned.status_code == 201, tuned.text
    assert tuned.json()["verbosity"] == 0.2
    assert tuned.json()["pace"] == 0.5  # not given: kept
    for path, body, field in (
        ("/calibration", {"user": "alice", "verbosity": 2}, "verbosity"),
        ("/profile", {"user": "alice", "attributes": {"email": "a@example.org"}}, "email"),
        ("/profile", {"user": "nobody", "languages": ["fr"]}, None),
    ):
        refused = await api.post(path, json=body, headers=AUTH)
        assert refused.status_code in (404, 422), refused.text
        if field is not None:
            assert field in (refused.json()["field"] or ""), refused.json()
    assert home.profile("alice") == after


async def test_health_places_routines_and_relations_are_written_over_http(
    api: httpx.AsyncClient, home: Peer
) -> None:
    """The rest of what the Python API writes (found missing by a new user)."""
    writes = [
        ("/health", {"user": "alice", "key": "medication/evening", "value": "two pills"}),
        ("/regions", {"region": "kitchen", "label": "Kitchen"}),
        ("/regions", {"region": "shelf-2", "label": "Shelf 2", "parent": "kitchen",
                      "polygon": [[0, 0], [1, 0], [1, 1]]}),
        ("/routines", {"routine": "nap", "label": "Nap", "user": "alice", "days": ["sat", "sun"],
                       "after": "13:00", "before": "15:00", "constraints": ["no vacuuming"]}),
        ("/relations", {"subject": "alice", "relation": "owns", "object": "green-mug"}),
    ]  # fmt: skip
    for path, body in writes:
        answer = await api.post(path, json=body, headers=AUTH)
        assert answer.status_code == 201, (path, answer.text)
    assert [h.value for h in home.health("alice")] == ["two pills"]
    assert {r.id: r.parent for r in home.regions()} == {"kitchen": None, "shelf-2": "kitchen"}
    (nap,) = home.routines("alice")
    assert (nap.days, nap.after, nap.constraints) == (["sat", "sun"], "13:00", ("no vacuuming",))
    assert [r.object for r in home.relationships("alice")] == ["green-mug"]
    for path, body, field in (
        ("/health", {"user": "alice", "key": "bp", "value": 1}, "key"),
        ("/health", {"user": "alice", "key": "note/x", "value": "call 06 12 34 56 78"}, "value"),
        ("/routines", {"routine": "r", "label": "R", "days": ["someday"]}, "days"),
        ("/regions", {"region": "Shelf 3", "label": "Shelf 3"}, "id"),
    ):
        refused = await api.post(path, json=body, headers=AUTH)
        assert refused.status_code == 422, refused.text
        assert field in (refused.json()["field"] or ""), refused.json()
    assert len(home.health("alice")) == 1
    assert len(home.regions()) == 2


async def test_maintain_needs_no_body(api: httpx.AsyncClient) -> None:
    """Both of its fields have defaults; a call without a body was a 422 (a new user)."""
    done = await api.post("/maintain", headers=AUTH)
    assert done.status_code == 200, done.text
    assert done.json() == {"changes": []}


def test_a_short_token_is_refused(peer: Peer) -> None:
    with pytest.raises(ValidationError) as caught:
        make_app(peer, "short")
    assert caught.value.field == "token"


@pytest.mark.parametrize(
    "left", [b"", b"\n", b"\0" * 44, b"short-token\n", b"\xff\xfe" * 22], ids=repr
)
def test_an_api_token_a_crash_left_unusable_is_made_anew_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left: bytes
) -> None:
    """Found in review: api.token was created, then written, with no fsync or rename; a crash
    between the two (or before the data reached the disk) left it empty or zeroed, and every
    later ``hearth run`` refused to start ("the API token needs at least 16 characters"),
    naming neither the file nor what to do.  Such a token authenticated nobody: it is
    replaced, whole, and the warning names the file."""
    path = tmp_path / TOKEN_FILE
    path.write_bytes(left)
    path.chmod(0o600)
    token = api_token(tmp_path)
    assert len(token) >= MIN_TOKEN
    assert token.isprintable()
    assert path.read_text() == token + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_FILE]  # nothing half-written beside
    warned = [r.getMessage() for r in caplog.records if r.name == "hearthsync.api.server"]
    assert len(warned) == 1
    assert f"{path} held no usable token" in warned[0]
    assert api_token(tmp_path) == token  # kept from then on
    assert len(caplog.records) == 1


def test_an_api_token_file_that_cannot_be_read_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).mkdir()
    with pytest.raises(StoreError, match=rf"{TOKEN_FILE}: Is a directory; fix it, or remove it"):
        api_token(tmp_path)


def test_a_new_api_token_is_written_whole_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    token = api_token(tmp_path)
    assert len(token) >= MIN_TOKEN
    assert (tmp_path / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_FILE]
    assert api_token(tmp_path) == token


def test_the_committed_openapi_document_is_the_one_the_code_derives() -> None:
    from pathlib import Path

    from hearthsync.api.openapi import text

    committed = Path(__file__).resolve().parents[2] / "docs" / "reference" / "openapi.json"
    assert committed.read_text() == text(), (
        "docs/reference/openapi.json is stale: python -m hearthsync.api.openapi > "
        "docs/reference/openapi.json"
    )


async def test_detailed_status_lists_what_hearth_status_prints(api: httpx.AsyncClient) -> None:
    plain = (await api.get("/status", headers=AUTH)).json()
    assert set(plain) == {"device", "device_id", "users", "documents", "corrupt"}
    detail = (await api.get("/status", params={"detail": "true"}, headers=AUTH)).json()
    assert detail["documents"] == plain["documents"] == len(detail["sizes"])
    sizes = {doc["doc_id"]: doc for doc in detail["sizes"]}
    assert sizes["user/alice/profile"]["scope"] == "core"
    assert sizes["user/alice/profile"]["records"] == 1
    assert all(doc["snapshot_bytes"] + doc["log_bytes"] > 0 for doc in detail["sizes"])
    assert detail["file_bytes"] > 0
    assert set(detail["vectors"]) == {f"{user}.history" for user in plain["users"]}


def test_a_robot_whose_api_does_not_answer_is_an_api_error() -> None:
    """A stopping robot, or a run.json that outlived its robot: a `HearthError` the command
    line reports in one line, not an httpx traceback."""
    from hearthsync.api.client import ApiError, RunningRobot

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    robot = RunningRobot(pid=1, base_url=f"http://127.0.0.1:{port}", token="0" * 32)
    with pytest.raises(ApiError, match="did not answer"):
        robot.call("GET", "/status")
