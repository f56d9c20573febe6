"""The delay from an acknowledged usage update to the end users' web page showing it.

    python bench/portal_latency.py [--updates 200] [--interval 0.05] [--time-limit 180]

The three services run as their own processes on databases of their own in the PostgreSQL
and Redis the tests use (or the embedded default), with TLS; the web page runs as its own
process (`python -m meterline.web`, as `meterline up` starts it), over HTTPS. A headless
Chromium (Debian's, driven by Playwright) signs in with a portal credential and opens
the live page. A device (the SDK) then meters one session, one update every --interval
seconds, and notes when each update is acknowledged (the SDK's `report` returns). The page
notes, at the first animation frame after it drew each update it got (its
`meterline:shown` event), when that was and the units it showed. An update counts as
shown when the page first shows its units or more (the service manager sends a display
at most every 200 ms per session, so the page skips some units); its delay is that
moment less its acknowledgement. Both clocks are this machine's wall clock.

Target: p99 under 500 ms over 200 updates. A missed target is printed, not raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ms, percentile, verdict
from playwright.async_api import async_playwright
from tests.support import tls
from tests.support.clients import device_credential, ensure_tariff, new_account, stubs
from tests.support.portal import CHROMIUM_ARGS, PHONE, chromium_executable
from tests.support.stack import environment, service_processes
from tests.support.stores import StoreUrls, test_stores

from client_sdk import ClientConfig, MeterlineClient, ServiceType
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.processes import free_port, spawn, stop_processes
from meterline.web.server import wait_until_answering

PREFIX = "+4930"
ENDPOINT = "+49301234567"
PRICE = 1_000
TARGET_P99_MS = 500.0
WATCH_SHOWN = """
window.__shown = [];
document.addEventListener("meterline:shown", function (event) {
  var units = event.detail.used_units;
  requestAnimationFrame(function () {
    window.__shown.push([units, performance.timeOrigin + performance.now()]);
  });
});
"""


def start_page(
    endpoints: Endpoints, stores: StoreUrls, logs: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m meterline.web` for `endpoints`, over HTTPS: its URL and its process."""
    address = f"127.0.0.1:{free_port()}"
    env = {**environment(stores, endpoints), "METERLINE_WEB_ADDRESS": address}
    log = logs / "web.log"
    process = spawn(
        [sys.executable, "-m", "meterline.web"], log, death_signal=signal.SIGTERM, env=env
    )
    wait_until_answering(address, process, log, TlsSettings(ca_file=tls.dev_certificates().ca))
    return f"https://{address}", process


async def measure(endpoints: Endpoints, url: str, args: argparse.Namespace) -> None:
    api = stubs(endpoints)
    try:
        await ensure_tariff(api.rating, PREFIX, PRICE)
        account_id = await new_account(api.billing, 1_000_000_000)
        user, password = await device_credential(api.auth, account_id)  # the portal sign-in
        client_id, secret = await device_credential(api.auth, account_id)  # the device
    finally:
        await api.close()

    executable = chromium_executable()
    assert executable is not None
    acknowledged: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-portal-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                headless=True,
                args=CHROMIUM_ARGS,
                ignore_https_errors=True,
                viewport=PHONE,
            )
            page = context.pages[0] if context.pages else await context.new_page()
            await page.add_init_script(WATCH_SHOWN)
            await page.goto(f"{url}/sign-in")
            await page.get_by_label("User name").fill(user)
            await page.get_by_label("Password").fill(password)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_selector('#live[data-state="live"]', timeout=15_000)
            await asyncio.sleep(0.5)  # the service manager's subscription settles

            config = ClientConfig(
                service_addresses=[endpoints.service],
                auth_addresses=[endpoints.billing],
                client_id=client_id,
                client_secret=secret,
                tls=tls.client_tls(),
            )
            async with MeterlineClient(config) as client:
                session = await client.start_service(ServiceType.VOICE, ENDPOINT)
                began = time.perf_counter()
                for used in range(1, args.updates + 1):
                    planned = began + used * args.interval
                    await asyncio.sleep(max(0.0, planned - time.perf_counter()))
                    await session.report(used)
                    acknowledged[used] = time.time() * 1000
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    shown = await page.evaluate("window.__shown")
                    if shown and max(units for units, _ in shown) >= args.updates:
                        break
                    await asyncio.sleep(0.1)
                await session.stop(args.updates)
            shown = await page.evaluate("window.__shown")
            await context.close()

    delays: list[float] = []
    missing = 0
    for used, acked in acknowledged.items():
        moments = [at for units, at in shown if units >= used]
        if not moments:
            missing += 1
            continue
        delays.append(max(0.0, min(moments) - acked) / 1000)
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    worst = max(delays) * 1000 if delays else float("nan")
    print(
        f"{len(acknowledged)} usage updates, one every {args.interval * 1000:.0f} ms; the page "
        f"drew {len(shown)} displays"
    )
    print(
        f"acknowledged update -> shown on the page: p50 {ms(p50)} ms, p99 {ms(p99)} ms, "
        f"max {ms(worst)} ms; never shown: {missing}"
    )
    print(
        f"target p99 under {TARGET_P99_MS:.0f} ms: {verdict(not missing and p99 < TARGET_P99_MS)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=200, help="usage updates to time")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between updates")
    parser.add_argument("--time-limit", type=float, default=180.0, help="of the whole run, s")
    parser.add_argument("--log-dir", type=Path, help="keep the services' and the page's logs")
    args = parser.parse_args()
    if args.updates < 1 or args.interval <= 0:
        parser.error("--updates and --interval must be positive")
    if chromium_executable() is None:
        print("no Chromium found (apt-get install chromium, or set METERLINE_CHROMIUM): not run")
        return
    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        stores = cleanup.enter_context(test_stores())
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            logs = args.log_dir
        else:
            logs = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-portal-")))
        endpoints = cleanup.enter_context(service_processes(stores, logs))
        url, page_process = start_page(endpoints, stores, logs)
        cleanup.callback(stop_processes, [page_process])
        print(f"web page {url} (pid {page_process.pid}); load average {os.getloadavg()[0]:.2f}")
        try:
            asyncio.run(asyncio.wait_for(measure(endpoints, url, args), args.time_limit))
        except TimeoutError:
            print(f"stopped: the run's time limit of {args.time_limit:.0f} s passed")
    print(f"whole run: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
