"""Development certificates: a private authority (CA), a server certificate and a client
certificate it signs, for a stack on one machine or one compose project. What
`meterline certs dev` writes, what `meterline up` makes for itself, what the tests use.

Not a PKI: the authority's private key is not kept, so nothing more can be signed with it;
making a new set replaces the authority too. A production installation uses certificates
from its own authority (docs/operations.md).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
"""Names every server certificate carries: a stack on loopback is reached by them."""
VALID_DAYS = 825
CLIENT_NAME = "meterline-dev-client"
# A server certificate closer than this to its end is made again by `meterline up`.
RENEW_BEFORE = timedelta(days=1)


@dataclass(frozen=True)
class DevCertificates:
    """Where one set lives: five PEM files in one folder."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The authority's certificate: what clients and services trust."""
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        """The services' certificate (served, and presented on service-to-service calls)."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        """A client certificate (the CLI's, or a device's) for mutual TLS."""
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.ca, self.server_cert, self.server_key, self.client_cert, self.client_key)

    def existing(self) -> list[Path]:
        return [path for path in self.files if path.exists()]

    def usable(self, now: datetime | None = None) -> bool:
        """All five files are there and the server certificate has a while to go."""
        if len(self.existing()) != len(self.files):
            return False
        try:
            certificate = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        except (OSError, ValueError):
            return False
        moment = now or datetime.now(UTC)
        return certificate.not_valid_after_utc - moment > RENEW_BEFORE


class CertificatesExist(FileExistsError):
    """`make_dev_certificates` without `force` found files it would replace."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        folder = paths[0].parent if paths else Path()
        names = ", ".join(path.name for path in paths)
        super().__init__(f"{folder} already holds {names}; give --force to replace them")


def make_dev_certificates(
    directory: Path,
    names: Iterable[str] = (),
    *,
    force: bool = False,
    days: int = VALID_DAYS,
) -> DevCertificates:
    """Write a new authority, a server certificate for `DEFAULT_NAMES` and `names` (DNS
    names or IP addresses), and a client certificate into `directory`. Private keys are
    written with mode 0600, each file replaced in one step (rename). Without `force`,
    raises CertificatesExist if any of the files is there."""
    certificates = DevCertificates(directory)
    if not force and (found := certificates.existing()):
        raise CertificatesExist(found)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.now(UTC)
    begins = now - timedelta(minutes=5)  # a little clock skew between machines
    ends = now + timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meterline development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Meterline development CA"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begins)
        .not_valid_after(ends)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usages: list[x509.ObjectIdentifier], sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meterline development"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(begins)
            .not_valid_after(ends)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # The server certificate is also the client certificate a service presents to its
    # peers when they require mutual TLS, hence both usages.
    server, server_key = leaf(
        "meterline-dev-server",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [_general_name(name) for name in _unique([*DEFAULT_NAMES, *names])],
    )
    client, client_key = leaf(
        CLIENT_NAME, [ExtendedKeyUsageOID.CLIENT_AUTH], [x509.DNSName(CLIENT_NAME)]
    )
    _write(certificates.ca, _pem(ca), 0o644)
    _write(certificates.server_key, _key_pem(server_key), 0o600)
    _write(certificates.server_cert, _pem(server), 0o644)
    _write(certificates.client_key, _key_pem(client_key), 0o600)
    _write(certificates.client_cert, _pem(client), 0o644)
    return certificates


def ensure_dev_certificates(directory: Path) -> tuple[DevCertificates, bool]:
    """The set in `directory` if it is complete and not about to expire, else a new one;
    and whether it was made now."""
    certificates = DevCertificates(directory)
    if certificates.usable():
        return certificates, False
    return make_dev_certificates(directory, force=True), True


def server_names(path: Path) -> list[str]:
    """The names (DNS and IP) a certificate file is valid for."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in sans if isinstance(name, x509.DNSName | x509.IPAddress)]


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file of `mode` beside `path`, then rename it over `path`: a
    reader sees the old file or the new one, never half of one, and a key is never
    readable by others, not even for a moment."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        with os.fdopen(os.open(temporary, flags, mode), "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have taken bits away: exactly these
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
