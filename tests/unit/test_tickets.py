"""meterline.kernel.tickets: session tickets a gateway verifies offline with the public
key alone (Ed25519, alg EdDSA), and where the installation's key comes from."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterline.kernel.config import ConfigError, GatewaySettings, Settings
from meterline.kernel.tickets import (
    TicketSigner,
    derived_key,
    read_key_file,
    ticket_key,
    verify_ticket,
)

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-0123456789abcdef"


@pytest.fixture
def signer() -> TicketSigner:
    return TicketSigner(derived_key(SECRET))


def test_a_ticket_names_the_session_the_gateway_and_an_expiry(signer: TicketSigner) -> None:
    ticket = signer.issue("ses_1", "edge1", "VOICE", "+447700900123")
    claims = verify_ticket(ticket, signer.public.pem, "edge1")
    assert (claims["sub"], claims["aud"], claims["kind"]) == ("ses_1", "edge1", "session-ticket")
    assert (claims["svc"], claims["ep"], claims["iss"]) == ("VOICE", "+447700900123", "meterline")
    assert claims["exp"] - claims["iat"] == 24 * 3600
    header = jwt.get_unverified_header(ticket)
    assert (header["alg"], header["kid"]) == ("EdDSA", signer.public.key_id)


def test_the_public_key_alone_verifies_a_ticket_in_each_published_form(
    signer: TicketSigner,
) -> None:
    """What GetSessionTicketKey hands out: raw base64, PEM and a JWK, all the same key."""
    ticket = signer.issue("ses_1", "edge1")
    raw = Ed25519PublicKey.from_public_bytes(base64.b64decode(signer.public.raw_base64))
    from_jwk = jwt.PyJWK.from_json(signer.public.jwk).key
    for key in (signer.public.pem, raw, from_jwk):
        claims = jwt.decode(ticket, key, algorithms=["EdDSA"], audience="edge1")
        assert claims["sub"] == "ses_1"
    assert json.loads(signer.public.jwk)["kid"] == signer.public.key_id


def test_a_tampered_ticket_another_gateways_and_an_expired_one_are_refused(
    signer: TicketSigner,
) -> None:
    ticket = signer.issue("ses_1", "edge1")
    header, claims, signature = ticket.split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged_claims["sub"] = "ses_2"
    forged = ".".join(
        [
            header,
            base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode(),
            signature,
        ]
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify_ticket(forged, signer.public.pem, "edge1")
    with pytest.raises(jwt.InvalidAudienceError):
        verify_ticket(ticket, signer.public.pem, "edge2")
    other = TicketSigner(Ed25519PrivateKey.generate())
    with pytest.raises(jwt.InvalidSignatureError):
        verify_ticket(ticket, other.public.pem, "edge1")
    old = signer.issue("ses_1", "edge1", now=datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_ticket(old, signer.public.pem, "edge1")
    # The shared-secret algorithm cannot stand in for the key (no HS256 "with the PEM").
    hs256 = jwt.encode({"sub": "ses_1", "aud": "edge1"}, SECRET, algorithm="HS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify_ticket(hs256, signer.public.pem, "edge1")


def test_every_service_manager_sharing_the_token_secret_signs_with_one_key() -> None:
    assert derived_key(SECRET).private_bytes_raw() == derived_key(SECRET).private_bytes_raw()
    assert derived_key(SECRET).private_bytes_raw() != derived_key(SECRET + "x").private_bytes_raw()
    settings = Settings(token_secret=SECRET)
    assert ticket_key(settings).private_bytes_raw() == derived_key(SECRET).private_bytes_raw()


def test_a_configured_key_file_is_used_and_checked(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ticket.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = replace(
        Settings(token_secret=SECRET), gateways=GatewaySettings(ticket_key_file=path)
    )
    assert ticket_key(settings).private_bytes_raw() == key.private_bytes_raw()
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="METERLINE_SESSION_TICKET_KEY_FILE"):
        read_key_file(tmp_path / "bad.pem")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_key_file(tmp_path / "missing.pem")
