"""The end users' web page as an ASGI app (Starlette): the routes, the headers every
answer carries, and how refusals and failed calls are shown. `create_app` takes the
services it calls; `meterline.web.server` runs it over HTTPS. With tracing on, every
request is a span (web/traces.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.kernel import tracing
from meterline.web import auth, live, routes
from meterline.web.auth import current_session
from meterline.web.portal import (
    HERE,
    TEMPLATES,
    FormRefused,
    OtherAccount,
    Portal,
    SignInRequired,
)
from meterline.web.traces import RequestSpans

log = logging.getLogger(__name__)

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the page's security headers to every answer (a handler's own CSP wins), and
    no-store to everything but the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.extend(h for h in _HEADERS if h[0] not in names)
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_POLICY.encode()))
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if "text/html" not in request.headers.get("accept", "") or request.method != "GET":
        return JSONResponse({"error": message}, status_code=status)
    session = current_session(request)
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {
            "session": session,
            "csrf_token": session.csrf_token if session else "",
            "title": title,
            "message": message,
            "page": "",
        },
        status_code=status,
    )


async def _sign_in_required(request: Request, _: Exception) -> Response:
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/sign-in", status_code=303)
    return JSONResponse({"error": "Sign in first."}, status_code=401)


async def _other_account(request: Request, _: Exception) -> Response:
    return _error_page(
        request, 403, "Not your account", "This page belongs to another account than yours."
    )


async def _form_refused(request: Request, _: Exception) -> Response:
    return JSONResponse(
        {
            "error": "This form was not sent from this page (its security token is missing or "
            "wrong); reload the page and try again."
        },
        status_code=403,
    )


async def _call_failed(request: Request, error: Exception) -> Response:
    assert isinstance(error, grpc.aio.AioRpcError)
    code = error.code()
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
        return _error_page(request, 404, "Not found", "There is no such page on your account.")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return await _sign_in_required(request, error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        # What a page passes on that a person can change is its address (a page token of
        # the history or the bills): one cut short or edited is refused by the service.
        return _error_page(
            request,
            400,
            "Not understood",
            "This page's address is not one the page gave out (cut short or changed?); "
            "start again from your account.",
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _error_page(
            request, 503, "Try again shortly", "The billing service cannot be reached just now."
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return _error_page(
            request, 501, "Not available", "The billing service does not offer this yet."
        )
    log.warning("a call of the web page failed: %s %s", code.name, error.details())
    return _error_page(request, 502, "Something went wrong", "The billing service failed.")


def create_app(portal: Portal) -> Starlette:
    """The page over `portal`'s services and sessions (closed when the app shuts down)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await portal.services.close()

    account = "/accounts/{account_id}"
    app = Starlette(
        routes=[
            Route("/", routes.home),
            Route("/sign-in", auth.sign_in_form, methods=["GET"]),
            Route("/sign-in", auth.sign_in, methods=["POST"]),
            Route("/sign-out", auth.sign_out, methods=["POST"]),
            Route(account, routes.now),
            Route(f"{account}/events", live.events),
            Route(f"{account}/history", routes.history),
            Route(f"{account}/bills", routes.bills),
            Route(account + "/bills/{invoice_id}.pdf", routes.bill_pdf),
            Route(account + "/bills/{invoice_id}", routes.bill_html),
            Route(f"{account}/top-up", routes.top_up, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={
            SignInRequired: _sign_in_required,
            OtherAccount: _other_account,
            FormRefused: _form_refused,
            grpc.aio.AioRpcError: _call_failed,
        },
        lifespan=lifespan,
    )
    app.state.portal = portal
    app.add_middleware(SecurityHeaders)
    if tracing.enabled():  # outermost: the span covers every answer, refusals included
        app.add_middleware(RequestSpans, routes=app.routes)
    return app
