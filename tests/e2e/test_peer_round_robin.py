"""A peer setting that lists several instances: the service manager dials two real rating
processes as one round_robin channel (METERLINE_RATING_PEERS), so its calls reach both;
once one is killed (-9) every call still succeeds on the other; and, with client-side
health checking, an instance that says NOT_SERVING gets no calls at all until it serves
again (without health checking it would get its share: the rating service answers from
its cached catalog while its database is down)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import billing_manager.server
import service_manager.server
from meterline.kernel.config import ConfigError, Endpoints, load_settings
from meterline.kernel.grpc_server import CHANNEL_OPTIONS
from meterline.kernel.peer_targets import balanced_options, health_checked, peer_target
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from service_manager.peers import RATING_SERVICE
from tests.support import tls
from tests.support.clients import Stubs, device, ensure_tariff, new_account, stubs
from tests.support.stack import environment, settings_for, wait_for
from tests.support.stores import StoreUrls
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

GET_RATE = re.compile(
    r'^meterline_rpc_calls_total\{code="OK",method="RatingService.GetRate"\} (\S+)$', re.M
)
RATING_CALLS = re.compile(
    r'^meterline_rpc_calls_total\{code="\w+",method="RatingService\.\w+"\} (\S+)$', re.M
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _metrics(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        return str(page.read().decode())


def _get_rates(metrics_port: int) -> float:
    found = GET_RATE.search(_metrics(metrics_port))
    return float(found.group(1)) if found else 0.0


def _rating_calls(metrics_port: int) -> float:
    """Every RatingService call the instance answered, whatever its code."""
    return sum(float(count) for count in RATING_CALLS.findall(_metrics(metrics_port)))


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[0]
    host = f"{netloc}@" if netloc else ""
    return urlunsplit(parts._replace(netloc=f"{host}127.0.0.1:{port}"))


async def _spawn_rating(
    env: dict[str, str], port: int, metrics_port: int, tmp_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **env,
        "METERLINE_RATING_ADDRESS": f"127.0.0.1:{port}",
        "METERLINE_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }
    log = tmp_path / f"rating-{port}.log"
    process = spawn_service("rating", env, log)
    await asyncio.to_thread(wait_for, f"127.0.0.1:{port}", process, log)
    return process


@asynccontextmanager
async def _service_manager_over(
    stores: StoreUrls, rating_ports: Sequence[int], health_checks: str = "auto"
) -> AsyncIterator[tuple[Stubs, str]]:
    """A billing manager and a service manager in this process, the service manager
    calling the rating instances on `rating_ports` as one list; yields the stubs and a
    funded account with a tariff to call."""
    settings = settings_for(stores)
    billing = await billing_manager.server.start(settings, "127.0.0.1:0")
    try:
        endpoints = Endpoints(
            rating=f"127.0.0.1:{rating_ports[0]}",
            billing=f"127.0.0.1:{billing.port}",
            service="",
            rating_peers=",".join(f"127.0.0.1:{port}" for port in rating_ports),
            peer_health_checks=health_checks,
        )
        service = await service_manager.server.start(
            replace(settings, endpoints=endpoints), "127.0.0.1:0"
        )
        api = stubs(replace(endpoints, service=f"127.0.0.1:{service.port}"))
        try:
            await ensure_tariff(api.rating, "+4420", 10_000)
            account_id = await new_account(api.billing, 100_000_000)
            yield api, account_id
        finally:
            await api.close()
            await service.close(grace=0.5)
    finally:
        await billing.close(grace=0.5)


async def _start(api: Stubs, account_id: str) -> None:
    await api.service.StartService(
        service_pb2.StartServiceRequest(
            account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
        ),
        metadata=device(account_id),
        timeout=30,
    )


async def _wait_for_health(port: int, wanted: int, seconds: float = 30.0) -> None:
    """Until the instance on `port` reports `wanted` for the rating service (bounded)."""
    deadline = time.monotonic() + seconds
    status = None
    async with tls.channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=RATING_SERVICE), timeout=2
                )
                status = answer.status
            except grpc.aio.AioRpcError as error:
                status = error.code()
            if status == wanted:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"127.0.0.1:{port} still says {status} after {seconds:.0f} s")


def test_a_list_becomes_one_balanced_target() -> None:
    assert (
        peer_target("10.0.0.5:50051, 10.0.0.6:50051", "X") == "ipv4:10.0.0.5:50051,10.0.0.6:50051"
    )
    assert peer_target("[::1]:1,[::2]:2", "X") == "ipv6:[::1]:1,[::2]:2"
    assert peer_target("dns:///rating:50051", "X") == "dns:///rating:50051"
    assert peer_target("rating:50051", "X") == "rating:50051"
    with pytest.raises(ValueError, match="X: 'rating-b:50051' is not an IP address"):
        peer_target("10.0.0.5:50051,rating-b:50051", "X")


def test_health_checking_only_where_several_instances_are_named() -> None:
    assert health_checked("10.0.0.5:50051,10.0.0.6:50051")
    assert health_checked("dns:///rating:50051")
    assert not health_checked("127.0.0.1:50051")
    assert not health_checked("rating:50051")
    assert health_checked("rating:50051", "on")
    assert not health_checked("dns:///rating:50051", "off")
    options = dict(balanced_options(CHANNEL_OPTIONS, "127.0.0.1:1,127.0.0.1:2", "svc"))
    assert '"healthCheckConfig": {"serviceName": "svc"}' in options["grpc.service_config"]
    options = dict(balanced_options(CHANNEL_OPTIONS, "127.0.0.1:1", "svc"))
    assert "healthCheckConfig" not in options["grpc.service_config"]
    assert load_settings({"METERLINE_PEER_HEALTH_CHECKS": "OFF"}).endpoints.peer_health_checks == (
        "off"
    )
    with pytest.raises(ConfigError, match="METERLINE_PEER_HEALTH_CHECKS='sometimes' is not one"):
        load_settings({"METERLINE_PEER_HEALTH_CHECKS": "sometimes"})


async def test_calls_spread_over_two_rating_instances_and_survive_one_killed(
    stores: StoreUrls, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    metrics_ports = [free_port(), free_port()]
    rating_processes: list[subprocess.Popen[bytes]] = []
    base = environment(stores, Endpoints())
    try:
        for port, metrics_port in zip(ports, metrics_ports, strict=True):
            rating_processes.append(await _spawn_rating(base, port, metrics_port, tmp_path))
        async with _service_manager_over(stores, ports) as (api, account_id):
            for _ in range(20):
                await _start(api, account_id)
            counts = [await asyncio.to_thread(_get_rates, port) for port in metrics_ports]
            # Both instances carried calls (round_robin: about half each).
            assert all(count >= 5 for count in counts), counts

            os.kill(rating_processes[0].pid, signal.SIGKILL)
            rating_processes[0].wait()
            for _ in range(10):
                await _start(api, account_id)  # none fails
            survivor = await asyncio.to_thread(_get_rates, metrics_ports[1])
            assert survivor >= counts[1] + 10
    finally:
        await asyncio.to_thread(stop_processes, rating_processes)


async def test_an_instance_that_says_not_serving_gets_no_calls_until_it_serves_again(
    stores: StoreUrls, tmp_path: Path
) -> None:
    """Instance B reaches the shared rating database through a proxy of this test's own;
    pausing the proxy makes B's database unreachable (the shared PostgreSQL keeps
    running), so B says NOT_SERVING while it could still answer from its cache."""
    ports = [free_port(), free_port()]
    metrics_ports = [free_port(), free_port()]
    database_port = urlsplit(stores.rating_url).port
    assert database_port is not None
    proxy = TcpProxy(database_port)
    rating_processes: list[subprocess.Popen[bytes]] = []
    base = environment(stores, Endpoints())
    b_env = {**base, "METERLINE_RATING_DATABASE_URL": _with_port(stores.rating_url, proxy.port)}
    try:
        # Both processes start before the service manager's channel watches them: this
        # process forks no child while the watch streams run (kernel/peer_targets.py).
        for env, port, metrics_port in zip((base, b_env), ports, metrics_ports, strict=True):
            rating_processes.append(await _spawn_rating(env, port, metrics_port, tmp_path))
        async with _service_manager_over(stores, ports) as (api, account_id):
            for _ in range(10):
                await _start(api, account_id)
            serving_b = await asyncio.to_thread(_rating_calls, metrics_ports[1])
            assert serving_b >= 3, f"B carried {serving_b} of 10 calls while SERVING"

            proxy.pause()
            await _wait_for_health(ports[1], NOT_SERVING)
            # The service manager's watch stream hears it at once; a margin for the
            # update to reach its load balancer.
            await asyncio.sleep(1.0)
            before = [await asyncio.to_thread(_rating_calls, port) for port in metrics_ports]
            for _ in range(20):
                await _start(api, account_id)  # none fails
            after = [await asyncio.to_thread(_rating_calls, port) for port in metrics_ports]
            assert after[1] == before[1], (
                f"B got {after[1] - before[1]:.0f} of 20 calls while NOT_SERVING"
            )
            assert after[0] >= before[0] + 20, (before, after)

            proxy.resume(database_port)
            await _wait_for_health(ports[1], SERVING)
            await asyncio.sleep(1.0)
            for _ in range(10):
                await _start(api, account_id)
            back = await asyncio.to_thread(_rating_calls, metrics_ports[1])
            assert back >= after[1] + 3, f"B got {back - after[1]:.0f} of 10 calls once SERVING"
    finally:
        await asyncio.to_thread(stop_processes, rating_processes)
        await asyncio.to_thread(proxy.close)
