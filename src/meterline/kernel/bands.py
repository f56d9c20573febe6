"""Time bands: which band (PEAK, OFF_PEAK, WEEKEND, ...) a moment falls in, by day of
week and local time of day in a rate plan's time zone, and how a span of time splits
across bands. Daylight-saving changes are honoured: a band boundary at 18:00 local is
18:00 on the wall clock, whatever the UTC offset that day."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterline.kernel.errors import InvalidArgument

DAY_NAMES = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class BandRule:
    """`band` applies on `days` (0 = Monday) from `start_minute` to `end_minute` local
    time (end exclusive; 1440 = midnight at the end of the day)."""

    band: str
    days: frozenset[int]
    start_minute: int
    end_minute: int


def parse_days(text: str) -> frozenset[int]:
    """ "MON-FRI", "SAT,SUN", "MON,WED-FRI", "ALL" -> weekday numbers (0 = Monday)."""
    cleaned = text.strip().upper()
    if cleaned in ("ALL", "*", "MON-SUN"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in cleaned.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start = DAY_NAMES.index(first.strip())
            end = DAY_NAMES.index(last.strip()) if last else start
        except ValueError as exc:
            raise InvalidArgument(
                f"days {text!r}: use MON..SUN, ranges like MON-FRI, lists like SAT,SUN, or ALL"
            ) from exc
        if end < start:
            raise InvalidArgument(f"days {text!r}: a range must run forward (MON-FRI)")
        days.update(range(start, end + 1))
    return frozenset(days)


def format_days(days: frozenset[int]) -> str:
    return ",".join(DAY_NAMES[day] for day in sorted(days))


def parse_clock(text: str) -> int:
    """ "08:00" -> 480 minutes; "24:00" is the end of the day."""
    hours, _, minutes = text.strip().partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise InvalidArgument(f"time {text!r}: write it as HH:MM, e.g. 08:00 or 24:00")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > MINUTES_PER_DAY:
        raise InvalidArgument(f"time {text!r} is not a time of day (00:00 to 24:00)")
    return value


def format_clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def validate_band_name(name: str) -> str:
    cleaned = name.strip().upper()
    if not cleaned or not cleaned.replace("_", "").isalnum() or len(cleaned) > 32:
        raise InvalidArgument(f"band {name!r}: use letters, digits and _ (e.g. PEAK, OFF_PEAK)")
    return cleaned


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(
            f"time zone {name!r} is not known; use an IANA name like Europe/London"
        ) from exc


def wall_clock_instant(wall: datetime, tz: ZoneInfo) -> int:
    """The epoch second a naive local wall-clock time happens in `tz`: its first occurrence
    when clocks go back, and the moment the clock jumps when it falls in the hour skipped
    when clocks go forward."""
    before = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    after = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    if before <= after:
        return before  # exists (before == after) or happens twice (the first is before)
    # Skipped: the jump lies between `after` and `before`; find the first second with the
    # new offset.
    new_offset = datetime.fromtimestamp(before, tz).utcoffset()
    low, high = after, before
    while low < high:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == new_offset:
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class BandSchedule:
    """A plan's bands. Moments no rule covers are in `default_band`; where rules overlap,
    the first listed wins."""

    time_zone: str = "UTC"
    default_band: str = "STANDARD"
    rules: tuple[BandRule, ...] = ()
    _days: dict[date, tuple[list[int], list[int], list[str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        zone(self.time_zone)
        for rule in self.rules:
            if not 0 <= rule.start_minute < rule.end_minute <= MINUTES_PER_DAY:
                raise InvalidArgument(
                    f"band {rule.band}: from {format_clock(rule.start_minute)} to "
                    f"{format_clock(rule.end_minute)} is not a forward span within one day"
                )
            if not rule.days:
                raise InvalidArgument(f"band {rule.band}: no days given")

    @property
    def is_flat(self) -> bool:
        return not self.rules

    def _template(self, weekday: int) -> list[tuple[int, int, str]]:
        """(start_minute, end_minute, band) covering the whole day, in order."""
        owner = [self.default_band] * MINUTES_PER_DAY
        for rule in reversed(self.rules):  # first listed wins
            if weekday in rule.days:
                owner[rule.start_minute : rule.end_minute] = [rule.band] * (
                    rule.end_minute - rule.start_minute
                )
        spans: list[tuple[int, int, str]] = []
        start = 0
        for minute in range(1, MINUTES_PER_DAY + 1):
            if minute == MINUTES_PER_DAY or owner[minute] != owner[start]:
                spans.append((start, minute, owner[start]))
                start = minute
        return spans

    def _day(self, day: date) -> tuple[list[int], list[int], list[str]]:
        """The day's spans as epoch seconds: starts, ends, bands. Cached per date."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        tz = zone(self.time_zone)
        midnight = datetime(day.year, day.month, day.day)
        starts: list[int] = []
        ends: list[int] = []
        bands: list[str] = []
        for start, end, band in self._template(day.weekday()):
            starts.append(wall_clock_instant(midnight + timedelta(minutes=start), tz))
            ends.append(wall_clock_instant(midnight + timedelta(minutes=end), tz))
            bands.append(band)
        if len(self._days) > 4096:
            self._days.clear()
        self._days[day] = (starts, ends, bands)
        return starts, ends, bands

    def band_at(self, epoch_seconds: int) -> str:
        if self.is_flat:
            return self.default_band
        return self.split(epoch_seconds, 1)[0][0]

    def split(self, start: int, seconds: int) -> list[tuple[str, int, int]]:
        """[(band, start, seconds)] covering [start, start + seconds), adjacent parts of
        the same band merged."""
        if self.is_flat or seconds <= 0:
            return [(self.default_band, start, seconds)]
        tz = zone(self.time_zone)
        parts: list[tuple[str, int, int]] = []
        moment, end = start, start + seconds
        while moment < end:
            local_day = datetime.fromtimestamp(moment, tz).date()
            starts, ends, bands = self._day(local_day)
            index = bisect.bisect_right(starts, moment) - 1
            if index < 0 or moment >= ends[index]:
                # A moment skipped or repeated by a clock change: take the nearest span.
                index = max(0, min(index, len(starts) - 1))
            stop = min(max(ends[index], moment + 1), end)
            band = bands[index]
            if parts and parts[-1][0] == band:
                previous = parts[-1]
                parts[-1] = (band, previous[1], previous[2] + stop - moment)
            else:
                parts.append((band, moment, stop - moment))
            moment = stop
        return parts


FLAT = BandSchedule()


def rule_to_json(rule: BandRule) -> dict[str, str]:
    """The stored and exported form of a band: {band, days, from, to}."""
    return {
        "band": rule.band,
        "days": format_days(rule.days),
        "from": format_clock(rule.start_minute),
        "to": format_clock(rule.end_minute),
    }


def rule_from_json(item: dict[str, str]) -> BandRule:
    return BandRule(
        band=validate_band_name(str(item["band"])),
        days=parse_days(str(item["days"])),
        start_minute=parse_clock(str(item["from"])),
        end_minute=parse_clock(str(item["to"])),
    )
