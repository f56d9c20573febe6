"""The web page's traces, against the running stack, with an in-memory exporter: each
page request is a SERVER span named by its route, the page's calls to the billing manager
are its CLIENT children (their context sent along), and a log line written while the
request is handled carries the request's trace id. Off, the page makes no spans; the
process turns tracing on from METERLINE_TRACES."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import select
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette

from meterline.kernel import tracing
from meterline.kernel.config import Settings
from meterline.kernel.logs import TraceIds
from meterline.kernel.processes import free_port
from meterline.web.portal import Portal
from meterline.web.server import build_app
from meterline.web.sessions import COOKIE, SIGN_IN_COOKIE
from tests.support import tls
from tests.support.clients import Stubs, device_credential, new_account
from tests.support.spans import collected_spans
from tests.support.stack import InProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Headers = list[tuple[bytes, bytes]]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    with collected_spans() as spans:
        yield spans


class Records(logging.Handler):
    """The log records of the page, with the ids `kernel.logs.TraceIds` puts on them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(TraceIds())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def page_logs() -> Iterator[Records]:
    logger = logging.getLogger("meterline.web")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def ask(
    app: Starlette, method: str, path: str, headers: Headers, body: bytes = b""
) -> tuple[int, Headers]:
    """One HTTP request straight to the ASGI app: its status and headers."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 443),
    }
    waiting = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if waiting:
            return waiting.pop()
        await asyncio.Event().wait()  # the client stays until the answer is sent
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    return start["status"], list(start["headers"])


def cookie(headers: Headers, name: str) -> str:
    for key, value in headers:
        if key == b"set-cookie" and value.startswith(f"{name}=".encode()):
            return value.split(b";", 1)[0].split(b"=", 1)[1].decode()
    raise AssertionError(f"no {name} cookie in {headers}")


def of_kind(spans: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    (found,) = [s for s in spans if s.name == name and s.kind is kind]
    return found


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    assert child.context is not None
    return bool(
        child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def _page(stack: InProcessStack) -> Starlette:
    settings = Settings(endpoints=stack.endpoints, tls=tls.server_settings())
    return build_app(settings, settings.tls)


async def test_page_requests_are_spans_with_their_calls_and_logs_inside(
    stack: InProcessStack, api: Stubs, exporter: InMemorySpanExporter, page_logs: Records
) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    user, password = await device_credential(api.auth, account_id)
    app = _page(stack)
    portal: Portal = app.state.portal
    try:
        form = f"csrf_token=nonce-1&user={user}&password={password}".encode()
        status, answer = await ask(
            app,
            "POST",
            "/sign-in",
            [
                (b"cookie", f"{SIGN_IN_COOKIE}=nonce-1".encode()),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
            form,
        )
        assert status == 303
        session = cookie(answer, COOKIE)
        status, _ = await ask(
            app, "GET", f"/accounts/{account_id}", [(b"cookie", f"{COOKIE}={session}".encode())]
        )
        assert status == 200
    finally:
        await portal.services.close()

    spans = exporter.get_finished_spans()
    sign_in = of_kind(spans, "POST /sign-in", SpanKind.SERVER)
    issue = of_kind(spans, "meterline.auth.v1.AuthService/IssueToken", SpanKind.CLIENT)
    assert child_of(issue, sign_in)
    # A proxy's traceparent is continued.
    assert sign_in.context is not None
    assert trace.format_trace_id(sign_in.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"

    now = of_kind(spans, "GET /accounts/{account_id}", SpanKind.SERVER)
    get_account = of_kind(spans, "meterline.billing.v1.BillingManager/GetAccount", SpanKind.CLIENT)
    assert child_of(get_account, now)
    assert get_account.attributes is not None
    assert get_account.attributes["rpc.grpc.status_code"] == 0
    assert now.attributes is not None
    assert now.attributes["http.route"] == "/accounts/{account_id}"
    assert now.attributes["http.response.status_code"] == 200
    assert account_id not in now.name  # the route names the page, not the account

    (signed_in,) = [r for r in page_logs.records if "signed in" in r.getMessage()]
    assert getattr(signed_in, "trace_id", "") == "0af7651916cd43dd8448eb211c80319c"


async def test_off_the_page_makes_no_spans(
    stack: InProcessStack, exporter: InMemorySpanExporter
) -> None:
    tracing.uninstall()  # off, as by default: the page built now traces nothing
    app = _page(stack)
    try:
        status, _ = await ask(app, "GET", "/sign-in", [])
    finally:
        await app.state.portal.services.close()
    assert status == 200
    assert exporter.get_finished_spans() == ()


def test_meterline_traces_turns_the_page_process_tracing_on(stack: InProcessStack) -> None:
    """`python -m meterline.web` with METERLINE_TRACES=console: a request is a span line on
    stdout (the console exporter's)."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        **tls.tls_environment(),
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        "METERLINE_WEB_ADDRESS": address,
        "METERLINE_TRACES": "console",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline.web"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        out = _read_until(process, b"web page serving on", 30)
        host, port = address.rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(tls.dev_certificates().ca))
        connection = http.client.HTTPSConnection(host, int(port), timeout=5, context=context)
        try:
            connection.request("GET", "/sign-in")
            assert connection.getresponse().status == 200
        finally:
            connection.close()
        out += _read_until(process, b'"name": "GET /sign-in"', 10)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert b'"kind": "SpanKind.SERVER"' in out
    assert b'"service.name": "meterline-web"' in out


def _read_until(process: subprocess.Popen[bytes], wanted: bytes, seconds: float) -> bytes:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + seconds
    out = b""
    while wanted not in out:
        assert time.monotonic() < deadline, f"{wanted!r} not on stdout: {out!r}"
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed before {wanted!r}: {out!r}"
            out += chunk
        else:
            assert process.poll() is None, f"the page exited with {process.returncode}"
    return out
