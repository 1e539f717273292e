"""The daemon's HTTP API: ingestion (Retain's and Segment's protocol), unsubscribe, health,
metrics, OpenAPI. `make_app(ApiContext(...))` returns the ASGI app the loop serves.

FastAPI (on Starlette) because it gives the OpenAPI document the issue asks for, from the
routes themselves, and runs in the daemon's own asyncio loop under uvicorn; bodies are read
from the raw stream rather than through pydantic models, so the size bound applies before
anything is buffered or decompressed (engine/daemon/body.py) and every item is checked by
sync's one definition of a row (engine/sync/rows.py) instead of a second schema. Database work
runs in a worker thread: the event loop keeps serving and dispatching meanwhile.

Logs carry counts and endpoints, never tokens, bodies or addresses; uvicorn's access log (which
would print unsubscribe tokens from query strings) is off in `server_config`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from engine.clock import utcnow
from engine.config import Settings
from engine.daemon.body import BodyTooLarge, NotJson, parse_json, read_body
from engine.daemon.metrics import CONTENT_TYPE, Metrics
from engine.daemon.openapi import (
    CUSTOMERS_BODY,
    EVENTS_BODY,
    INGEST_RESPONSES,
    SECURITY_SCHEMES,
    SEGMENT_BATCH_BODY,
    SEGMENT_MESSAGE_BODY,
    SEGMENT_RESPONSES,
)
from engine.daemon.unsubscribe import bad_token_page, confirmation_page, done_page, token_problem
from engine.sync.live import Ingested, ingest_items
from engine.sync.segment import Rejected, map_messages

log = logging.getLogger("retain.daemon.api")

MAX_BODY = 1_000_000
"""`/v1/events`, `/v1/customers`: bytes of JSON per request (after gzip), about 2,000 events."""
SEGMENT_BATCH_LIMIT = 500 * 1024
"""Segment's limits (its HTTP tracking API): 500 KB a batch, 32 KB a message."""
SEGMENT_MESSAGE_LIMIT = 32 * 1024
SHORT_PATHS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group",
               "a": "alias", "b": "batch"}
"""The one-letter paths Segment's browser library (analytics.js) posts to."""


def _always_ready() -> bool:
    return True


def _ignore(_customer_ids: set[str]) -> None:
    """No loop attached (tests of the API alone)."""


@dataclass
class ApiContext:
    """What the app needs from the daemon: one object, so the loop wires it in one place.

    `ready()` says whether the playbooks are loaded; `on_ingested(customer_ids)` is called (and
    awaited when it returns an awaitable) after every request that wrote something, with the
    customers whose events or fields changed: the loop evaluates the event-triggered playbooks
    for exactly them.
    """

    engine: sa.Engine
    settings: Settings
    ready: Callable[[], bool] = _always_ready
    on_ingested: Callable[[set[str]], Any] = _ignore
    metrics: Metrics = None  # type: ignore[assignment]  # None: one made with the engine

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = Metrics(self.engine)


def make_app(context: ApiContext) -> FastAPI:
    """The ASGI app: every route of docs/DAEMON.md, "HTTP API"."""
    app = FastAPI(title="Retain", summary="Retain daemon API", version="1",
                  docs_url=None, redoc_url=None)
    app.state.context = context
    # browsers (analytics.js) post from the shop's pages, another origin; no credentials
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST"],
                       allow_headers=["*"], max_age=86400)
    _errors(app)
    _ingest_routes(app, context)
    _segment_routes(app, context)
    _unsubscribe_routes(app, context)
    _health_routes(app, context)
    app.openapi_schema = None
    original = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(BodyTooLarge)
    async def too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, "too_large", str(exc))

    @app.exception_handler(NotJson)
    async def not_json(_request: Request, exc: NotJson) -> JSONResponse:
        return _error(400, "invalid_request", str(exc))

    @app.exception_handler(sa.exc.OperationalError)
    async def database_down(_request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return JSONResponse({"error": "database unavailable, try again"}, status_code=503,
                            headers={"Retry-After": "5"})


# --- authentication -------------------------------------------------------------------------------


def _token(settings: Settings) -> bytes | None:
    secret = settings.api_token
    return secret.get_secret_value().encode() if secret is not None else None


def bearer_ok(request: Request, settings: Settings) -> bool:
    """`Authorization: Bearer <RETAIN_API_TOKEN>`, compared in constant time; no token set:
    nobody gets in (the API is never open by default)."""
    expected = _token(settings)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if expected is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected)


