"""The page's share of the traces (kernel/tracing.py): one SERVER span per page request,
named by its route (`GET /accounts/{account_id}`, never the ids themselves), made current
while the request is handled, so the page's calls to the services are its CLIENT children
(the channels' interceptors, `kernel.grpc_server.client_channel`) and its log lines carry
its trace id (`kernel.logs.TraceIds`). A `traceparent` header from a proxy in front of the
page is continued. Installed by `create_app` only while tracing is on; static files are
not traced."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.kernel import tracing


def route_of(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route `scope` goes to ('' when none does)."""
    for route in routes:
        if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
            return route.path
    return ""


class RequestSpans:
    """A SERVER span around every HTTP request of the page but its static files."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        route = route_of(self._routes, scope)
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() in (b"traceparent", b"tracestate")
        }
        attributes = {"http.request.method": method, "url.scheme": str(scope.get("scheme", ""))}
        if route:
            attributes["http.route"] = route
        tracer = trace.get_tracer(tracing.TRACER)
        with tracer.start_as_current_span(
            f"{method} {route}" if route else method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:

            async def answered(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:  # the page's failure; a 4xx is the caller's
                        span.set_status(Status(StatusCode.ERROR, str(status)))
                await send(message)

            await self.app(scope, receive, answered)
