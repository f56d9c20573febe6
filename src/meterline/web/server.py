"""Running the page: `meterline web`, `python -m meterline.web`, and `meterline up` beside
the services. It serves HTTPS with the services' own certificate and calls the services
as a client over TLS, trusting the same authority: METERLINE_TLS_* when set, else the
development certificates `meterline up` made in DATA_DIR/tls."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from meterline.kernel.config import ConfigError, Settings, TlsSettings, load_settings
from meterline.kernel.dev_certificates import DevCertificates
from meterline.kernel.logs import configure_logging
from meterline.kernel.tls import NO_CERTIFICATE
from meterline.kernel.tracing import configure_tracing
from meterline.web.app import create_app
from meterline.web.portal import Portal
from meterline.web.services import PortalServices
from meterline.web.sessions import PortalSessions

log = logging.getLogger(__name__)
TLS_DIR = "tls"


def web_tls(settings: Settings) -> TlsSettings:
    """The page's TLS: the configured one, or the development set of the stack in the data
    folder; ConfigError with what to do when there is neither."""
    if settings.tls.configured:
        if not settings.tls.plaintext and settings.tls.cert_file is None:
            raise ConfigError(NO_CERTIFICATE)
        return settings.tls
    made = DevCertificates(settings.data_dir / TLS_DIR)
    if len(made.existing()) == len(made.files):
        return TlsSettings(cert_file=made.server_cert, key_file=made.server_key, ca_file=made.ca)
    raise ConfigError(NO_CERTIFICATE)


def build_app(settings: Settings, tls: TlsSettings) -> Starlette:
    portal = Portal(
        services=PortalServices(settings.endpoints, tls),
        sessions=PortalSessions(settings.web.session_hours * 3600),
        secure_cookies=not tls.plaintext,
    )
    return create_app(portal)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError as exc:
        raise ConfigError(
            f"METERLINE_WEB_ADDRESS={address!r} is not host:port, like 127.0.0.1:50054"
        ) from exc
    return host.strip("[]") or "127.0.0.1", number


def uvicorn_config(settings: Settings, tls: TlsSettings) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(settings, tls),
        log_config=None,  # our own logging (kernel/logs.py), configured by main()
        log_level=settings.log_level.lower(),
        access_log=False,
        ssl_certfile=None if tls.plaintext else str(tls.cert_file),
        ssl_keyfile=None if tls.plaintext else str(tls.key_file),
        timeout_graceful_shutdown=2,
        lifespan="on",
    )


def bind(address: str) -> socket.socket:
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"the web page cannot listen on {address}: {error.strerror or error}; set "
            "METERLINE_WEB_ADDRESS to a free host:port"
        ) from error
    sock.listen(128)
    sock.setblocking(False)
    return sock


class PageDidNotStart(Exception):
    """The server stopped before the page answered (its reason is in the log above)."""


@dataclass(frozen=True)
class Serving:
    """Where the page answers, once it does."""

    web_url: str
    """https://host:port (http:// with METERLINE_PLAINTEXT=1)."""
    address: str
    """host:port of the listening socket (the port chosen when the address gave 0)."""
    ca_file: Path | None
    """The authority the page's certificate is signed by, when it is a file of ours."""


def _say_serving(serving: Serving) -> None:
    print(f"web page serving on {serving.web_url}", flush=True)


def main(settings: Settings | None = None, ready: Callable[[Serving], None] = _say_serving) -> None:
    """Serve the page in the foreground until SIGINT/SIGTERM; `ready` is told where, once
    the page answers (by default one line on stdout). PageDidNotStart if it never does."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # No line per request: URLs name accounts, and the live stream would fill the log.
    logging.getLogger("uvicorn.access").disabled = True
    # Before the app is built: it traces its requests, its channels their calls, if on.
    configure_tracing(settings.traces, settings.trace_service_name or "meterline-web")
    tls = web_tls(settings)
    sock = bind(settings.web.address)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    serving = Serving(page_url(shown, tls), shown, None if tls.plaintext else tls.ca_file)
    server = uvicorn.Server(uvicorn_config(settings, tls))
    log.info("web page starting on %s", serving.web_url)
    asyncio.run(_serve(server, sock, lambda: ready(serving)))


async def _serve(server: uvicorn.Server, sock: socket.socket, ready: Callable[[], None]) -> None:
    """Run `server` on `sock`; call `ready` once it has started (its startup done and the
    socket accepting), then serve until it is told to stop."""
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()  # an error of the server's, as it is
            raise PageDidNotStart(
                "the web page stopped before it answered; its log lines above say why"
            )
        await asyncio.sleep(0.02)
    log.info("web page serving")
    ready()
    await serving


def page_url(address: str, tls: TlsSettings) -> str:
    host, port = split_address(address)
    shown = f"[{host}]" if ":" in host else host
    return f"{'http' if tls.plaintext else 'https'}://{shown}:{port}"


def wait_until_answering(
    address: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    tls: TlsSettings,
    seconds: float = 60,
) -> None:
    """Return once the page at `address` answers its sign-in page (over HTTPS trusting
    `tls.ca_file`); raise RuntimeError if the process exits, TimeoutError after `seconds`."""
    host, port = split_address(address)
    context = None
    if not tls.plaintext:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the web page exited with code {process.returncode}: see {log_path}"
            )
        connection: http.client.HTTPConnection = (
            http.client.HTTPConnection(host, port, timeout=2)
            if context is None
            else http.client.HTTPSConnection(host, port, timeout=2, context=context)
        )
        try:
            connection.request("GET", "/sign-in")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException) as error:
            last = str(error)
        finally:
            connection.close()
        time.sleep(0.2)
    raise TimeoutError(f"the web page did not answer on {address} within {seconds:.0f} s ({last})")
