"""Tariffs, their validation, and finding the one that applies to a usage record.

Matching, per service type:
  VOICE, VIDEO, INSTANT_MESSAGING   longest prefix of the endpoint (+4420 beats +44)
  WEB_BROWSING, FILE_DOWNLOAD       the host or its closest parent domain
                                    (downloads.example.com, then example.com, then com)
  APPLICATION                       the application id
and in every case the plan's fallback (the tariff with an empty prefix) last.

Versions: each tariff key (plan, service type, prefix) has versions with an
effective-from time; a record is rated by the version in force when it started.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from meterline.kernel import money
from meterline.kernel.bands import FLAT, validate_band_name
from meterline.kernel.errors import InvalidArgument, NotFound
from meterline.kernel.media import ServiceType, Unit, validate_endpoint
from meterline.kernel.pricing import Price, RateTerms, price_amount, price_units
from rating_service.domain.plans import DEFAULT_PLAN, DEFAULT_PLAN_ID, RatePlan

MAX_PREFIX_LENGTH = 64
MAX_UNITS = 10**15
MAX_PRICE_MICROS = 10**12  # one million currency units
MAX_UNIT_SIZE = 10**12
MAX_TIERS = 16
MAX_DESCRIPTION_LENGTH = 500
FOREVER = 2**62


class MatchMode(enum.Enum):
    PREFIX = "prefix"
    DOMAIN = "domain"
    EXACT = "exact"


MATCH_MODE = {
    ServiceType.VOICE: MatchMode.PREFIX,
    ServiceType.VIDEO: MatchMode.PREFIX,
    ServiceType.INSTANT_MESSAGING: MatchMode.PREFIX,
    ServiceType.WEB_BROWSING: MatchMode.DOMAIN,
    ServiceType.FILE_DOWNLOAD: MatchMode.DOMAIN,
    ServiceType.APPLICATION: MatchMode.EXACT,
}


@dataclass(frozen=True, slots=True)
class Tariff:
    tariff_id: str
    service_type: ServiceType
    prefix: str
    """The match key: an endpoint prefix, a domain or an application id; '' is the
    plan's fallback for its service type."""
    unit: Unit
    terms: RateTerms
    currency: str
    description: str = ""
    updated_at: datetime | None = None
    plan_id: str = DEFAULT_PLAN_ID
    effective_from: datetime | None = None
    """When this version took effect; None for a first version (always in force)."""
    effective_to: datetime | None = None
    """When the next version took over; None while in force."""


@dataclass(frozen=True, slots=True)
class RatedUsage:
    tariff: Tariff
    plan: RatePlan
    price: Price


def validate_units(units: int) -> int:
    if units < 0:
        raise InvalidArgument(f"units cannot be negative (got {units}).")
    if units > MAX_UNITS:
        raise InvalidArgument(f"units cannot exceed {MAX_UNITS} in one record.")
    return units


def normalize_key(service_type: ServiceType, key: str) -> str:
    """How a tariff's match key is stored: domains in lower case without a leading dot."""
    key = key.strip()
    if MATCH_MODE[service_type] is MatchMode.DOMAIN:
        key = key.lower().removeprefix("*.").strip(".")
    return key


def _host(endpoint: str) -> str:
    if "://" in endpoint:
        host = urlsplit(endpoint).hostname or ""
    else:
        host = endpoint.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    host = host.lower().strip(".")
    if not host:
        raise InvalidArgument(f"endpoint {endpoint!r} names no host.")
    return host


def _check_price(value: int, field: str) -> None:
    if value < 0:
        raise InvalidArgument(f"{field} cannot be negative.")
    if value > MAX_PRICE_MICROS:
        raise InvalidArgument(
            f"{field}: {money.format_amount(value)} is more than a tariff price may be "
            f"({money.format_amount(MAX_PRICE_MICROS)})."
        )


