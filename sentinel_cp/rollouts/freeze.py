"""Freeze windows: when rollouts may not start or advance, as pure time arithmetic.

A project's freeze windows block starting rollouts and starting steps (tick step 2 in the
rollouts spec). This module answers only *is it frozen at `now`, by which windows, until when,
and when does that change*: values in, values out. Admin overrides and pausing are the engine's.

Two kinds of window:

- ``one_off``: the absolute range ``[starts_at, ends_at)``, aware datetimes kept in UTC.
- ``weekly``: on each of ``days`` (``"mon"`` … ``"sun"``) a freeze starts at the local wall-clock
  ``start_time`` (``"HH:MM"``) in the IANA ``time_zone`` and lasts ``duration_minutes`` (1 minute
  to 7 days). "Friday 22:00 to Monday 06:00" is ``days=["fri"], start_time="22:00",
  duration_minutes=3360``, so one window may cross midnight and the Sunday → Monday week boundary.
  Start plus duration, rather than start and end times, is the one representation because an end
  time cannot say "three days later". One window's occurrences must not overlap (the duration may
  not exceed the gap to the next selected day), so its "current occurrence" is always one span.

The time rules, chosen so that an operator's wall-clock intent holds on every date:

- Spans are half-open: active from the start (inclusive) to the end (exclusive), so windows that
  touch leave neither a gap nor an overlap.
- Durations are wall-clock, not elapsed: an occurrence ends at local ``start + duration`` on the
  calendar, in the same zone. Fri 22:00 + 56 h ends Mon 06:00 local even when a DST change that
  weekend makes it 55 or 57 real hours.
- A local time means *the first instant whose wall clock reads that time or later*:
  - inside a spring-forward gap it is the first valid instant after the gap (02:30 on
    Europe/Berlin 2026-03-29 is 03:00 CEST, 01:00 UTC); an occurrence whose start and end both
    fall inside the gap is empty and never active;
  - during a fall-back repeat it is the first of the two (``fold=0``: 02:30 on Europe/Berlin
    2026-10-25 is 02:30 CEST, 00:30 UTC).
"""

from __future__ import annotations

import functools
import heapq
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from sentinel_cp.errors import Invalid

Kind = Literal["one_off", "weekly"]

KINDS: tuple[Kind, ...] = ("one_off", "weekly")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_DURATION_MINUTES = 7 * 24 * 60
MAX_NAME_LENGTH = 100
MAX_REASON_LENGTH = 500
# `next_change` gives up (returns None) when a freeze holds continuously beyond this.
DEFAULT_HORIZON = timedelta(days=366)

# The longest occurrence (7 days) plus a day of slack for offset changes: an occurrence that
# started on an earlier local date cannot still be running.
_LOOKBACK = timedelta(days=8)
_COMMON_FIELDS = frozenset({"kind", "name", "reason"})
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "one_off": frozenset({"starts_at", "ends_at"}),
    "weekly": frozenset({"days", "start_time", "duration_minutes", "time_zone"}),
}
_HH_MM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")

Span = tuple[datetime, datetime]


