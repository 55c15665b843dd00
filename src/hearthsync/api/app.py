"""The local HTTP API: a robot stack in any language asks for a context and writes what happened.

    app = make_app(peer, token)          # an ASGI app; serve it on 127.0.0.1 only

Every route needs ``Authorization: Bearer <token>`` (compared in constant time).  Requests are
bounded (`MAX_BODY` bytes) and validated; every refusal is a 4xx JSON `Problem` naming what is
wrong and, when one is, the field.  The OpenAPI document is derived from the pydantic models in
`hearthsync.api.schemas` (``GET /openapi.json``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearthsync.api.metrics import Metrics
from hearthsync.api.schemas import (
    CalibrationWrite,
    ContextReply,
    ContextRequest,
    CorrectionWrite,
    EventWrite,
    ExplainRequest,
    Explanation,
    FeedbackWrite,
    ForgetRequest,
    Forgotten,
    HealthWrite,
    Maintained,
    MaintainRequest,
    PlacementWrite,
    PreferenceDelete,
    PreferenceWrite,
    Problem,
    ProfileWrite,
    RegionWrite,
    RelationWrite,
    RoutineWrite,
    Status,
    Users,
    UserWrite,
    problem,
)
from hearthsync.context import correct, feedback
from hearthsync.context.scopes import ScopeDeniedError
from hearthsync.errors import NotFoundError, ValidationError
from hearthsync.model.records import (
    Calibration,
    HealthRecord,
    InteractionEvent,
    Placement,
    Preference,
    Profile,
    Region,
    Relationship,
    Routine,
)
from hearthsync.peer import Peer

MAX_BODY = 65_536
MIN_TOKEN = 16
#: HTTP status of each error hearthsync raises on purpose
STATUS = {ValidationError: 422, NotFoundError: 404, ScopeDeniedError: 403}
_ERRORS = {401: Problem, 403: Problem, 404: Problem, 413: Problem, 422: Problem}
RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": m} for code, m in _ERRORS.items()}


def make_app(peer: Peer, token: str) -> FastAPI:
    """The API of ``peer``, for clients holding ``token`` (at least 16 characters).  Contexts
    follow the household's task policy in force (`Peer.policy`) and the robot's clock."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN:
        raise ValidationError(f"the API token needs at least {MIN_TOKEN} characters", field="token")
    metrics = Metrics()
    app = FastAPI(
        title="hearthsync",
        summary="The local API of one robot's memory",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(_bearer(token))],
        responses=RESPONSES,
    )
    _errors(app)
    app.add_middleware(_Counted, metrics=metrics)
    app.add_middleware(_Bounded)
    # outermost: no route, not even the schema, and no parser answers a caller without the
    # token (a malformed body was a 422 describing the parse, found in review); the route
    # dependency above stays, for the schema to say so and as a second lock
    app.add_middleware(_Authorized, token=token)
    _context_routes(app, peer, metrics)
    _write_routes(app, peer)
    _service_routes(app, peer, metrics)
    return app


# ---------------------------------------------------------------------------- routes


def _context_routes(app: FastAPI, peer: Peer, metrics: Metrics) -> None:
    @app.post("/context", response_model=ContextReply)
    async def context(body: ContextRequest) -> ContextReply:
        """Assemble the context for a user doing a task (see `hearthsync.context`)."""
        started = time.perf_counter()
        found = await peer.get_context(
            body.user, task=body.task, location=body.location, time=body.time,
            present=body.present, history_window=body.history_window, query=body.query,
            max_tokens=body.max_tokens,
        )  # fmt: skip
        metrics.context(time.perf_counter() - started)
        return ContextReply(context=found, prompt=found.to_prompt())

    @app.post("/explain", response_model=Explanation)
    async def explanation(body: ExplainRequest) -> Explanation:
        """Why a preference has the value it has now, in one sentence."""
        sentence = await peer.explain(
            body.user, body.key, time=body.time, location=body.location, present=body.present,
            task=body.task,
        )  # fmt: skip
        return Explanation(sentence=sentence)

    @app.post("/maintain", response_model=Maintained)
    async def maintained(body: MaintainRequest | None = None) -> Maintained:
        """Run the slow loop now: fold confirmations, promote, decay, flag drift (no body:
        the defaults)."""
        body = body or MaintainRequest()
        report = await peer.maintain(lookback=body.lookback, users=body.users)
        return Maintained(changes=[change.line() for change in report.changes])

    @app.post("/forget", response_model=Forgotten)
    async def forget(body: ForgetRequest) -> Forgotten:
        """Forget a user here and on every robot of the household (see hearthsync.forgetting);
        answered once nothing of theirs remains in this robot's files."""
        tombstone = await peer.forget(body.user)
        return Forgotten(user=tombstone.subject, device_id=tombstone.device, at=tombstone.at)


