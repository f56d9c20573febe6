"""The v1 scenario end to end: three service processes, the SDK, real stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scenario import run_prepaid_voice_scenario
from tests.support.stack import operator_token, service_processes
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.e2e


async def test_prepaid_voice_call_through_three_processes(
    stores: StoreUrls, tmp_path: Path
) -> None:
    with service_processes(stores, tmp_path) as endpoints:
        await run_prepaid_voice_scenario(
            endpoints,
            operator_token(),
            stores.service_url,
            stores.redis_url,
            stores.redis_prefix,
        )