@dataclass(frozen=True)
class FreezeWindow:
    """One project freeze window; see the module docstring for the two kinds and time rules.

    One-off windows set `starts_at`/`ends_at`; weekly windows set `days`, `start_time`,
    `duration_minutes` and `time_zone`. Construction checks every rule and raises `Invalid`.
    """

    kind: Kind
    name: str
    reason: str = ""
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    days: tuple[str, ...] = ()
    start_time: time | None = None
    duration_minutes: int | None = None
    time_zone: str | None = None

    def __post_init__(self) -> None:
        days = tuple(self.days)
        if all(day in DAY_NAMES for day in days):
            days = tuple(sorted(set(days), key=DAY_NAMES.index))
        object.__setattr__(self, "days", days)
        for field in ("starts_at", "ends_at"):
            value = getattr(self, field)
            if isinstance(value, datetime) and value.utcoffset() is not None:
                object.__setattr__(self, field, value.astimezone(UTC))
        problems = _window_problems(
            self.kind,
            name=self.name,
            reason=self.reason,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            days=self.days,
            start_time=self.start_time,
            duration_minutes=self.duration_minutes,
            time_zone=self.time_zone,
        )
        if problems:
            raise Invalid("Invalid freeze window", fields=problems)

    @classmethod
    def one_off(
        cls, name: str, starts_at: datetime, ends_at: datetime, *, reason: str = ""
    ) -> FreezeWindow:
        """A freeze over the absolute range `[starts_at, ends_at)`."""
        return cls("one_off", name, reason, starts_at=starts_at, ends_at=ends_at)

    @classmethod
    def weekly(
        cls,
        name: str,
        *,
        days: Iterable[str],
        start_time: time,
        duration_minutes: int,
        time_zone: str,
        reason: str = "",
    ) -> FreezeWindow:
        """A freeze starting at local `start_time` on each of `days`, lasting `duration_minutes`."""
        return cls(
            "weekly",
            name,
            reason,
            days=tuple(days),
            start_time=start_time,
            duration_minutes=duration_minutes,
            time_zone=time_zone,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FreezeWindow:
        """Parse the JSON form (as `to_dict` writes it); `Invalid` names every bad field."""
        if not isinstance(data, Mapping):
            raise Invalid("Invalid freeze window", fields={"window": ["must be an object"]})
        problems: dict[str, list[str]] = {}
        kind = data.get("kind")
        if kind not in KINDS:
            problems["kind"] = ["must be one_off or weekly"]
        known = _COMMON_FIELDS.union(*_KIND_FIELDS.values())
        own = _COMMON_FIELDS | _KIND_FIELDS[kind] if kind in KINDS else known
        for key in data:
            if key not in known:
                problems[str(key)] = ["unknown field"]
            elif key not in own:
                problems[str(key)] = [f"not allowed for {kind} windows"]

        values: dict[str, Any] = {"name": data.get("name"), "reason": data.get("reason", "")}
        if kind == "one_off":
            for field in ("starts_at", "ends_at"):
                values[field] = _parse_instant(data.get(field), field, problems)
        elif kind == "weekly":
            values["days"] = _parse_days(data.get("days"), problems)
            values["start_time"] = _parse_local_time(data.get("start_time"), problems)
            values["duration_minutes"] = _parse_minutes(data.get("duration_minutes"), problems)
            values["time_zone"] = data.get("time_zone")

        for field, found in _window_problems(cast(Kind, kind), **values).items():
            problems.setdefault(field, found)
        if problems:
            raise Invalid("Invalid freeze window", fields=problems)
        return cls(cast(Kind, kind), **values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form that `from_dict` reads."""
        data: dict[str, Any] = {"kind": self.kind, "name": self.name, "reason": self.reason}
        if self.kind == "one_off":
            start, end = self._one_off_span()
            data["starts_at"] = start.isoformat()
            data["ends_at"] = end.isoformat()
        else:
            assert self.start_time is not None
            data["days"] = list(self.days)
            data["start_time"] = self.start_time.strftime("%H:%M")
            data["duration_minutes"] = self.duration_minutes
            data["time_zone"] = self.time_zone
        return data

    @property
    def zone(self) -> ZoneInfo:
        """The weekly window's time zone (a one-off window has none: ValueError)."""
        if self.time_zone is None:
            raise ValueError("a one-off freeze window has no time zone")
        return ZoneInfo(self.time_zone)

    def _one_off_span(self) -> Span:
        # __post_init__ guarantees both for one-off windows.
        assert self.starts_at is not None and self.ends_at is not None
        return self.starts_at, self.ends_at


@dataclass(frozen=True)
class ActiveFreeze:
    """A window active at some instant, with the UTC span of its current occurrence.

    `ends_at` is where this occurrence ends; another window (or the next occurrence of a weekly
    window that abuts this one) may keep the freeze going: `next_change` says when it lifts.
    """

    window: FreezeWindow
    starts_at: datetime
    ends_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.to_dict(),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
        }


def active_windows(windows: Iterable[FreezeWindow], now: datetime) -> list[ActiveFreeze]:
    """The windows active at `now` (aware), in input order, each with its current occurrence."""
    now = _as_utc(now)
    active = []
    for window in windows:
        current = next(_occurrences(window, now), None)
        if current is not None and current[0] <= now:
            active.append(ActiveFreeze(window, current[0], current[1]))
    return active


def next_change(
    windows: Iterable[FreezeWindow], now: datetime, *, horizon: timedelta = DEFAULT_HORIZON
) -> datetime | None:
    """The first instant after `now` at which the freeze state (frozen or not) changes.

    Overlapping and touching windows count as one freeze, so a freeze handed from one window to
    the next is no change. None when nothing will ever change (no windows, or only past ones),
    or when the freeze holds without a break beyond `now + horizon` (weekly windows that together
    cover the whole week, or a long one-off window alongside weekly ones).
    """
    now = _as_utc(now)
    limit = now + horizon
    frozen_until: datetime | None = None
    for start, end in heapq.merge(*(_occurrences(window, now) for window in windows)):
        if frozen_until is None:
            if start > now:
                return start
            frozen_until = end
        elif start > frozen_until:
            return frozen_until
        elif start > limit:
            return None
        else:
            frozen_until = max(frozen_until, end)
    return frozen_until


def local_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """The first instant whose wall clock in `zone` reads naive `local` or later, in UTC.

    Ordinary times convert directly; a repeated (fall-back) time gives its first occurrence; a
    skipped (spring-forward) time gives the first instant after the gap.
    """
    first = local.replace(tzinfo=zone, fold=0)
    second = local.replace(tzinfo=zone, fold=1)
    before, after = first.utcoffset(), second.utcoffset()
    if before is None or after is None:
        raise ValueError(f"{zone} gives no UTC offset for {local}")
    earliest = first.astimezone(UTC)
    if before == after or earliest.astimezone(zone).replace(tzinfo=None) == local:
        return earliest
    # In a gap, fold=0 reads the time with the offset before the transition and fold=1 with the
    # one after; the transition lies between those two readings.
    naive_utc = local.replace(tzinfo=UTC)
    return _transition_between(naive_utc - after, naive_utc - before, zone)


def _transition_between(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second in (low, high] whose offset is the one `zone` has at `high`."""
    target = high.astimezone(zone).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _occurrences(window: FreezeWindow, since: datetime) -> Iterator[Span]:
    """Non-empty occurrences of `window` ending after `since`, by start (endless if weekly)."""
    if window.kind == "one_off":
        start, end = window._one_off_span()
        if end > since:
            yield start, end
        return
    assert window.start_time is not None and window.duration_minutes is not None
    zone = window.zone
    weekdays = {DAY_NAMES.index(day) for day in window.days}
    length = timedelta(minutes=window.duration_minutes)
    day: date = (since - _LOOKBACK).astimezone(zone).date()
    while True:
        if day.weekday() in weekdays:
            local_start = datetime.combine(day, window.start_time)
            start = local_to_utc(local_start, zone)
            end = local_to_utc(local_start + length, zone)
            if start < end and end > since:
                yield start, end
        day += timedelta(days=1)


def _as_utc(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


@functools.cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _window_problems(
    kind: Kind,
    *,
    name: object,
    reason: object,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    days: tuple[str, ...] = (),
    start_time: time | None = None,
    duration_minutes: int | None = None,
    time_zone: str | None = None,
) -> dict[str, list[str]]:
    """Every broken rule of a window made of typed values, by field."""
    problems: dict[str, list[str]] = {}

    def add(field: str, problem: str) -> None:
        problems.setdefault(field, []).append(problem)

    if name is None:
        add("name", "is required")
    elif not isinstance(name, str) or not name.strip():
        add("name", "must be a non-empty string")
    elif len(name) > MAX_NAME_LENGTH:
        add("name", f"must be at most {MAX_NAME_LENGTH} characters")
    if not isinstance(reason, str):
        add("reason", "must be a string")
    elif len(reason) > MAX_REASON_LENGTH:
        add("reason", f"must be at most {MAX_REASON_LENGTH} characters")
    if kind not in KINDS:
        add("kind", "must be one_off or weekly")
        return problems

    one_off_set = {"starts_at": starts_at is not None, "ends_at": ends_at is not None}
    weekly_set = {
        "days": bool(days),
        "start_time": start_time is not None,
        "duration_minutes": duration_minutes is not None,
        "time_zone": time_zone is not None,
    }
    for field, is_set in (weekly_set if kind == "one_off" else one_off_set).items():
        if is_set:
            add(field, f"not allowed for {kind} windows")

    if kind == "one_off":
        for field, value in (("starts_at", starts_at), ("ends_at", ends_at)):
            if value is None:
                add(field, "is required")
            elif not isinstance(value, datetime) or value.utcoffset() is None:
                add(field, "must be a date-time with a UTC offset")
        if "starts_at" not in problems and "ends_at" not in problems:
            assert starts_at is not None and ends_at is not None
            if ends_at <= starts_at:
                add("ends_at", "must be after starts_at")
        return problems

    if not days:
        add("days", "must name at least one day")
    for day in days:
        if day not in DAY_NAMES:
            add("days", f"unknown day {day!r}; use {', '.join(DAY_NAMES)}")
    if start_time is None:
        add("start_time", "is required")
    elif (
        not isinstance(start_time, time)
        or start_time.tzinfo is not None
        or start_time.second
        or start_time.microsecond
    ):
        add("start_time", "must be a local time of day in whole minutes (HH:MM)")
    if duration_minutes is None:
        add("duration_minutes", "is required")
    elif (
        not isinstance(duration_minutes, int)
        or isinstance(duration_minutes, bool)
        or not 1 <= duration_minutes <= MAX_DURATION_MINUTES
    ):
        add("duration_minutes", f"must be 1 to {MAX_DURATION_MINUTES} minutes (7 days)")
    elif "days" not in problems:
        gap = _shortest_gap_minutes(days)
        if duration_minutes > gap:
            add(
                "duration_minutes",
                f"must be at most {gap} minutes with these days, or occurrences would overlap",
            )
    if time_zone is None:
        add("time_zone", "is required")
    elif not isinstance(time_zone, str) or time_zone not in _known_time_zones():
        add("time_zone", f"unknown time zone {time_zone!r}; use an IANA name like Europe/Berlin")
    return problems


def _shortest_gap_minutes(days: tuple[str, ...]) -> int:
    """Minutes from each selected day's start to the next selected day's, at the shortest."""
    indexes = sorted({DAY_NAMES.index(day) for day in days})
    gaps = [b - a for a, b in zip(indexes, [*indexes[1:], indexes[0] + 7], strict=True)]
    return min(gaps) * 24 * 60


def _parse_instant(raw: object, field: str, problems: dict[str, list[str]]) -> datetime | None:
    if raw is None:
        return None
    value: datetime | None = None
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            value = None
    if value is None or value.utcoffset() is None:
        problems[field] = ["must be an ISO 8601 date-time with a UTC offset"]
        return None
    return value


def _parse_days(raw: object, problems: dict[str, list[str]]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not all(isinstance(day, str) for day in raw):
        problems["days"] = [f"must be a list of day names ({', '.join(DAY_NAMES)})"]
        return ()
    days = tuple(day.lower() for day in raw)
    unknown = [day for day in days if day not in DAY_NAMES]
    if unknown:
        problems["days"] = [f"unknown day {day!r}; use {', '.join(DAY_NAMES)}" for day in unknown]
        return ()
    return days


def _parse_local_time(raw: object, problems: dict[str, list[str]]) -> time | None:
    if raw is None:
        return None
    match = _HH_MM.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        problems["start_time"] = ["must be a local time of day as HH:MM (00:00 to 23:59)"]
        return None
    return time(int(match[1]), int(match[2]))


def _parse_minutes(raw: object, problems: dict[str, list[str]]) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool):
        problems["duration_minutes"] = ["must be a whole number of minutes"]
        return None
    return raw