def _write_routes(app: FastAPI, peer: Peer) -> None:
    @app.post("/users", response_model=Profile, status_code=201)
    async def user(body: UserWrite) -> Profile:
        """Register a person in the household (registered already: change the fields given).
        A running robot holds its store: this is how another process adds someone to it."""
        return await peer.add_user(body.user, **body.given("user"))

    @app.post("/profile", response_model=Profile, status_code=201)
    async def profile(body: ProfileWrite) -> Profile:
        """Change a registered user's profile fields; the others keep their value."""
        return await peer.set_profile(body.user, **body.given("user"))

    @app.post("/calibration", response_model=Calibration, status_code=201)
    async def calibration(body: CalibrationWrite) -> Calibration:
        """Change how robots behave with a registered user (the fields given)."""
        return await peer.set_calibration(body.user, **body.given("user"))

    @app.post("/health", response_model=HealthRecord, status_code=201)
    async def health(body: HealthWrite) -> HealthRecord:
        """Store a health fact (the ``health`` scope: only tasks granted it read it)."""
        return await peer.set_health(body.user, body.key, body.value, note=body.note)

    @app.post("/regions", response_model=Region, status_code=201)
    async def region(body: RegionWrite) -> Region:
        """Name a place (its outline in ``frame``, its ``parent`` place)."""
        return await peer.set_region(body.region, body.label, **body.given("region", "label"))

    @app.post("/routines", response_model=Routine, status_code=201)
    async def routine(body: RoutineWrite) -> Routine:
        """Set a routine: its days, its window, what robots do or must not do meanwhile."""
        return await peer.set_routine(body.routine, body.label, **body.given("routine", "label"))

    @app.post("/relations", response_model=Relationship, status_code=201)
    async def relation(body: RelationWrite) -> Relationship:
        """Relate two people, or a person and a thing or a place."""
        return await peer.relate(body.subject, body.relation, body.object, note=body.note)

    @app.get("/users", response_model=Users)
    async def users() -> Users:
        """The household's users (the forgotten left out)."""
        return Users(users=list(peer.users()))

    @app.post("/preferences", response_model=Preference, status_code=201)
    async def preference(body: PreferenceWrite) -> Preference:
        """Store a preference; durable when answered."""
        return await peer.set_preference(
            body.user, body.key, body.value, source=body.source, confidence=body.confidence,
            condition=body.condition, evidence=body.evidence, note=body.note,
        )  # fmt: skip

    @app.post("/preferences/delete", response_model=Preference)
    async def unset(body: PreferenceDelete) -> Preference:
        """Delete a preference (the person took it back): answered with its tombstone, durable
        when answered, and synced like any write; 404 if there is none under that condition.
        A POST with a body, not a DELETE: many clients and proxies drop a DELETE's body."""
        return await peer.delete_preference(body.user, body.key, body.condition)

    @app.post("/corrections", response_model=Preference, status_code=201)
    async def correction(body: CorrectionWrite) -> Preference:
        """Record a correction and apply it at once."""
        return await correct(
            peer, body.user, body.key, body.value, served=body.served,
            condition=body.condition, text=body.text, context=body.context,
        )  # fmt: skip

    @app.post("/feedback", response_model=InteractionEvent, status_code=201)
    async def implicit(body: FeedbackWrite) -> InteractionEvent:
        """Record implicit feedback about a served value."""
        return await feedback(
            peer, body.user, body.key, body.value, body.outcome, text=body.text,
            context=body.context,
        )  # fmt: skip

    @app.post("/events", response_model=InteractionEvent, status_code=201)
    async def event(body: EventWrite) -> InteractionEvent:
        """Append an event to a user's history."""
        return await peer.record_event(
            body.user, body.type, body.domain, text=body.text, payload=body.payload,
            context=body.context, ts=body.ts,
        )  # fmt: skip

    @app.post("/placements", response_model=Placement, status_code=201)
    async def placement(body: PlacementWrite) -> Placement:
        """Record where an object belongs or was seen (write moves, not sensor readings)."""
        return await peer.place(
            body.object, body.label, region=body.region, pose=body.pose, owner=body.owner,
            kind=body.kind,
        )  # fmt: skip