def validate_tariff(tariff: Tariff) -> Tariff:
    """Refuse a tariff that could not price usage sensibly; the message names the field."""
    if len(tariff.prefix) > MAX_PREFIX_LENGTH:
        raise InvalidArgument(f"prefix is longer than {MAX_PREFIX_LENGTH} characters.")
    if tariff.prefix and (not tariff.prefix.isprintable() or " " in tariff.prefix):
        raise InvalidArgument("prefix may not contain spaces or control characters.")
    if len(tariff.description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters.")
    terms = tariff.terms
    _check_price(terms.price_per_unit_micros, "price_per_unit_micros")
    _check_price(terms.setup_fee_micros, "setup_fee_micros")
    if terms.increment_units < 1:
        raise InvalidArgument("increment_units must be at least 1.")
    if terms.first_increment_units < 0:
        raise InvalidArgument("first_increment_units cannot be negative.")
    if terms.minimum_units < 0:
        raise InvalidArgument("minimum_units cannot be negative.")
    if not 1 <= terms.unit_size <= MAX_UNIT_SIZE:
        raise InvalidArgument(f"unit_size must be between 1 and {MAX_UNIT_SIZE}.")
    seen: set[str] = set()
    for band, price in terms.band_prices:
        if validate_band_name(band) != band or band in seen:
            raise InvalidArgument(f"band {band!r} is not a valid, unique band name.")
        seen.add(band)
        _check_price(price, f"the {band} price")
    if terms.tiers:
        if terms.band_prices:
            raise InvalidArgument("a tariff has either time-band prices or volume tiers.")
        if len(terms.tiers) > MAX_TIERS:
            raise InvalidArgument(f"a tariff has at most {MAX_TIERS} volume tiers.")
        limits = [tier.up_to_units for tier in terms.tiers]
        if any(limit <= 0 for limit in limits[:-1]) or limits[-1] < 0:
            raise InvalidArgument("only the last volume tier may be unlimited (0).")
        if limits[:-1] != sorted(set(limits[:-1])) or (
            limits[-1] and len(limits) > 1 and limits[-1] <= limits[-2]
        ):
            raise InvalidArgument("volume tiers must have increasing limits.")
        for number, tier in enumerate(terms.tiers, start=1):
            _check_price(tier.price_per_unit_micros, f"tier {number}'s price")
    try:
        money.check_currency(tariff.currency)
    except money.AmountError as exc:
        raise InvalidArgument(str(exc)) from exc
    return tariff


def _epoch(moment: datetime | None, default: int) -> int:
    return default if moment is None else int(moment.timestamp())


class _Versions:
    """The versions of one tariff key, oldest first, with their spans as epoch seconds."""

    __slots__ = ("ends", "starts", "tariffs")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.tariffs: list[Tariff] = []

    def add(self, tariff: Tariff) -> None:
        self.tariffs.append(tariff)
        self.tariffs.sort(key=lambda t: _epoch(t.effective_from, -FOREVER))
        self.starts = [_epoch(t.effective_from, -FOREVER) for t in self.tariffs]
        self.ends = [_epoch(t.effective_to, FOREVER) for t in self.tariffs]

    def at(self, moment: int) -> Tariff | None:
        if len(self.tariffs) == 1:  # the usual case
            return self.tariffs[0] if self.starts[0] <= moment < self.ends[0] else None
        for index in range(len(self.tariffs) - 1, -1, -1):
            if self.starts[index] <= moment < self.ends[index]:
                return self.tariffs[index]
        return None


class TariffIndex:
    """Plans, tariffs and account assignments, indexed so rating does no I/O."""

    def __init__(
        self,
        tariffs: Iterable[Tariff] = (),
        plans: Iterable[RatePlan] = (),
        account_plans: Mapping[str, str] | None = None,
    ) -> None:
        self.plans: dict[str, RatePlan] = {plan.plan_id: plan for plan in plans}
        self.plans.setdefault(DEFAULT_PLAN_ID, DEFAULT_PLAN)
        defaults = [plan for plan in self.plans.values() if plan.is_default]
        self.default_plan = defaults[0] if defaults else self.plans[DEFAULT_PLAN_ID]
        self.account_plans = dict(account_plans or {})
        self._keys: dict[tuple[str, ServiceType], dict[str, _Versions]] = {}
        self._longest: dict[tuple[str, ServiceType], int] = {}
        self._count = 0
        for tariff in tariffs:
            slot = (tariff.plan_id, tariff.service_type)
            self._keys.setdefault(slot, {}).setdefault(tariff.prefix, _Versions()).add(tariff)
            self._longest[slot] = max(self._longest.get(slot, 0), len(tariff.prefix))
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def plan_for(self, account_id: str = "", plan_id: str = "") -> RatePlan:
        if plan_id:
            plan = self.plans.get(plan_id)
            if plan is None:
                raise NotFound(f"There is no rate plan {plan_id!r}.", reason="RATE_PLAN_NOT_FOUND")
            return plan
        if account_id:
            assigned = self.account_plans.get(account_id)
            if assigned is not None and assigned in self.plans:
                return self.plans[assigned]
        return self.default_plan

    def _candidates(self, service_type: ServiceType, endpoint: str, longest: int) -> Iterator[str]:
        mode = MATCH_MODE[service_type]
        if mode is MatchMode.PREFIX:
            for length in range(min(len(endpoint), longest), -1, -1):
                yield endpoint[:length]
        elif mode is MatchMode.DOMAIN:
            host = _host(endpoint)
            while host:
                yield host
                host = host.partition(".")[2]
            yield ""
        else:
            yield endpoint
            yield ""

    def match(
        self,
        service_type: ServiceType,
        endpoint: str,
        at: int | None = None,
        plan: RatePlan | None = None,
    ) -> Tariff:
        """The tariff in force at epoch second `at` (now if None) whose key best matches
        the endpoint."""
        validate_endpoint(endpoint)
        if at is None:
            at = int(time.time())
        plan = plan or self.default_plan
        slot = (plan.plan_id, service_type)
        keys = self._keys.get(slot)
        if keys and MATCH_MODE[service_type] is MatchMode.PREFIX:
            for length in range(min(len(endpoint), self._longest[slot]), -1, -1):
                versions = keys.get(endpoint[:length])
                if versions is not None:
                    tariff = versions.at(at)
                    if tariff is not None:
                        return tariff
        elif keys:
            for key in self._candidates(service_type, endpoint, self._longest[slot]):
                versions = keys.get(key)
                if versions is not None:
                    tariff = versions.at(at)
                    if tariff is not None:
                        return tariff
        raise NotFound(
            f"No {service_type} tariff of rate plan {plan.plan_id!r} matches endpoint "
            f"{endpoint!r}: it is not a destination this operator serves.",
            reason="UNKNOWN_ENDPOINT",
        )

    def rate(
        self,
        service_type: ServiceType,
        endpoint: str,
        units: int,
        at: int | None = None,
        account_id: str = "",
        plan_id: str = "",
    ) -> RatedUsage:
        if at is None:
            at = int(time.time())
        plan = self.plan_for(account_id, plan_id)
        tariff = self.match(service_type, endpoint, at, plan)
        timed = tariff.unit is Unit.SECOND
        # The plan's schedule also names the band of a tariff without band prices.
        price = price_units(tariff.terms, validate_units(units), at, plan.schedule, timed)
        return RatedUsage(tariff, plan, price)

    def quote(
        self,
        service_type: ServiceType,
        endpoint: str,
        units: int,
        at: int,
        account_id: str = "",
        plan_id: str = "",
    ) -> tuple[Tariff, int, int]:
        """(tariff, amount_micros, billed_units) of one record: `rate` without the parts,
        for bulk rating."""
        plan = self.plan_for(account_id, plan_id) if account_id or plan_id else self.default_plan
        tariff = self.match(service_type, endpoint, at, plan)
        amount, billed = price_amount(
            tariff.terms,
            validate_units(units),
            at,
            plan.schedule if tariff.terms.band_prices else FLAT,
            over_time=tariff.unit is Unit.SECOND,
        )
        return tariff, amount, billed
