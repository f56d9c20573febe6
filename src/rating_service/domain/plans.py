"""Rate plans: a named set of tariffs with its time zone and time bands."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.kernel.bands import BandRule, BandSchedule, validate_band_name
from meterline.kernel.errors import InvalidArgument

DEFAULT_PLAN_ID = "default"
MAX_PLAN_ID_LENGTH = 64
MAX_DISPLAY_NAME_LENGTH = 200


@dataclass(frozen=True)
class RatePlan:
    plan_id: str
    display_name: str
    schedule: BandSchedule
    is_default: bool = False


DEFAULT_PLAN = RatePlan(DEFAULT_PLAN_ID, "Default", BandSchedule(), is_default=True)


def validate_plan_id(plan_id: str) -> str:
    cleaned = plan_id.strip()
    if not cleaned:
        raise InvalidArgument("rate_plan_id is empty.")
    if len(cleaned) > MAX_PLAN_ID_LENGTH or not all(
        char.isalnum() or char in "-_." for char in cleaned
    ):
        raise InvalidArgument(
            f"rate_plan_id {plan_id!r}: use up to {MAX_PLAN_ID_LENGTH} letters, digits, "
            "'-', '_' or '.'."
        )
    return cleaned


def new_plan(
    plan_id: str,
    display_name: str,
    time_zone: str,
    default_band: str,
    rules: list[BandRule],
    is_default: bool = False,
) -> RatePlan:
    """A validated plan (the schedule checks the time zone and every band's span)."""
    if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(f"display_name is longer than {MAX_DISPLAY_NAME_LENGTH} characters.")
    schedule = BandSchedule(
        time_zone=time_zone.strip() or "UTC",
        default_band=validate_band_name(default_band or "STANDARD"),
        rules=tuple(rules),
    )
    return RatePlan(
        plan_id=validate_plan_id(plan_id),
        display_name=display_name.strip() or plan_id,
        schedule=schedule,
        is_default=is_default,
    )
