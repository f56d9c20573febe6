"""TLS for servers and channels: the files `TlsSettings` names, read and checked, as gRPC
credentials. The one place that decides between TLS and plaintext.

- `server_credentials`: what a service listens with. Without a certificate it refuses,
  unless `METERLINE_PLAINTEXT=1` asked for plaintext.
- `channel_credentials`: what an outgoing channel (service to service, CLI) uses: the
  trusted authorities, and this process's certificate as its client certificate.
- `handshake_problem`: a failed call's details read as a TLS problem, in words a person
  can act on.

A bad or unreadable file is a `ConfigError` naming the variable and the file.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meterline.kernel.config import ClientAuth, ConfigError, TlsSettings

log = logging.getLogger(__name__)

NO_CERTIFICATE = (
    "This service has no TLS certificate: set METERLINE_TLS_CERT_FILE and "
    "METERLINE_TLS_KEY_FILE to its certificate and key (`meterline certs dev` makes a "
    "development set), or set METERLINE_PLAINTEXT=1 to serve without TLS (for development "
    "on loopback only)."
)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """The credentials a server listens with; None only when plaintext was asked for."""
    if tls.plaintext:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError(NO_CERTIFICATE)
    chain, key = _identity(tls.cert_file, tls.key_file)
    if tls.client_auth is ClientAuth.REQUIRE:
        if tls.ca_file is None:
            raise ConfigError(
                "METERLINE_TLS_CLIENT_AUTH=require needs METERLINE_TLS_CA_FILE: the "
                "authority whose client certificates are accepted."
            )
        roots = _certificates(tls.ca_file, "METERLINE_TLS_CA_FILE")
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=roots, require_client_auth=True
        )
    return grpc.ssl_server_credentials([(key, chain)])


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """The credentials of an outgoing channel; None only when plaintext was asked for.
    Trusts METERLINE_TLS_CA_FILE (else the system's roots) and presents this process's
    certificate, if it has one, to servers that ask for a client certificate."""
    if tls.plaintext:
        return None
    roots = _certificates(tls.ca_file, "METERLINE_TLS_CA_FILE") if tls.ca_file else None
    if tls.cert_file is not None and tls.key_file is not None:
        chain, key = _identity(tls.cert_file, tls.key_file)
        return grpc.ssl_channel_credentials(roots, key, chain)
    return grpc.ssl_channel_credentials(roots)


def handshake_problem(details: str | None, tls: TlsSettings) -> str | None:
    """What the details of a call that failed UNAVAILABLE say about TLS, as a sentence a
    person can act on; None when they say nothing about it. `tls`: the caller's settings."""
    text = (details or "").lower()
    if "certificate_verify_failed" in text:
        trusted = f"the CA in {tls.ca_file}" if tls.ca_file else "the system's authorities"
        return (
            f"the server's certificate is not signed by an authority this client trusts "
            f"({trusted}): set METERLINE_TLS_CA_FILE to the CA certificate that signed it"
        )
    if "hostname verification" in text:
        return (
            "the server's certificate is not valid for the address used: connect by a name it "
            "carries, or make it with that name too (`meterline certs dev --name NAME`)"
        )
    if "wrong_version_number" in text:
        return (
            "the server does not speak TLS: if it runs without TLS on purpose, set "
            "METERLINE_PLAINTEXT=1 for this client too"
        )
    if "socket closed" in text:
        # What a client sees when the server ends the handshake: a plaintext client at a
        # TLS server, or a TLS client without the certificate the server requires.
        if tls.plaintext:
            return (
                "the server closed the connection: it probably requires TLS; unset "
                "METERLINE_PLAINTEXT and set METERLINE_TLS_CA_FILE"
            )
        if tls.cert_file:
            return (
                "the server closed the connection in the TLS handshake: it probably does not "
                f"accept the client certificate in {tls.cert_file}"
            )
        return (
            "the server closed the connection in the TLS handshake: it probably requires a "
            "client certificate (mutual TLS); set METERLINE_TLS_CERT_FILE and "
            "METERLINE_TLS_KEY_FILE to one its CA signed"
        )
    if "handshake failed" in text:
        return "the TLS handshake with the server failed"
    return None


# -- reading and checking the files ----------------------------------------------------------


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path} ({error.strerror or error})") from error


def _certificates(path: Path, variable: str) -> bytes:
    data = _read(path, variable)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise ConfigError(f"{variable}: {path} holds no PEM certificate") from error
    now = datetime.now(UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc <= now:
            log.warning(
                "%s: a certificate in %s (%s) expired on %s",
                variable,
                path,
                certificate.subject.rfc4514_string(),
                certificate.not_valid_after_utc.isoformat(),
            )
    return data


def _identity(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """The certificate chain and its private key, checked to belong together."""
    chain = _certificates(cert_file, "METERLINE_TLS_CERT_FILE")
    key_pem = _read(key_file, "METERLINE_TLS_KEY_FILE")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"METERLINE_TLS_KEY_FILE: {key_file} is not an unencrypted PEM private key"
        ) from error
    leaf = x509.load_pem_x509_certificates(chain)[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(
            f"METERLINE_TLS_KEY_FILE: {key_file} is not the key of the certificate in "
            f"METERLINE_TLS_CERT_FILE ({cert_file})"
        )
    return chain, key_pem
