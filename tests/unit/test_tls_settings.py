"""meterline.kernel.config (TLS settings), kernel.tls (reading and checking the files) and
kernel.dev_certificates (what `meterline certs dev` and `meterline up` make)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meterline.kernel.config import ClientAuth, ConfigError, TlsSettings, load_settings
from meterline.kernel.dev_certificates import (
    CertificatesExist,
    DevCertificates,
    ensure_dev_certificates,
    make_dev_certificates,
    server_names,
)
from meterline.kernel.tls import (
    NO_CERTIFICATE,
    channel_credentials,
    handshake_problem,
    server_credentials,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("tls"), ["service-manager", "10.1.2.3"])


def served(certificates: DevCertificates, **changes: Any) -> TlsSettings:
    """A service's settings with the test certificates, and `changes`."""
    tls = TlsSettings(
        cert_file=certificates.server_cert,
        key_file=certificates.server_key,
        ca_file=certificates.ca,
    )
    return replace(tls, **changes)


# -- the settings -----------------------------------------------------------------------------


def test_tls_is_the_default_and_nothing_is_configured() -> None:
    tls = load_settings({}).tls
    assert tls == TlsSettings()
    assert not tls.plaintext and tls.client_auth is ClientAuth.NONE and not tls.configured


def test_the_variables_are_read() -> None:
    tls = load_settings(
        {
            "METERLINE_TLS_CERT_FILE": "/c/server.pem",
            "METERLINE_TLS_KEY_FILE": "/c/server-key.pem",
            "METERLINE_TLS_CA_FILE": "/c/ca.pem",
            "METERLINE_TLS_CLIENT_AUTH": "REQUIRE",
        }
    ).tls
    assert tls.cert_file == Path("/c/server.pem") and tls.key_file == Path("/c/server-key.pem")
    assert tls.ca_file == Path("/c/ca.pem") and tls.client_auth is ClientAuth.REQUIRE
    assert load_settings({"METERLINE_PLAINTEXT": "1"}).tls.plaintext


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METERLINE_TLS_CERT_FILE": "/c.pem"}, "METERLINE_TLS_KEY_FILE go together"),
        ({"METERLINE_TLS_KEY_FILE": "/k.pem"}, "METERLINE_TLS_CERT_FILE and"),
        ({"METERLINE_TLS_CLIENT_AUTH": "optional"}, "not one of: none, require"),
        ({"METERLINE_PLAINTEXT": "1", "METERLINE_TLS_CA_FILE": "/ca.pem"}, "turns TLS off"),
        ({"METERLINE_PLAINTEXT": "maybe"}, "not true or false"),
        (
            {"METERLINE_PLAINTEXT": "1", "METERLINE_TLS_CLIENT_AUTH": "require"},
            "require needs TLS",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


# -- server and channel credentials -----------------------------------------------------------


def test_a_server_without_a_certificate_refuses_with_what_to_set() -> None:
    with pytest.raises(ConfigError) as raised:
        server_credentials(TlsSettings())
    assert str(raised.value) == NO_CERTIFICATE
    for variable in ("METERLINE_TLS_CERT_FILE", "METERLINE_TLS_KEY_FILE", "METERLINE_PLAINTEXT=1"):
        assert variable in NO_CERTIFICATE
    assert "\n" not in NO_CERTIFICATE


def test_plaintext_only_when_asked_for(certificates: DevCertificates) -> None:
    assert server_credentials(TlsSettings(plaintext=True)) is None
    assert channel_credentials(TlsSettings(plaintext=True)) is None
    assert server_credentials(served(certificates)) is not None
    assert server_credentials(served(certificates, client_auth=ClientAuth.REQUIRE)) is not None
    assert channel_credentials(TlsSettings()) is not None  # the system's roots
    assert channel_credentials(served(certificates)) is not None


def test_mutual_tls_needs_the_authority(certificates: DevCertificates) -> None:
    with pytest.raises(ConfigError, match="require needs METERLINE_TLS_CA_FILE"):
        server_credentials(served(certificates, ca_file=None, client_auth=ClientAuth.REQUIRE))


def test_a_file_that_cannot_be_read_is_named(certificates: DevCertificates, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    for settings, variable in (
        (served(certificates, cert_file=missing), "METERLINE_TLS_CERT_FILE"),
        (served(certificates, key_file=missing), "METERLINE_TLS_KEY_FILE"),
        (
            served(certificates, ca_file=missing, client_auth=ClientAuth.REQUIRE),
            "METERLINE_TLS_CA_FILE",
        ),
    ):
        with pytest.raises(ConfigError) as raised:
            server_credentials(settings)
        assert str(raised.value).startswith(f"{variable}: cannot read {missing}")
    with pytest.raises(ConfigError, match="METERLINE_TLS_CA_FILE: cannot read"):
        channel_credentials(TlsSettings(ca_file=missing))


def test_files_that_are_not_what_they_should_be_are_named(
    certificates: DevCertificates, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"METERLINE_TLS_CERT_FILE: {garbage} holds no PEM"):
        server_credentials(served(certificates, cert_file=garbage))
    with pytest.raises(ConfigError, match=f"METERLINE_TLS_KEY_FILE: {garbage} is not an unenc"):
        server_credentials(served(certificates, key_file=garbage))
    # The certificate as its own key, and the client's key for the server's certificate.
    with pytest.raises(ConfigError, match="METERLINE_TLS_KEY_FILE"):
        server_credentials(served(certificates, key_file=certificates.server_cert))
    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        server_credentials(served(certificates, key_file=certificates.client_key))


@pytest.mark.parametrize(
    ("details", "tls", "says"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
            "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
            "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer",
            TlsSettings(ca_file=Path("/x/ca.pem")),
            "not signed by an authority this client trusts (the CA in /x/ca.pem)",
        ),
        (
            "last error: UNKNOWN: ipv4:127.0.0.2:1: Custom verification check failed with "
            "error: UNAUTHENTICATED: Hostname Verification Check failed.",
            TlsSettings(),
            "not valid for the address used",
        ),
        (
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
            "routines:OPENSSL_internal:WRONG_VERSION_NUMBER",
            TlsSettings(),
            "does not speak TLS",
        ),
        ("last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed", TlsSettings(), "mutual TLS"),
        (
            "last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
            TlsSettings(plaintext=True),
            "requires TLS",
        ),
    ],
)
def test_handshake_failures_are_told_in_words(details: str, tls: TlsSettings, says: str) -> None:
    problem = handshake_problem(details, tls)
    assert problem is not None and says in problem


def test_other_failures_are_not_called_tls_problems() -> None:
    details = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
    assert handshake_problem(details, TlsSettings()) is None
    assert handshake_problem(None, TlsSettings()) is None


# -- development certificates -----------------------------------------------------------------


def test_dev_certificates_are_a_ca_a_server_and_a_client(certificates: DevCertificates) -> None:
    ca = x509.load_pem_x509_certificate(certificates.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certificates.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(certificates.client_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
    assert server_names(certificates.server_cert) == [
        "localhost",
        "127.0.0.1",
        "::1",
        "service-manager",
        "10.1.2.3",
    ]
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # Served, and presented by a service to peers that require client certificates.
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client_usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_for_the_owner_only(certificates: DevCertificates) -> None:
    modes = {path.name: path.stat().st_mode & 0o777 for path in certificates.files}
    assert modes == {
        "ca.pem": 0o644,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
        "client.pem": 0o644,
        "client-key.pem": 0o600,
    }


def test_existing_files_are_replaced_only_with_force(tmp_path: Path) -> None:
    first = make_dev_certificates(tmp_path)
    before = {path: path.read_bytes() for path in first.files}
    with pytest.raises(CertificatesExist) as raised:
        make_dev_certificates(tmp_path)
    assert "give --force" in str(raised.value) and str(tmp_path) in str(raised.value)
    assert {path: path.read_bytes() for path in first.files} == before
    (tmp_path / "server.pem").unlink()
    with pytest.raises(CertificatesExist):  # any one of them is enough to refuse
        make_dev_certificates(tmp_path)
    again = make_dev_certificates(tmp_path, force=True)
    assert again.ca.read_bytes() != before[first.ca]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in again.files)


def test_meterline_up_reuses_its_certificates_until_they_run_out(tmp_path: Path) -> None:
    made, fresh = ensure_dev_certificates(tmp_path)
    assert fresh
    ca = made.ca.read_bytes()
    again, fresh = ensure_dev_certificates(tmp_path)
    assert not fresh and again.ca.read_bytes() == ca
    assert not made.usable(datetime.now(UTC) + timedelta(days=900))
    make_dev_certificates(tmp_path, force=True, days=0)  # a set that has run out
    renewed, fresh = ensure_dev_certificates(tmp_path)
    assert fresh and renewed.usable()
