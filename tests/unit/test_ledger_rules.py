"""billing_manager.domain.ledger and credentials: double-entry rules, limits, validation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from billing_manager.domain.credentials import (
    Credential,
    hash_secret,
    new_client_id,
    new_secret,
    secret_matches,
    validate_new_credential,
)
from billing_manager.domain.ledger import (
    MAX_DISPLAY_NAME_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    Balances,
    Entry,
    Hold,
    HoldStatus,
    LedgerAccount,
    TransactionKind,
    balanced,
    capture_entries,
    capture_settlement,
    ensure_can_reserve,
    fingerprint,
    fund_entries,
    release_entries,
    release_settlement,
    reserve_entries,
    validate_amount,
    validate_capture,
    validate_idempotency_key,
    validate_new_account,
)
from meterline.kernel.errors import FailedPrecondition, InsufficientFunds, InvalidArgument
from meterline.kernel.money import MAX_AMOUNT_MICROS, AmountError
from meterline.kernel.principals import Principal, PrincipalKind

pytestmark = pytest.mark.unit

AVAILABLE = LedgerAccount.CUSTOMER_AVAILABLE
HELD = LedgerAccount.CUSTOMER_HELD
FUNDING = LedgerAccount.FUNDING
REVENUE = LedgerAccount.REVENUE
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def hold(amount: int) -> Hold:
    return Hold(
        hold_id="hld_1",
        account_id="acc_1",
        amount_micros=amount,
        captured_micros=0,
        released_micros=0,
        status=HoldStatus.OPEN,
        reference="ses_1",
        created_at=NOW,
        expires_at=NOW,
    )


def _refusal(check: Callable[[], None]) -> Exception | None:
    """The error a check raises, or None when it lets the request through."""
    try:
        check()
    except Exception as error:
        return error
    return None


# -- entries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (fund_entries(5_000), [(FUNDING, -5_000), (AVAILABLE, 5_000)]),
        (reserve_entries(3_000), [(AVAILABLE, -3_000), (HELD, 3_000)]),
        (release_entries(3_000), [(HELD, -3_000), (AVAILABLE, 3_000)]),
        (capture_entries(3_000, 3_000), [(HELD, -3_000), (REVENUE, 3_000)]),  # full
        (  # partial: the rest goes back to available
            capture_entries(3_000, 1_200),
            [(HELD, -3_000), (REVENUE, 1_200), (AVAILABLE, 1_800)],
        ),
        (capture_entries(3_000, 0), [(HELD, -3_000), (AVAILABLE, 3_000)]),  # zero
    ],
    ids=["fund", "reserve", "release", "capture-full", "capture-partial", "capture-zero"],
)
def test_entries_have_the_documented_signs_and_sum_to_zero(
    entries: list[Entry], expected: list[Entry]
) -> None:
    assert entries == expected
    assert sum(amount for _, amount in entries) == 0


@pytest.mark.parametrize("amount", [1, 999_999, MAX_AMOUNT_MICROS])
def test_every_movement_balances_for_any_amount(amount: int) -> None:
    for entries in (
        fund_entries(amount),
        reserve_entries(amount),
        release_entries(amount),
        capture_entries(amount, amount),
        capture_entries(amount, amount // 3),
        capture_entries(amount, 0),
    ):
        assert sum(value for _, value in entries) == 0
        assert all(value != 0 for _, value in entries)


def test_a_movement_sequence_keeps_the_documented_identities() -> None:
    totals: Counter[LedgerAccount] = Counter()
    for entries in (
        fund_entries(10_000),
        reserve_entries(3_000),
        capture_entries(3_000, 1_200),
        reserve_entries(2_000),
        release_entries(2_000),
        reserve_entries(500),
    ):
        for account, amount in entries:
            totals[account] += amount
    funded, captured, held = 10_000, 1_200, 500
    assert totals[FUNDING] == -funded
    assert totals[REVENUE] == captured
    assert totals[HELD] == held
    assert totals[AVAILABLE] + totals[HELD] == funded - captured  # balance
    assert totals[AVAILABLE] == funded - captured - held  # available
    assert sum(totals.values()) == 0


def test_balanced_refuses_an_unbalanced_transaction() -> None:
    with pytest.raises(AssertionError, match="unbalanced"):
        balanced([(FUNDING, -5), (AVAILABLE, 4)])
    assert balanced([]) == []


def test_balances() -> None:
    # A bill's totals: tests/unit/test_invoice_rules.py.
    assert Balances(available_micros=700, held_micros=300).balance_micros == 1_000
    assert Balances(available_micros=-200, held_micros=50).balance_micros == -150


# -- reserving against a credit limit -------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "credit_limit", "amount"),
    [
        (1_000, 0, 1_000),  # down to exactly zero
        (1_000, 0, 0),
        (1_000, 500, 1_500),  # down to exactly -credit_limit
        (-200, 500, 300),
        (0, 500, 500),
        (-500, 500, 0),
    ],
)
def test_a_reserve_may_take_available_down_to_minus_the_credit_limit(
    available: int, credit_limit: int, amount: int
) -> None:
    balances = Balances(available_micros=available, held_micros=0)
    assert _refusal(lambda: ensure_can_reserve(balances, credit_limit, amount)) is None


@pytest.mark.parametrize(
    ("available", "credit_limit", "amount"),
    [
        (1_000, 0, 1_001),
        (1_000, 500, 1_501),
        (-200, 500, 301),
        (0, 0, 1),
        (-501, 500, 0),  # already beyond the limit
    ],
)
def test_a_reserve_may_not_go_below_minus_the_credit_limit(
    available: int, credit_limit: int, amount: int
) -> None:
    balances = Balances(available_micros=available, held_micros=10_000)
    with pytest.raises(InsufficientFunds) as caught:
        ensure_can_reserve(balances, credit_limit, amount)
    assert isinstance(caught.value, FailedPrecondition)
    assert caught.value.reason == "INSUFFICIENT_FUNDS"


def test_insufficient_funds_says_what_is_needed_and_what_is_available() -> None:
    balances = Balances(available_micros=1_000_000, held_micros=0)
    with pytest.raises(InsufficientFunds) as caught:
        ensure_can_reserve(balances, 500_000, 2_000_000)
    assert "2.00 is needed but only 1.50 is available" in caught.value.message


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, -1_000_000])
def test_validate_amount_refuses_nothing_and_less(amount: int) -> None:
    with pytest.raises(
        InvalidArgument, match=rf"amount_micros must be more than 0 \(got {amount}\)"
    ):
        validate_amount(amount)


def test_validate_amount_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="credit_micros must be more than 0"):
        validate_amount(0, "credit_micros")


@pytest.mark.parametrize("amount", [1, 1_000_000, MAX_AMOUNT_MICROS])
def test_validate_amount_accepts_positive_amounts(amount: int) -> None:
    assert validate_amount(amount) == amount


def test_validate_amount_refuses_overflow() -> None:
    with pytest.raises(AmountError):
        validate_amount(MAX_AMOUNT_MICROS + 1)


@pytest.mark.parametrize(
    ("amount", "message"), [(-1, "cannot be negative"), (1_001, "Cannot capture 1001")]
)
def test_validate_capture_refuses(amount: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_capture(hold(1_000), amount)


@pytest.mark.parametrize("amount", [0, 1, 1_000])
def test_validate_capture_accepts_up_to_the_hold(amount: int) -> None:
    assert validate_capture(hold(1_000), amount) == amount


@pytest.mark.parametrize("amount", [0, 1, 400, 1_000])
def test_a_capture_settlement_captures_the_amount_and_gives_the_rest_back(amount: int) -> None:
    settlement = capture_settlement(hold(1_000), amount)
    assert (settlement.kind, settlement.status) == (TransactionKind.CAPTURE, HoldStatus.CAPTURED)
    assert (settlement.captured_micros, settlement.released_micros) == (amount, 1_000 - amount)
    assert settlement.amount_micros == amount
    assert settlement.entries == capture_entries(1_000, amount)


def test_a_capture_settlement_refuses_what_validate_capture_refuses() -> None:
    with pytest.raises(InvalidArgument, match="Cannot capture 1001"):
        capture_settlement(hold(1_000), 1_001)


def test_a_release_settlement_gives_the_whole_hold_back() -> None:
    settlement = release_settlement(hold(1_000))
    assert (settlement.kind, settlement.status) == (TransactionKind.RELEASE, HoldStatus.RELEASED)
    assert (settlement.captured_micros, settlement.released_micros) == (0, 1_000)
    assert settlement.amount_micros == 1_000
    assert settlement.entries == release_entries(1_000)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "idempotency_key is missing"),
        ("   ", "idempotency_key is missing"),
        ("k" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1), f"longer than {MAX_IDEMPOTENCY_KEY_LENGTH}"),
    ],
)
def test_validate_idempotency_key_refuses(key: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_idempotency_key(key)


@pytest.mark.parametrize("key", ["k", "ses_1:reserve:1", "k" * MAX_IDEMPOTENCY_KEY_LENGTH])
def test_validate_idempotency_key_accepts(key: str) -> None:
    assert validate_idempotency_key(key) == key


@pytest.mark.parametrize(
    ("display_name", "currency", "credit_limit", "message"),
    [
        ("", "EUR", 0, "display_name is empty"),
        ("   ", "EUR", 0, "display_name is empty"),
        ("x" * (MAX_DISPLAY_NAME_LENGTH + 1), "EUR", 0, "display_name is longer"),
        ("Acme", "eur", 0, "not a currency code"),
        ("Acme", "EURO", 0, "not a currency code"),
        ("Acme", "", 0, "not a currency code"),
        ("Acme", "EUR", -1, "credit_limit_micros cannot be negative"),
    ],
)
def test_validate_new_account_refuses(
    display_name: str, currency: str, credit_limit: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_new_account(display_name, currency, credit_limit)


@pytest.mark.parametrize(
    ("display_name", "currency", "credit_limit"),
    [("Acme", "EUR", 0), ("x" * MAX_DISPLAY_NAME_LENGTH, "USD", 5_000_000)],
)
def test_validate_new_account_accepts(display_name: str, currency: str, credit_limit: int) -> None:
    assert _refusal(lambda: validate_new_account(display_name, currency, credit_limit)) is None


def test_validate_new_account_refuses_a_currency_with_a_trailing_newline() -> None:
    with pytest.raises(InvalidArgument):
        validate_new_account("Acme", "EUR\n", 0)


def test_fingerprint_tells_a_retry_from_another_request() -> None:
    reserve = fingerprint(TransactionKind.RESERVE, "acc_1", 1_000, "ses_1")
    assert reserve == fingerprint(TransactionKind.RESERVE, "acc_1", 1_000, "ses_1")
    assert reserve != fingerprint(TransactionKind.RESERVE, "acc_1", 1_001, "ses_1")
    assert reserve != fingerprint(TransactionKind.RESERVE, "acc_2", 1_000, "ses_1")
    assert reserve != fingerprint(TransactionKind.RESERVE, "acc_1", 1_000, "ses_2")
    assert fingerprint(TransactionKind.FUND, "acc_1", 5) != fingerprint(
        TransactionKind.CAPTURE, "acc_1", 5
    )
    assert fingerprint(TransactionKind.FUND, "acc_1", 5) == "FUND|acc_1|5"


# -- credentials ----------------------------------------------------------------------------


def test_hash_secret_is_a_stable_sha256_hex_digest() -> None:
    digest = hash_secret("s3cret")
    assert digest == hash_secret("s3cret")
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    assert digest != hash_secret("s3cret ")
    assert "s3cret" not in digest


def test_secret_matches_only_its_own_hash() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert secret_matches(secret, stored)
    assert not secret_matches(secret + "x", stored)
    assert not secret_matches("", stored)
    assert not secret_matches(secret, hash_secret(new_secret()))


def test_new_secrets_are_long_and_distinct() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    assert all(len(secret) >= 43 for secret in secrets)  # 32 random bytes, base64url


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (PrincipalKind.DEVICE, "dev_"),
        (PrincipalKind.GATEWAY, "gat_"),
        (PrincipalKind.OPERATOR, "ope_"),
    ],
)
def test_client_ids_name_their_kind(kind: PrincipalKind, prefix: str) -> None:
    first, second = new_client_id(kind), new_client_id(kind)
    assert first.startswith(prefix)
    assert len(first) == len(prefix) + 20
    assert first != second


def test_a_credential_makes_its_principal() -> None:
    device = Credential("dev_1", PrincipalKind.DEVICE, account_id="acc_1")
    gateway = Credential("gat_1", PrincipalKind.GATEWAY, gateway_name="gw-1")
    assert device.principal() == Principal(PrincipalKind.DEVICE, "dev_1", account_id="acc_1")
    assert gateway.principal() == Principal(PrincipalKind.GATEWAY, "gat_1", gateway_id="gw-1")


@pytest.mark.parametrize(
    ("kind", "account_id", "gateway_name"),
    [
        (PrincipalKind.DEVICE, "acc_1", ""),
        (PrincipalKind.GATEWAY, "", "gw-1"),
        (PrincipalKind.GATEWAY, "", "g" * 100),
        (PrincipalKind.OPERATOR, "", ""),
    ],
)
def test_validate_new_credential_accepts(
    kind: PrincipalKind, account_id: str, gateway_name: str
) -> None:
    assert _refusal(lambda: validate_new_credential(kind, account_id, gateway_name)) is None


@pytest.mark.parametrize(
    ("kind", "account_id", "gateway_name", "message"),
    [
        (PrincipalKind.SERVICE, "", "", "Service tokens are not issued"),
        (PrincipalKind.DEVICE, "", "", "must name the account"),
        (PrincipalKind.GATEWAY, "acc_1", "gw-1", "Only a device credential is bound"),
        (PrincipalKind.OPERATOR, "acc_1", "", "Only a device credential is bound"),
        (PrincipalKind.GATEWAY, "", "", "must name the gateway"),
        (PrincipalKind.GATEWAY, "", "   ", "must name the gateway"),
        (PrincipalKind.GATEWAY, "", "g" * 101, "gateway_name is longer than 100"),
        (PrincipalKind.DEVICE, "acc_1", "gw-1", "Only a gateway credential carries"),
        (PrincipalKind.OPERATOR, "", "gw-1", "Only a gateway credential carries"),
    ],
)
def test_validate_new_credential_refuses(
    kind: PrincipalKind, account_id: str, gateway_name: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_new_credential(kind, account_id, gateway_name)
