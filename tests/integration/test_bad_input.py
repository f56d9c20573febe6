"""Bad input gets a clear status and a sentence, and changes nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tokens import TokenSigner
from meterline.rating.v1 import rating_pb2, types_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, device, ensure_tariff, new_account
from tests.support.stack import metadata, token_for

pytestmark = pytest.mark.integration


async def _balance(api: Stubs, account_id: str) -> billing_pb2.Account:
    return await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )


async def _start(api: Stubs, account_id: str, endpoint: str = "+4930123") -> str:
    await ensure_tariff(api.rating, "+49", 10_000)
    started = await api.service.StartService(
        service_pb2.StartServiceRequest(
            account_id=account_id, service_type=types_pb2.VOICE, endpoint=endpoint
        ),
        metadata=device(account_id),
    )
    return str(started.session_id)


async def _meter(
    api: Stubs, session_id: str, who: tuple[tuple[str, str], ...], *updates: tuple[int, int]
) -> list[service_pb2.MeterResponse]:
    requests = [
        service_pb2.ResourceUtilizationUpdate(session_id=session_id, sequence=seq, used_units=used)
        for seq, used in updates
    ]
    call = api.service.Meter(iter(requests), metadata=who)
    return [response async for response in call]


async def test_forged_token_is_refused_and_changes_nothing(api: Stubs) -> None:
    account_id = await new_account(api.billing, 500_000)
    forged = TokenSigner("another-secret-" + "y" * 40).issue(
        Principal(kind=PrincipalKind.OPERATOR, subject="mallory")
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account_id, amount_micros=10**9, idempotency_key="forged"
            ),
            metadata=metadata(forged.token),
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value) == "TOKEN_INVALID"
    assert "IssueToken" in (raised.value.details() or "")
    assert (await _balance(api, account_id)).balance_micros == 500_000


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ((), "UNAUTHENTICATED"),
        ((("authorization", "Basic abc"),), "UNAUTHENTICATED"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
    ],
)
async def test_missing_or_malformed_token(
    api: Stubs, meta: tuple[tuple[str, str], ...], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.GetRate(
            rating_pb2.GetRateRequest(service_type=types_pb2.VOICE, endpoint="+49"), metadata=meta
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value) == reason


async def test_expired_token_says_so(api: Stubs) -> None:
    expired = token_for(
        Principal(kind=PrincipalKind.OPERATOR, subject="late"), ttl=timedelta(seconds=-5)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.ListActiveSessions(
            service_pb2.ListActiveSessionsRequest(), metadata=metadata(expired)
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value) == "TOKEN_EXPIRED"


async def test_another_accounts_session_is_refused(api: Stubs) -> None:
    owner = await new_account(api.billing, 1_000_000)
    intruder = await new_account(api.billing, 1_000_000)
    session_id = await _start(api, owner)
    await _meter(api, session_id, device(owner), (1, 5))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _meter(api, session_id, device(intruder), (2, 50))
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=session_id, used_units=60),
            metadata=device(intruder),
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=owner, service_type=types_pb2.VOICE, endpoint="+4930"
            ),
            metadata=device(intruder),
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # The owner's session goes on untouched.
    (response,) = await _meter(api, session_id, device(owner), (2, 6))
    assert (response.acknowledged_sequence, response.used_units) == (2, 6)
    record = await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=6),
        metadata=device(owner),
    )
    assert record.charged_micros == 60_000


async def test_negative_and_backwards_usage_are_refused(api: Stubs) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    session_id = await _start(api, account_id)
    await _meter(api, session_id, device(account_id), (1, 20))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _meter(api, session_id, device(account_id), (2, -1))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "negative" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _meter(api, session_id, device(account_id), (2, 19))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == "USAGE_WENT_BACKWARDS"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=session_id, used_units=3),
            metadata=device(account_id),
        )
    assert error_reason(raised.value) == "USAGE_WENT_BACKWARDS"

    # Nothing changed: the next update continues from 20 at sequence 2.
    (response,) = await _meter(api, session_id, device(account_id), (2, 21))
    assert (response.acknowledged_sequence, response.charged_micros) == (2, 210_000)
    record = await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=21),
        metadata=device(account_id),
    )
    assert record.charged_micros == 210_000


async def test_unknown_endpoint_is_not_found_and_holds_nothing(api: Stubs) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    await ensure_tariff(api.rating, "+49", 10_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint="+999123"
            ),
            metadata=device(account_id),
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert error_reason(raised.value) == "UNKNOWN_ENDPOINT"
    account = await _balance(api, account_id)
    assert (account.available_micros, account.held_micros) == (1_000_000, 0)
    active = await api.service.ListActiveSessions(
        service_pb2.ListActiveSessionsRequest(account_id=account_id), metadata=OPERATOR
    )
    assert list(active.sessions) == []


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        ({"service_type": types_pb2.SERVICE_TYPE_UNSPECIFIED, "endpoint": "+49"}, "service_type"),
        ({"service_type": types_pb2.VOICE, "endpoint": ""}, "endpoint is empty"),
        ({"service_type": types_pb2.VOICE, "endpoint": "+49 30"}, "spaces"),
        ({"service_type": types_pb2.VOICE, "endpoint": "+49" * 200}, "longer"),
    ],
)
async def test_malformed_start_requests(
    api: Stubs, request_fields: dict[str, object], words: str
) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StartService(
            service_pb2.StartServiceRequest(account_id=account_id, **request_fields),  # type: ignore[arg-type]
            metadata=device(account_id),
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (raised.value.details() or "")


async def test_insufficient_funds_refuses_the_start(api: Stubs) -> None:
    account_id = await new_account(api.billing, 0)
    await ensure_tariff(api.rating, "+49", 10_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint="+4930"
            ),
            metadata=device(account_id),
        )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(raised.value) == "INSUFFICIENT_FUNDS"


async def test_unknown_session(api: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id="ses_nope", used_units=1), metadata=OPERATOR
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_huge_messages_and_batches_are_refused(api: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.GetRate(
            rating_pb2.GetRateRequest(service_type=types_pb2.VOICE, endpoint="9" * 9_000_000),
            metadata=OPERATOR,
        )
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    item = rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+49", units=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsageBatch(
            rating_pb2.RateUsageBatchRequest(items=[item] * 10_001), metadata=OPERATOR
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10000" in (raised.value.details() or "")


async def test_batch_reports_each_items_error(api: Stubs) -> None:
    await ensure_tariff(api.rating, "+49", 10_000)
    items = [
        rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+4930", units=42),
        rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+4930", units=-1),
        rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+1555", units=1),
    ]
    response = await api.rating.RateUsageBatch(
        rating_pb2.RateUsageBatchRequest(items=items), metadata=OPERATOR
    )
    first, negative, unknown = response.results
    assert first.rated.amount_micros == 420_000
    assert negative.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert unknown.error.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_devices_cannot_administer(api: Stubs) -> None:
    account_id = await new_account(api.billing, 100)
    for call in (
        api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account_id, amount_micros=5, idempotency_key="self-fund"
            ),
            metadata=device(account_id),
        ),
        api.billing.Reserve(
            billing_pb2.ReserveRequest(account_id=account_id, amount_micros=5, idempotency_key="r"),
            metadata=device(account_id),
        ),
        api.rating.UpsertTariff(
            rating_pb2.UpsertTariffRequest(tariff=rating_pb2.Tariff()), metadata=device(account_id)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (await _balance(api, account_id)).balance_micros == 100


async def test_two_streams_on_one_session_never_charge_twice(api: Stubs) -> None:
    """A primary and a secondary may both carry a session's updates for a moment (a
    failover overlap): interleaved and repeated updates end at the charge of the highest
    usage, never more."""
    account_id = await new_account(api.billing, 1_000_000)
    session_id = await _start(api, account_id)
    owner = device(account_id)
    updates = [(sequence, sequence * 2) for sequence in range(1, 31)]
    await asyncio.gather(
        _meter(api, session_id, owner, *updates[::2], *updates[1::2]),
        _meter(api, session_id, owner, *updates[1::2], *updates[::2]),
        _meter(api, session_id, owner, *reversed(updates)),
    )
    record = await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=60), metadata=owner
    )
    assert (record.used_units, record.charged_micros) == (60, 600_000)
    account = await _balance(api, account_id)
    assert (account.balance_micros, account.held_micros) == (400_000, 0)


async def test_absurd_times_are_refused_per_item(api: Stubs) -> None:
    await ensure_tariff(api.rating, "+49", 10_000)
    absurd = rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+4930", units=1)
    absurd.start_time.seconds = 2**60
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsage(absurd, metadata=OPERATOR)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "start_time is not a time" in (raised.value.details() or "")
    fine = rating_pb2.RateUsageRequest(service_type=types_pb2.VOICE, endpoint="+4930", units=1)
    response = await api.rating.RateUsageBatch(
        rating_pb2.RateUsageBatchRequest(items=[absurd, fine]), metadata=OPERATOR
    )
    assert response.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.results[1].rated.amount_micros == 10_000
    tariff = rating_pb2.Tariff(
        service_type=types_pb2.VOICE,
        prefix="+4930",
        unit=types_pb2.SECOND,
        price_per_unit_micros=1,
        increment_units=1,
        currency="EUR",
    )
    tariff.effective_from.seconds = -(2**40)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.UpsertTariff(
            rating_pb2.UpsertTariffRequest(tariff=tariff), metadata=OPERATOR
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
