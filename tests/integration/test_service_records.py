"""ListServiceRecords against the real stack: an account's ended services, newest first, a
page at a time with no record lost or repeated; a device sees only its own account's; bad
page sizes and tokens get INVALID_ARGUMENT with a sentence."""

from __future__ import annotations

import grpc
import pytest

from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, device, new_account
from tests.support.session_calls import DEADLINE, own_device, start, stop, voice_tariff

pytestmark = pytest.mark.integration

PREFIX = "+3571"
ENDPOINT = "+35712345"
PRICE = 1_000


async def ended_sessions(api: Stubs, account_id: str, count: int) -> list[tuple[str, int]]:
    """`count` sessions started and stopped in turn, the n-th after n+1 seconds of use:
    (session id, charge), oldest first."""
    who = own_device(account_id)
    done = []
    for n in range(count):
        session_id = await start(api, account_id, ENDPOINT, who)
        done.append((session_id, await stop(api, session_id, n + 1, who)))
    return done


async def list_page(
    api: Stubs, account_id: str, who: tuple[tuple[str, str], ...], size: int = 0, token: str = ""
) -> service_pb2.ListServiceRecordsResponse:
    return await api.service.ListServiceRecords(
        service_pb2.ListServiceRecordsRequest(
            account_id=account_id, page_size=size, page_token=token
        ),
        metadata=who,
        timeout=DEADLINE,
    )


async def test_records_come_newest_first_in_pages_with_nothing_lost_or_repeated(
    api: Stubs,
) -> None:
    await voice_tariff(api, PREFIX, PRICE)
    account_id = await new_account(api.billing, 5_000_000)
    done = await ended_sessions(api, account_id, 5)

    seen: list[service_pb2.ServiceRecord] = []
    token = ""
    pages = 0
    while True:
        page = await list_page(api, account_id, device(account_id), size=2, token=token)
        pages += 1
        assert len(page.records) <= 2
        seen.extend(page.records)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [(r.session_id, r.charged_micros) for r in seen] == list(reversed(done))
    assert [r.used_units for r in seen] == [5, 4, 3, 2, 1]
    assert all(r.account_id == account_id and r.endpoint == ENDPOINT for r in seen)
    assert all(r.termination_reason == service_pb2.TERMINATION_REASON_CLIENT_STOP for r in seen)

    everything = await list_page(api, account_id, OPERATOR)
    assert [r.session_id for r in everything.records] == [s for s, _ in reversed(done)]
    assert everything.next_page_token == ""


async def test_a_device_lists_only_its_own_accounts_records(api: Stubs) -> None:
    await voice_tariff(api, PREFIX, PRICE)
    mine = await new_account(api.billing, 5_000_000)
    theirs = await new_account(api.billing, 5_000_000)
    await ended_sessions(api, theirs, 1)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_page(api, theirs, device(mine))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not act on account" in (refused.value.details() or "")
    assert (await list_page(api, mine, device(mine))).records == []


@pytest.mark.parametrize(
    ("size", "token", "words"),
    [
        (-1, "", "page_size cannot be negative"),
        (0, "not-a-token", "page_token is not one this service gave out"),
        (0, "bm8tc2VwYXJhdG9y", "page_token is not one this service gave out"),
        # a NUL hidden inside the base64 text, which the request guard cannot see
        (0, "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxhAA", "page_token is not one this service"),
    ],
)
async def test_bad_paging_is_refused_with_a_sentence(
    api: Stubs, size: int, token: str, words: str
) -> None:
    account_id = await new_account(api.billing)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_page(api, account_id, OPERATOR, size=size, token=token)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (refused.value.details() or "")


async def test_a_missing_account_id_is_refused(api: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_page(api, "", OPERATOR)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "account_id is missing" in (refused.value.details() or "")
