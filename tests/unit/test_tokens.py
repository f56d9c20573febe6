"""meterline.kernel.tokens and principals: signed bearer tokens and who may act on what."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from meterline.kernel.errors import PermissionDenied, Unauthenticated
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tickets import TicketSigner, derived_key
from meterline.kernel.tokens import TokenSigner

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdefgh"

DEVICE = Principal(PrincipalKind.DEVICE, "dev_1", account_id="acc_1")
GATEWAY = Principal(PrincipalKind.GATEWAY, "gat_1", gateway_id="gw-1")
OPERATOR = Principal(PrincipalKind.OPERATOR, "ope_1")
SERVICE = Principal(PrincipalKind.SERVICE, "service-manager")


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(SECRET)


def _claims(**overrides: object) -> dict[str, object]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, object] = {
        "iss": "meterline",
        "sub": "ope_1",
        "kind": "operator",
        "iat": now,
        # Built when the tests are collected, so valid for longer than the suite runs.
        "exp": now + 86_400,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _expect_unauthenticated(signer: TokenSigner, token: str, reason: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        signer.verify(token)
    assert caught.value.reason == reason
    return caught.value


# -- signer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_a_short_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        TokenSigner(secret)


def test_a_32_character_secret_is_enough() -> None:
    signer = TokenSigner("x" * 32)
    assert signer.verify(signer.issue(OPERATOR).token) == OPERATOR


@pytest.mark.parametrize("principal", [DEVICE, GATEWAY, OPERATOR, SERVICE], ids=str)
def test_issue_then_verify_round_trips(signer: TokenSigner, principal: Principal) -> None:
    assert signer.verify(signer.issue(principal).token) == principal


def test_issue_uses_the_default_ttl() -> None:
    signer = TokenSigner(SECRET, ttl=timedelta(minutes=15))
    before = datetime.now(UTC)
    issued = signer.issue(DEVICE)
    after = datetime.now(UTC)
    assert before + timedelta(minutes=15) <= issued.expires_at <= after + timedelta(minutes=15)
    exp = jwt.decode(issued.token, options={"verify_signature": False})["exp"]
    assert exp == int(issued.expires_at.timestamp())


def test_issue_accepts_a_ttl_of_its_own(signer: TokenSigner) -> None:
    before = datetime.now(UTC)
    issued = signer.issue(DEVICE, ttl=timedelta(minutes=1))
    assert issued.expires_at - before < timedelta(minutes=1, seconds=5)
    assert issued.expires_at - before >= timedelta(minutes=1) - timedelta(seconds=1)


def test_each_token_is_unique(signer: TokenSigner) -> None:
    first, second = signer.issue(DEVICE).token, signer.issue(DEVICE).token
    assert first != second
    assert signer.verify(first) == signer.verify(second) == DEVICE


def test_an_expired_token_is_refused(signer: TokenSigner) -> None:
    token = signer.issue(DEVICE, ttl=timedelta(seconds=-1)).token
    error = _expect_unauthenticated(signer, token, "TOKEN_EXPIRED")
    assert "expired" in error.message
    assert "IssueToken" in error.message


def test_a_token_signed_with_another_secret_is_refused(signer: TokenSigner) -> None:
    forged = TokenSigner(OTHER_SECRET).issue(OPERATOR).token
    _expect_unauthenticated(signer, forged, "TOKEN_INVALID")


def test_a_token_whose_claims_were_swapped_is_refused(signer: TokenSigner) -> None:
    header, _, signature = signer.issue(DEVICE).token.split(".")
    _, claims, _ = signer.issue(OPERATOR).token.split(".")
    _expect_unauthenticated(signer, f"{header}.{claims}.{signature}", "TOKEN_INVALID")


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "Bearer x", "eyJhbGciOiJIUzI1NiJ9.e30.", "...."],
)
def test_garbage_is_refused(signer: TokenSigner, token: str) -> None:
    _expect_unauthenticated(signer, token, "TOKEN_INVALID")


def test_an_unsigned_token_is_refused(signer: TokenSigner) -> None:
    unsigned = jwt.encode(_claims(), None, algorithm="none")
    _expect_unauthenticated(signer, unsigned, "TOKEN_INVALID")


@pytest.mark.parametrize(
    "claims",
    [
        _claims(iss="someone-else"),
        _claims(iss=None),
        _claims(exp=None),
        _claims(sub=None),
    ],
    ids=["other-issuer", "no-issuer", "no-expiry", "no-subject"],
)
def test_a_token_missing_or_misstating_required_claims_is_refused(
    signer: TokenSigner, claims: dict[str, object]
) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    _expect_unauthenticated(signer, token, "TOKEN_INVALID")


@pytest.mark.parametrize("claims", [_claims(kind="superuser"), _claims(kind=None)])
def test_a_token_naming_no_known_kind_is_refused(
    signer: TokenSigner, claims: dict[str, object]
) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    error = _expect_unauthenticated(signer, token, "UNAUTHENTICATED")
    assert "no known kind" in error.message


def test_a_session_ticket_is_not_a_bearer_token(signer: TokenSigner) -> None:
    ticket = TicketSigner(derived_key(SECRET)).issue("ses_1", "gw-1")
    with pytest.raises(Unauthenticated):
        signer.verify(ticket)
    with pytest.raises(Unauthenticated):
        signer.verify_bearer(f"Bearer {ticket}")


def test_a_token_is_verified_with_its_expiry(signer: TokenSigner) -> None:
    issued = signer.issue(DEVICE, ttl=timedelta(minutes=5))
    principal, expires = signer.verify_until(issued.token)
    assert principal == DEVICE
    assert expires == int(issued.expires_at.timestamp())
    assert signer.verify_bearer_until(f"Bearer {issued.token}") == (principal, expires)


@pytest.mark.parametrize("template", ["Bearer {}", "bearer {}", "BEARER {}", "Bearer   {}  "])
def test_verify_bearer_accepts_the_bearer_scheme(signer: TokenSigner, template: str) -> None:
    token = signer.issue(GATEWAY).token
    assert signer.verify_bearer(template.format(token)) == GATEWAY


@pytest.mark.parametrize("authorization", [None, ""])
def test_verify_bearer_needs_a_token(signer: TokenSigner, authorization: str | None) -> None:
    with pytest.raises(Unauthenticated, match="needs an access token"):
        signer.verify_bearer(authorization)


@pytest.mark.parametrize(
    "template", ["{}", "Basic {}", "Token {}", "Bearer", "Bearer ", "Bearer    ", "Bearer\t{}"]
)
def test_verify_bearer_refuses_another_scheme(signer: TokenSigner, template: str) -> None:
    authorization = template.format(signer.issue(OPERATOR).token)
    with pytest.raises(Unauthenticated, match="must read 'Bearer <token>'"):
        signer.verify_bearer(authorization)


def test_verify_bearer_reports_an_expired_token(signer: TokenSigner) -> None:
    token = signer.issue(DEVICE, ttl=timedelta(seconds=-1)).token
    with pytest.raises(Unauthenticated) as caught:
        signer.verify_bearer(f"Bearer {token}")
    assert caught.value.reason == "TOKEN_EXPIRED"


# -- principals -----------------------------------------------------------------------------


def _allows(check: Callable[[], None]) -> bool:
    try:
        check()
    except PermissionDenied:
        return False
    return True


@pytest.mark.parametrize(
    ("principal", "trusted"),
    [(DEVICE, False), (GATEWAY, False), (OPERATOR, True), (SERVICE, True)],
)
def test_only_operators_and_services_are_trusted(principal: Principal, trusted: bool) -> None:
    assert principal.is_trusted is trusted


@pytest.mark.parametrize(
    ("principal", "account_id", "allowed"),
    [
        (DEVICE, "acc_1", True),
        (DEVICE, "acc_2", False),
        (GATEWAY, "acc_1", False),
        (Principal(PrincipalKind.GATEWAY, "gat_1", account_id="acc_1"), "acc_1", False),
        (OPERATOR, "acc_1", True),
        (OPERATOR, "acc_2", True),
        (SERVICE, "acc_2", True),
    ],
)
def test_require_account(principal: Principal, account_id: str, allowed: bool) -> None:
    assert _allows(lambda: principal.require_account(account_id)) is allowed
    if not allowed:
        with pytest.raises(PermissionDenied, match=f"may not act on account {account_id}"):
            principal.require_account(account_id)


@pytest.mark.parametrize(
    ("principal", "account_id", "gateway_id", "allowed"),
    [
        (DEVICE, "acc_1", "gw-9", True),
        (DEVICE, "acc_2", "gw-9", False),
        (Principal(PrincipalKind.DEVICE, "dev_1", account_id="acc_1"), "acc_2", "", False),
        (GATEWAY, "acc_2", "gw-1", True),
        (GATEWAY, "acc_2", "gw-2", False),
        (Principal(PrincipalKind.GATEWAY, "gat_1", account_id="acc_1"), "acc_1", "gw-2", False),
        (Principal(PrincipalKind.DEVICE, "dev_1", gateway_id="gw-1"), "acc_1", "gw-1", False),
        (OPERATOR, "acc_2", "gw-2", True),
        (SERVICE, "acc_2", "gw-2", True),
    ],
)
def test_require_session(
    principal: Principal, account_id: str, gateway_id: str, allowed: bool
) -> None:
    assert _allows(lambda: principal.require_session(account_id, gateway_id)) is allowed
    if not allowed:
        with pytest.raises(PermissionDenied, match="belongs to another account"):
            principal.require_session(account_id, gateway_id)


def test_require_kind_allows_a_listed_kind() -> None:
    kinds = (PrincipalKind.GATEWAY, PrincipalKind.OPERATOR)
    assert _allows(lambda: GATEWAY.require_kind(*kinds, action="rate usage"))
    assert _allows(lambda: OPERATOR.require_kind(*kinds, action="rate usage"))


@pytest.mark.parametrize("principal", [DEVICE, SERVICE], ids=str)
def test_require_kind_denies_any_other_kind(principal: Principal) -> None:
    with pytest.raises(PermissionDenied) as caught:
        principal.require_kind(PrincipalKind.GATEWAY, PrincipalKind.OPERATOR, action="rate usage")
    assert caught.value.reason == "PERMISSION_DENIED"
    assert caught.value.message == (
        f"Only a gateway or operator may rate usage; this caller is a {principal.kind.value}."
    )
