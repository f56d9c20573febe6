"""Subscriber identities: how a gateway names the subscriber behind it (an E.164 number,
an IMSI, a SIP URI, a user name), each mapped to one account. Values are checked and
stored in one normal form, so "+44 7700 900123" and "+447700900123" are one identity.
Pure; no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from meterline.kernel.errors import InvalidArgument

MAX_IDENTITY_LENGTH = 256
MAX_USER_NAME_LENGTH = 128
_MSISDN = re.compile(r"\+[1-9][0-9]{1,14}")
_IMSI = re.compile(r"[0-9]{6,15}")
_SIP_URI = re.compile(r"(?i)(sips?):([^@\s]+)@([^\s;?>]+)([;?][^\s]*)?")
_USER_NAME = re.compile(r"[!-~]+")
"""Printable ASCII without spaces."""


class IdentityKind(enum.StrEnum):
    MSISDN = "MSISDN"
    IMSI = "IMSI"
    SIP_URI = "SIP_URI"
    USER_NAME = "USER_NAME"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: IdentityKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.value}"


@dataclass(frozen=True, slots=True)
class AccountIdentity:
    account_id: str
    identity: Identity
    created_at: datetime


def normalized(kind: IdentityKind, value: str) -> Identity:
    """The identity in its normal form; InvalidArgument if the value is not one."""
    text = value.strip()
    if not text:
        raise InvalidArgument(f"The {kind.value} identity is empty.")
    if len(text) > MAX_IDENTITY_LENGTH:
        raise InvalidArgument(f"An identity is at most {MAX_IDENTITY_LENGTH} characters.")
    if kind is IdentityKind.MSISDN:
        number = re.sub(r"[\s().-]", "", text)
        if not _MSISDN.fullmatch(number):
            raise InvalidArgument(
                f"{value!r} is not an E.164 number: '+', the country code and the number, "
                "at most 15 digits in all (e.g. +447700900123)."
            )
        return Identity(kind, number)
    if kind is IdentityKind.IMSI:
        if not _IMSI.fullmatch(text):
            raise InvalidArgument(f"{value!r} is not an IMSI: 6 to 15 digits.")
        return Identity(kind, text)
    if kind is IdentityKind.SIP_URI:
        match = _SIP_URI.fullmatch(text)
        if match is None:
            raise InvalidArgument(f"{value!r} is not a SIP URI: sip:user@host or sips:user@host.")
        scheme, user, host, rest = match.groups()
        return Identity(kind, f"{scheme.lower()}:{user}@{host.lower()}{rest or ''}")
    if len(text) > MAX_USER_NAME_LENGTH or not _USER_NAME.fullmatch(text):
        raise InvalidArgument(
            f"{value!r} is not a user name: 1 to {MAX_USER_NAME_LENGTH} printable "
            "characters without spaces."
        )
    return Identity(kind, text)
