"""The media channels Meterline meters and the units they are counted in. The names
match the wire enums (meterline.rating.v1.ServiceType and Unit) exactly."""

from __future__ import annotations

import enum

from meterline.kernel.errors import InvalidArgument

MAX_ENDPOINT_LENGTH = 256


class ServiceType(enum.StrEnum):
    VOICE = "VOICE"
    VIDEO = "VIDEO"
    INSTANT_MESSAGING = "INSTANT_MESSAGING"
    WEB_BROWSING = "WEB_BROWSING"
    FILE_DOWNLOAD = "FILE_DOWNLOAD"
    APPLICATION = "APPLICATION"


class Unit(enum.StrEnum):
    SECOND = "SECOND"
    BYTE = "BYTE"
    MESSAGE = "MESSAGE"
    EVENT = "EVENT"


def validate_endpoint(endpoint: str, field: str = "endpoint") -> str:
    """A phone number, host or application id: printable, no spaces, not too long."""
    if not endpoint or not endpoint.strip():
        raise InvalidArgument(f"{field} is empty: give the number, host or application used.")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise InvalidArgument(f"{field} is longer than {MAX_ENDPOINT_LENGTH} characters.")
    # isprintable() is False for every space but " ", which is looked for on its own.
    if not endpoint.isprintable() or " " in endpoint:
        raise InvalidArgument(f"{field} may not contain spaces or control characters.")
    return endpoint