def _service_routes(app: FastAPI, peer: Peer, metrics: Metrics) -> None:
    @app.get("/status", response_model=Status, response_model_exclude_none=True)
    async def status(detail: bool = False) -> Status:
        """Who this robot is, whom it serves, how many documents it holds; with ``detail``,
        also each document's sizes and each vector index's count (what `hearth status`
        prints), read after the writes queued so far are durable."""
        if detail:
            return Status.of(await peer.status())
        return Status(
            device=peer.device,
            device_id=peer.device_id,
            users=list(peer.users()),
            documents=len(peer.document_ids()),
            corrupt=peer.corrupt,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Counters in the Prometheus text format."""
        text = metrics.render(len(peer.users()), len(peer.document_ids()))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------------------- guards


#: declared as a security scheme, so the OpenAPI document says how to authenticate and
#: generated clients send the token (it said nothing: found by a new user)
_SCHEME = HTTPBearer(auto_error=False, description="the token in PATH/api.token")


def _bearer(token: str) -> Callable[..., Awaitable[None]]:
    expected = token.encode()

    async def require(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)],
    ) -> None:
        given = credentials.credentials if credentials is not None else ""
        # compare_digest takes as long whatever the bytes: no timing hint about the token
        if credentials is None or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return require


def _errors(app: FastAPI) -> None:
    async def ours(_: Request, exc: Exception) -> JSONResponse:
        field = getattr(exc, "field", None) or getattr(exc, "scope", None)
        return JSONResponse(problem(str(exc), field), status_code=_status(exc))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        if first["type"] == "json_invalid":  # its location is a character offset, not a field
            reason = first.get("ctx", {}).get("error", "")
            return JSONResponse(problem(f"the body is not valid JSON: {reason}"), 422)
        if tuple(first["loc"]) == ("body",) and isinstance(first.get("input"), bytes):
            # FastAPI parses JSON only under a JSON type; curl -d sends a form's
            message = "the body must be JSON, sent with 'Content-Type: application/json'"
            return JSONResponse(problem(message), 422)
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        if first["type"] == "recursion_depth_exceeded":
            # its location spells the JSON value's union tags at every level (value.list.0.
            # list.0...): kilobytes naming no field of the request; the field is its first part
            where = where.partition(".")[0]
            return JSONResponse(problem(f"{where}: nested too deeply", where), 422)
        return JSONResponse(problem(f"{where or 'body'}: {first['msg']}", where or None), 422)

    async def http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's 400, listed nowhere
            return JSONResponse(problem("the body is not valid JSON: nested too deeply"), 422)
        return JSONResponse(problem(str(exc.detail)), exc.status_code, headers=exc.headers)

    for kind in STATUS:
        app.add_exception_handler(kind, ours)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)


def _status(exc: Exception) -> int:
    return next(code for kind, code in STATUS.items() if isinstance(exc, kind))


class _Authorized:
    """Answer 401 to any HTTP request without the bearer token (ASGI middleware), before
    its body is read."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            # compare_digest takes as long whatever the bytes: no timing hint about the token
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given, self._expected):
                response = JSONResponse(
                    problem("a valid bearer token is required"), 401, {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Bounded:
    """Refuse bodies over `MAX_BODY` bytes, declared or streamed (ASGI middleware).

    The body is read here, at most `MAX_BODY` bytes of it, and handed on whole: a streamed body
    that turns out too long is refused before the application sees any of it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        try:
            body = (
                await _read(receive) if declared.isdigit() and int(declared) <= MAX_BODY else None
            )
        except _Gone:  # a request never finished is not carried out, and nobody is there to answer
            return
        if body is None:
            response = JSONResponse(problem(f"the body is larger than {MAX_BODY:,} bytes"), 413)
            await response(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # the disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class _Gone(Exception):
    """The client went away before the end of its request's body."""


async def _read(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` once it exceeds `MAX_BODY`; `_Gone` if the client
    goes away before its end (what came was carried out: a whole JSON object followed by
    blanks it never sent was a write the client never finished, found in review)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class _Counted:
    """Count every answer by route template and status, for ``/metrics``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route(scope)

        async def noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.request(route, int(message["status"]))
            await send(message)

        await self.app(scope, receive, noted)


def _route(scope: Scope) -> str:
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"
