"""`create_app(settings)`: the FastAPI application, built from settings with no global state.

The lifespan returns at once, so the port opens within seconds: the models load (unless the
caller passed them), `auto` tunes and every task warms in the background (`ServiceState.boot`).
Meanwhile `/healthz` is 200, `/readyz` is 503 with what is happening (`service.startup`) and
`POST /restore/*` is 503 `not_ready` with `Retry-After`. A start-up that fails calls
`on_startup_failure` (`python -m service` exits non-zero) and turns `/healthz` 503. On shutdown the
service drains: new requests are refused while queued and running ones finish, within
`DIFFIR_DRAIN_SECONDS`.

`/docs` (Swagger UI) loads its scripts and styles from this server (the assets ship in the
`fastapi-offline` package), so it works on an air-gapped cluster. Cross-origin browser calls are
allowed only for the origins in `DIFFIR_CORS_ORIGINS` (none by default).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError
from service.http import routes
from service.http.restore import error_response
from service.http.restore import router as restore_router
from service.logs import configure_logging, log_event
from service.metrics import Metrics
from service.runtime.base import Backend
from service.settings import Settings
from service.state import ServiceState

WEB_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
_GOOD_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Probes and scrapes arrive every few seconds: their access lines are debug, everything else info.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DOCS_ASSETS = "/docs/assets"
# What a cross-origin front end may send and read (preflight answers; off unless DIFFIR_CORS_ORIGINS is set).
CORS_REQUEST_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "X-Request-ID")
CORS_EXPOSED_HEADERS = ("X-Request-ID", "Server-Timing", "X-Batch-Size", "Retry-After")


class RequestContext:
    """Pure ASGI middleware: request id in, `X-Request-ID` out, one JSON access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _GOOD_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = scope["state"].get("log_fields", {})
            quiet = scope.get("path") in QUIET_PATHS  # a 503 from /readyz while warming up is the probe's job
            log_event(
                "request",
                logging.DEBUG if quiet else logging.INFO,
                request_id=request_id,
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )


# The page loads only its own files (no inline scripts or styles); images are blob:/data: URLs it makes itself.
WEB_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
WEB_HEADERS = (
    (b"cache-control", b"no-cache"),
    (b"content-security-policy", WEB_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class WebPageHeaders:
    """Wraps the static web page: revalidate on every load (`no-cache`) and a strict Content-Security-Policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in WEB_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = headers + list(WEB_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405 (RFC 9110): every method some route takes on this path. Starlette names
    only the first matching route's (GET without its HEAD twin), and the web page's files none."""
    methods = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            continue  # mounted static files: GET and HEAD, the default below
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            if route.matches({**request.scope, "method": method})[0] == Match.FULL:
                methods.add(method)
    return ", ".join(sorted(methods)) if methods else "GET, HEAD"  # the web page's static files


def _install_error_handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str | None:
        return getattr(request.state, "request_id", None)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, rid(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
        return error_response(ServiceError("bad_parameter", "; ".join(parts) or "invalid parameters"), rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None:
            body = {"code": f"http_{exc.status_code}", "message": str(exc.detail), "request_id": rid(request)}
            return JSONResponse(body, status_code=exc.status_code)
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else {}
        return error_response(ServiceError(code, str(exc.detail), headers), rid(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_event("unhandled error", logging.ERROR, request_id=rid(request), error=repr(exc))
        return error_response(ServiceError("internal_error", "unexpected server error"), rid(request))


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    backends: dict[str, Backend] | None = None,
    on_startup_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app; `backends` (already loaded) skips loading; `on_startup_failure(error)` is called when
    loading or warming fails (the app itself stays up, unhealthy, for an orchestrator to restart)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)
    metrics = Metrics(registry or CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics, backends)
        app.state.service = state
        state.start()

        async def boot() -> None:
            if not await state.boot() and on_startup_failure is not None:
                on_startup_failure(state.startup.error or "start-up failed")

        warm = asyncio.create_task(boot())
        metrics_server = None
        if settings.metrics_port:
            from prometheus_client import start_http_server

            metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
        log_event("started", metrics_port=settings.metrics_port)
        try:
            yield
        finally:
            state.set_draining()
            if not warm.done():
                warm.cancel()
            await asyncio.gather(warm, return_exceptions=True)
            await state.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            log_event("stopped")

    app: FastAPI = FastAPIOffline(
        title="diffir-serve",
        summary="DiffIR image restoration with dynamic batching",
        version="0.1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        redoc_url=None,  # ReDoc's page fetches its logo from a CDN; Swagger UI at /docs is fully local
        redirect_slashes=False,  # a 307 would build its Location from the client's Host header
    )
    app.state.settings = settings
    app.state.metrics = metrics  # the connection layer counts its refusals here too (`service.http.server`)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_REQUEST_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
        )
    app.add_middleware(RequestContext)  # outermost: preflights get a request id and an access line too
    _install_error_handlers(app)
    app.include_router(restore_router)
    app.include_router(routes.router)
    if not settings.metrics_port:
        route = routes.read_route(app, "/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
        route(routes.metrics)
    if WEB_DIR.is_dir():
        # The web page is the router's fallback rather than a mount at "/", so API paths keep their
        # precise answers (405 for a wrong method) and only unmatched paths look for a static file.
        app.router.default = WebPageHeaders(StaticFiles(directory=WEB_DIR, html=True))
    return app