def basic_ok(request: Request, settings: Settings) -> bool:
    """HTTP Basic with the token as user name and an empty password (Segment's write key)."""
    expected = _token(settings)
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if expected is None or scheme.lower() != "basic":
        return False
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(user, expected) and colon == b":" and not password


def write_key_ok(value: Any, settings: Settings) -> bool:
    """The write key sent in the body (`writeKey`), as analytics.js and raw HTTP callers of
    Segment's API do instead of Basic."""
    expected = _token(settings)
    key = value.get("writeKey") if isinstance(value, dict) else None
    return expected is not None and isinstance(key, str) and \
        hmac.compare_digest(key.encode("utf-8"), expected)


def _unauthorized(scheme: str) -> JSONResponse:
    return _error(401, "unauthorized", "missing or wrong API token (RETAIN_API_TOKEN)",
                  {"WWW-Authenticate": f'{scheme} realm="retain"'})


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """An error body with `code` and `message`, which Segment's SDKs read to report it."""
    return JSONResponse({"error": message, "code": code, "message": message},
                        status_code=status, headers=headers)


# --- Retain's own ingestion -----------------------------------------------------------------------


def _ingest_routes(app: FastAPI, context: ApiContext) -> None:
    async def ingest(request: Request, kind: str) -> JSONResponse:
        if not bearer_ok(request, context.settings):
            return _unauthorized("Bearer")
        value = parse_json(await read_body(request.stream(),
                                           request.headers.get("content-encoding"), MAX_BODY))
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            return JSONResponse({"accepted": 0, "rejected": [{
                "index": None, "field": None,
                "message": "expected a JSON object or a list of objects"}]}, status_code=422)
        items = list(enumerate(value))
        result = await _ingest(context, request.url.path, items if kind == "customers" else [],
                               items if kind == "events" else [])
        body = result.as_dict()
        if not result.rejected:
            return JSONResponse(body)
        body["detail"] = (f"{result.accepted} item(s) kept; the {len(body['rejected'])} "
                          "problem(s) listed are not")
        return JSONResponse(body, status_code=422)

    @app.post("/v1/events", tags=["ingest"], openapi_extra=EVENTS_BODY,
              responses=INGEST_RESPONSES)
    async def post_events(request: Request) -> JSONResponse:
        """Events, one object or a list, in the shape of an events file (docs/DATA.md)."""
        return await ingest(request, "events")

    @app.post("/v1/customers", tags=["ingest"], openapi_extra=CUSTOMERS_BODY,
              responses=INGEST_RESPONSES)
    async def post_customers(request: Request) -> JSONResponse:
        """Customers, one object or a list, in the shape of a customers file (docs/DATA.md)."""
        return await ingest(request, "customers")


async def _ingest(context: ApiContext, endpoint: str, customers: list[tuple[int, Any]],
                  events: list[tuple[int, Any]], rejected: list[Rejected] | None = None,
                  ) -> Ingested:
    """Write in a worker thread, count, tell the loop whose data changed."""
    result = await run_in_threadpool(ingest_items, context.engine, customers, events)
    result.rejected.extend(rejected or [])
    metrics = context.metrics
    if result.events_inserted:
        metrics.events_ingested.labels(source=endpoint).inc(result.events_inserted)
    if result.rejected:
        metrics.items_rejected.labels(endpoint=endpoint).inc(len(result.rejected))
    log.debug("%s: %d accepted, %d rejected", endpoint, result.accepted, len(result.rejected))
    if result.customer_ids:
        outcome = context.on_ingested(set(result.customer_ids))
        if inspect.isawaitable(outcome):
            await outcome
    return result


# --- Segment's HTTP tracking API ------------------------------------------------------------------


