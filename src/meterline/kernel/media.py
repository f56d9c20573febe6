"""The media channels Meterline meters and the units they are counted in. The names
match the wire enums (meterline.rating.v1.ServiceType and Unit) exactly."""

from __future__ import annotations

import enum


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


NATURAL_UNIT: dict[ServiceType, Unit] = {
    ServiceType.VOICE: Unit.SECOND,
    ServiceType.VIDEO: Unit.SECOND,
    ServiceType.INSTANT_MESSAGING: Unit.MESSAGE,
    ServiceType.WEB_BROWSING: Unit.BYTE,
    ServiceType.FILE_DOWNLOAD: Unit.BYTE,
    ServiceType.APPLICATION: Unit.EVENT,
}
"""The unit each channel is usually metered in (a tariff may choose another)."""
