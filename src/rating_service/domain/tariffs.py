"""Tariffs, their validation, and finding the one that applies to an endpoint."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from meterline.kernel import money
from meterline.kernel.errors import InvalidArgument, NotFound
from meterline.kernel.media import ServiceType, Unit, validate_endpoint
from meterline.kernel.pricing import Price, RateTerms, price_units

MAX_PREFIX_LENGTH = 64
MAX_UNITS = 10**15
MAX_PRICE_MICROS = 10**12  # one million currency units


@dataclass(frozen=True, slots=True)
class Tariff:
    tariff_id: str
    service_type: ServiceType
    prefix: str
    """Endpoint prefix; '' is the fallback of its service type."""
    unit: Unit
    terms: RateTerms
    currency: str
    description: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RatedUsage:
    tariff: Tariff
    price: Price


def validate_units(units: int) -> int:
    if units < 0:
        raise InvalidArgument(f"units cannot be negative (got {units}).")
    if units > MAX_UNITS:
        raise InvalidArgument(f"units cannot exceed {MAX_UNITS} in one record.")
    return units


def validate_tariff(tariff: Tariff) -> Tariff:
    """Refuse a tariff that could not price usage sensibly; the message names the field."""
    if len(tariff.prefix) > MAX_PREFIX_LENGTH:
        raise InvalidArgument(f"prefix is longer than {MAX_PREFIX_LENGTH} characters.")
    if tariff.prefix and (not tariff.prefix.isprintable() or " " in tariff.prefix):
        raise InvalidArgument("prefix may not contain spaces or control characters.")
    terms = tariff.terms
    if terms.price_per_unit_micros < 0:
        raise InvalidArgument("price_per_unit_micros cannot be negative.")
    if terms.increment_units < 1:
        raise InvalidArgument("increment_units must be at least 1.")
    if terms.minimum_units < 0:
        raise InvalidArgument("minimum_units cannot be negative.")
    if terms.setup_fee_micros < 0:
        raise InvalidArgument("setup_fee_micros cannot be negative.")
    for value in (terms.price_per_unit_micros, terms.setup_fee_micros):
        if value > MAX_PRICE_MICROS:
            raise InvalidArgument(
                f"{money.format_amount(value)} is more than a tariff price may be "
                f"({money.format_amount(MAX_PRICE_MICROS)})."
            )
    try:
        money.check_currency(tariff.currency)
    except money.AmountError as exc:
        raise InvalidArgument(str(exc)) from exc
    return tariff


class TariffIndex:
    """The active tariffs, indexed for longest-prefix match without I/O."""

    def __init__(self, tariffs: Iterable[Tariff] = ()) -> None:
        self._by_type: dict[ServiceType, dict[str, Tariff]] = {}
        self._longest: dict[ServiceType, int] = {}
        for tariff in tariffs:
            self._by_type.setdefault(tariff.service_type, {})[tariff.prefix] = tariff
            self._longest[tariff.service_type] = max(
                self._longest.get(tariff.service_type, 0), len(tariff.prefix)
            )

    def __len__(self) -> int:
        return sum(len(prefixes) for prefixes in self._by_type.values())

    def match(self, service_type: ServiceType, endpoint: str) -> Tariff:
        """The tariff whose prefix is the longest one the endpoint starts with."""
        validate_endpoint(endpoint)
        prefixes = self._by_type.get(service_type, {})
        for length in range(min(len(endpoint), self._longest.get(service_type, 0)), -1, -1):
            tariff = prefixes.get(endpoint[:length])
            if tariff is not None:
                return tariff
        raise NotFound(
            f"No {service_type} tariff matches endpoint {endpoint!r}: it is not a destination "
            "this operator serves.",
            reason="UNKNOWN_ENDPOINT",
        )

    def rate(self, service_type: ServiceType, endpoint: str, units: int) -> RatedUsage:
        tariff = self.match(service_type, endpoint)
        return RatedUsage(tariff, price_units(tariff.terms, validate_units(units)))


def with_id(tariff: Tariff, tariff_id: str) -> Tariff:
    return replace(tariff, tariff_id=tariff_id)