def _segment_routes(app: FastAPI, context: ApiContext) -> None:
    async def segment(request: Request, kind: str) -> JSONResponse:
        basic = basic_ok(request, context.settings)
        limit = SEGMENT_BATCH_LIMIT if kind == "batch" else SEGMENT_MESSAGE_LIMIT
        try:
            value = parse_json(await read_body(request.stream(),
                                               request.headers.get("content-encoding"), limit))
        except NotJson:
            if not basic:
                return _unauthorized("Basic")
            raise
        if not basic and not write_key_ok(value, context.settings):
            return _unauthorized("Basic")
        messages, rejected = _messages(value, kind)
        settings = context.settings.segment
        mapped = map_messages(messages, settings.events, settings.amount, utcnow())
        result = await _ingest(context, request.url.path, mapped.customers, mapped.events,
                               [*rejected, *mapped.rejected])
        return JSONResponse({"success": True, **result.as_dict(),
                             "skipped_anonymous": mapped.anonymous, "ignored": mapped.ignored})

    def single(kind: str, doc: str) -> None:
        """`POST /v1/<kind>`: one message of that type (SDKs that do not batch send these)."""
        async def route(request: Request) -> JSONResponse:
            return await segment(request, kind)

        route.__doc__ = doc
        app.post(f"/v1/{kind}", tags=["segment"], openapi_extra=SEGMENT_MESSAGE_BODY,
                 responses=SEGMENT_RESPONSES, name=kind)(route)

    for short, kind in SHORT_PATHS.items():  # analytics.js posts to /v1/t, /v1/i, ... /v1/b
        async def aliased(request: Request, kind: str = kind) -> JSONResponse:
            return await segment(request, kind)

        app.post(f"/v1/{short}", include_in_schema=False, name=f"segment-{short}")(aliased)

    single("track", "Segment `track`: one event.")
    single("identify", "Segment `identify`: one customer's traits.")
    single("page", "Segment `page`: an event of type `page`.")
    single("screen", "Segment `screen`: an event of type `screen`.")
    single("group", "Segment `group`: accepted and ignored.")
    single("alias", "Segment `alias`: accepted and ignored.")

    @app.post("/v1/batch", tags=["segment"], openapi_extra=SEGMENT_BATCH_BODY,
              responses=SEGMENT_RESPONSES)
    async def batch(request: Request) -> JSONResponse:
        """Segment `batch`: messages of any type, what the SDKs send."""
        return await segment(request, "batch")


def _messages(value: Any, kind: str) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    """The messages of a body with their indexes; a batch's messages above Segment's 32 KB are
    rejected alone, the others kept."""
    if kind != "batch":
        return [(0, {**value, "type": kind} if isinstance(value, dict) else value)], []
    messages = value.get("batch") if isinstance(value, dict) else None
    if not isinstance(messages, list):
        return [], [Rejected(0, "batch", "expected an object with a list `batch`")]
    kept: list[tuple[int, Any]] = []
    rejected = []
    for index, message in enumerate(messages):
        if len(_json_size(message)) > SEGMENT_MESSAGE_LIMIT:
            rejected.append(Rejected(index, None, f"message larger than {SEGMENT_MESSAGE_LIMIT}"
                                     " bytes (Segment's limit)"))
        else:
            kept.append((index, message))
    return kept, rejected


def _json_size(message: Any) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


# --- unsubscribe ----------------------------------------------------------------------------------


def _unsubscribe_routes(app: FastAPI, context: ApiContext) -> None:
    @app.get("/unsubscribe", tags=["consent"], response_class=HTMLResponse,
             responses={400: {"description": "no token, or a forged or altered one"}})
    async def unsubscribe_page(token: str | None = None) -> HTMLResponse:
        """A confirmation page whose button POSTs; a GET alone never unsubscribes."""
        problem = await run_in_threadpool(token_problem, context.engine, token,
                                          context.settings, False)
        if problem is not None:
            return HTMLResponse(bad_token_page(problem), status_code=400)
        return HTMLResponse(confirmation_page(token or ""))

    @app.post("/unsubscribe", tags=["consent"], response_class=HTMLResponse,
              responses={400: {"description": "no token, or a forged or altered one: nothing "
                                              "changed"}})
    async def unsubscribe(token: str | None = None) -> HTMLResponse:
        """Unsubscribe the token's address (RFC 8058 one-click, and the page's button)."""
        problem = await run_in_threadpool(token_problem, context.engine, token,
                                          context.settings, True)
        if problem is not None:
            return HTMLResponse(bad_token_page(problem), status_code=400)
        log.info("unsubscribe applied")
        return HTMLResponse(done_page())


# --- health and metrics ---------------------------------------------------------------------------


def _health_routes(app: FastAPI, context: ApiContext) -> None:
    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """The process answers (no database involved: a restart would not help it)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Ready for traffic: the database answers and the playbooks are loaded."""
        database = await run_in_threadpool(_database_answers, context.engine)
        playbooks = bool(context.ready())
        status = 200 if database and playbooks else 503
        return JSONResponse({"status": "ready" if status == 200 else "not ready",
                             "database": database, "playbooks": playbooks}, status_code=status)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format; outbox depth and oldest due age read now."""
        body = await run_in_threadpool(context.metrics.scrape)
        return Response(body, media_type=CONTENT_TYPE)


def _database_answers(engine: sa.Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError:
        return False
    return True


def server_config(app: FastAPI, host: str, port: int) -> Any:
    """uvicorn's Config for this app: no access log (query strings hold unsubscribe tokens)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None,
                          lifespan="off", server_header=False)
