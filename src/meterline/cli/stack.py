"""`meterline up`: the stores (the configured ones, or the embedded default) and the three
services, each its own process, on this machine."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from meterline.kernel.config import Endpoints, Settings, Stores, token_secret
from meterline.kernel.db import ensure_database
from meterline.kernel.embedded import (
    start_embedded_postgres,
    start_embedded_redis,
    stop_embedded_postgres,
    stop_embedded_redis,
)
from meterline.kernel.processes import (
    port_is_free,
    spawn_service,
    stop_processes,
    wait_until_serving,
)

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The stack could not start; the message says why and what to do."""


@dataclass
class RunningStack:
    endpoints: Endpoints
    stores: Stores
    secret: str
    log_dir: Path
    embedded: bool


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._exit = ExitStack()
        self._processes: list[subprocess.Popen[bytes]] = []

    def _stores(self) -> tuple[Stores, bool]:
        stores = self._settings.stores
        embedded_dir = self._settings.data_dir / "embedded"
        embedded = False
        urls = (
            stores.rating_database_url,
            stores.billing_database_url,
            stores.service_database_url,
        )
        if not all(urls):
            server_url, _ = start_embedded_postgres(embedded_dir)
            self._exit.callback(stop_embedded_postgres, embedded_dir)
            embedded = True
            stores = replace(
                stores,
                rating_database_url=stores.rating_database_url
                or ensure_database(server_url, "meterline_rating"),
                billing_database_url=stores.billing_database_url
                or ensure_database(server_url, "meterline_billing"),
                service_database_url=stores.service_database_url
                or ensure_database(server_url, "meterline_service"),
            )
        if not stores.redis_url:
            redis_url, _ = start_embedded_redis(embedded_dir)
            self._exit.callback(stop_embedded_redis, embedded_dir)
            embedded = True
            stores = replace(stores, redis_url=redis_url)
        return stores, embedded

    def __enter__(self) -> RunningStack:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> RunningStack:
        endpoints = self._settings.endpoints
        for role, address in (
            ("rating", endpoints.rating),
            ("billing", endpoints.billing),
            ("service", endpoints.service),
        ):
            if not port_is_free(address):
                raise StackError(
                    f"{address} (the {role} service's address) is already in use: stop what "
                    f"listens there, or set METERLINE_{role.upper()}_ADDRESS to another port."
                )
        secret = token_secret(self._settings)
        stores, embedded = self._stores()
        env = {
            **os.environ,
            "METERLINE_RATING_DATABASE_URL": stores.rating_database_url,
            "METERLINE_BILLING_DATABASE_URL": stores.billing_database_url,
            "METERLINE_SERVICE_DATABASE_URL": stores.service_database_url,
            "METERLINE_REDIS_URL": stores.redis_url,
            "METERLINE_REDIS_PREFIX": stores.redis_prefix,
            "METERLINE_TOKEN_SECRET": secret,
            "METERLINE_RATING_ADDRESS": endpoints.rating,
            "METERLINE_BILLING_ADDRESS": endpoints.billing,
            "METERLINE_SERVICE_ADDRESS": endpoints.service,
        }
        log_dir = self._settings.data_dir / "logs"
        # The service manager needs the other two, so it starts last.
        for role, address in (
            ("rating", endpoints.rating),
            ("billing", endpoints.billing),
            ("service", endpoints.service),
        ):
            log_path = log_dir / f"{role}.log"
            process = spawn_service(role, env, log_path)
            self._processes.append(process)
            try:
                wait_until_serving(address, process, log_path)
            except (RuntimeError, TimeoutError) as error:
                raise StackError(f"the {role} service did not start: {error}") from error
            log.info("%s service serving on %s (log: %s)", role, address, log_path)
        running = RunningStack(endpoints, stores, secret, log_dir, embedded)
        self._write_state(running)
        return running

    @property
    def state_file(self) -> Path:
        """Where a running stack tells other tools its addresses and store URLs."""
        return self._settings.data_dir / "stack.json"

    def _write_state(self, running: RunningStack) -> None:
        state = {
            "endpoints": dataclasses.asdict(running.endpoints),
            "stores": dataclasses.asdict(running.stores),
            "embedded": running.embedded,
            "pid": os.getpid(),
        }
        self.state_file.write_text(json.dumps(state, indent=2))
        self._exit.callback(self.state_file.unlink, missing_ok=True)

    def close(self) -> None:
        stop_processes(self._processes)
        self._processes.clear()
        self._exit.close()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
