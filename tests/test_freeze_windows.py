"""Freeze windows: validation, boundaries, DST transitions, and a brute-force reference.

The rules under test (see `sentinel_cp.rollouts.freeze`): spans are [start, end); weekly
durations are wall-clock; a local time means the first instant whose wall clock reads it or
later (so a time in a spring-forward gap is the end of the gap, a repeated fall-back time its
first occurrence).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_cp.errors import Invalid
from sentinel_cp.rollouts.freeze import (
    DAY_NAMES,
    MAX_DURATION_MINUTES,
    ActiveFreeze,
    FreezeWindow,
    active_windows,
    local_to_utc,
    next_change,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def weekly(
    days: list[str], start: str, minutes: int, zone: str, name: str = "freeze"
) -> FreezeWindow:
    hour, minute = (int(part) for part in start.split(":"))
    return FreezeWindow.weekly(
        name, days=days, start_time=time(hour, minute), duration_minutes=minutes, time_zone=zone
    )


def span_at(window: FreezeWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The active occurrence of one window at `now`, or None."""
    active = active_windows([window], now)
    return (active[0].starts_at, active[0].ends_at) if active else None


def refused_fields(data: Any) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        FreezeWindow.from_dict(data)
    return caught.value.fields


WEEKLY_DICT: dict[str, Any] = {
    "kind": "weekly",
    "name": "weekend",
    "reason": "no changes over the weekend",
    "days": ["fri"],
    "start_time": "22:00",
    "duration_minutes": 56 * 60,
    "time_zone": BERLIN,
}
ONE_OFF_DICT: dict[str, Any] = {
    "kind": "one_off",
    "name": "black friday",
    "reason": "",
    "starts_at": "2026-11-27T00:00:00+00:00",
    "ends_at": "2026-11-30T12:00:00+00:00",
}


# --- the dictionary form and its validation -------------------------------------------------


def test_weekly_window_round_trips_through_its_dict() -> None:
    window = FreezeWindow.from_dict(WEEKLY_DICT)
    assert window.start_time == time(22, 0)
    assert window.to_dict() == WEEKLY_DICT


def test_one_off_window_round_trips_through_its_dict() -> None:
    assert FreezeWindow.from_dict(ONE_OFF_DICT).to_dict() == ONE_OFF_DICT


def test_one_off_times_are_kept_in_utc() -> None:
    window = FreezeWindow.from_dict(
        {**ONE_OFF_DICT, "starts_at": "2026-11-27T01:00:00+01:00", "ends_at": "2026-11-30T12:00Z"}
    )
    assert window.starts_at == utc(2026, 11, 27, 0, 0)
    assert window.starts_at is not None and window.starts_at.tzinfo is UTC
    assert window.to_dict()["ends_at"] == "2026-11-30T12:00:00+00:00"


def test_days_are_deduplicated_lowercased_and_put_in_week_order() -> None:
    window = FreezeWindow.from_dict(
        {**WEEKLY_DICT, "days": ["Sun", "mon", "sun"], "duration_minutes": 60}
    )
    assert window.days == ("mon", "sun")


def test_unknown_time_zone_is_refused_naming_time_zone() -> None:
    assert "time_zone" in refused_fields({**WEEKLY_DICT, "time_zone": "Mars/Olympus_Mons"})


@pytest.mark.parametrize("zone", ["", "../../etc/passwd", "/usr/share/zoneinfo/UTC", 1, None])
def test_time_zone_that_is_not_an_iana_name_is_refused(zone: object) -> None:
    assert "time_zone" in refused_fields({**WEEKLY_DICT, "time_zone": zone})


def test_one_off_end_before_start_is_refused_naming_ends_at() -> None:
    fields = refused_fields({**ONE_OFF_DICT, "ends_at": "2026-11-26T00:00:00+00:00"})
    assert fields == {"ends_at": ["must be after starts_at"]}


def test_one_off_end_equal_to_start_is_refused() -> None:
    fields = refused_fields({**ONE_OFF_DICT, "ends_at": ONE_OFF_DICT["starts_at"]})
    assert fields == {"ends_at": ["must be after starts_at"]}


@pytest.mark.parametrize("value", ["2026-11-27T00:00:00", "next friday", 20261127, None])
def test_one_off_start_without_offset_or_unparseable_is_refused(value: object) -> None:
    assert "starts_at" in refused_fields({**ONE_OFF_DICT, "starts_at": value})


def test_empty_days_are_refused_naming_days() -> None:
    assert refused_fields({**WEEKLY_DICT, "days": []}) == {"days": ["must name at least one day"]}


@pytest.mark.parametrize("days", [["friday"], ["fri", 5], "fri", None])
def test_days_that_are_not_a_list_of_day_names_are_refused(days: object) -> None:
    assert "days" in refused_fields({**WEEKLY_DICT, "days": days})


def test_duration_over_seven_days_is_refused_naming_duration() -> None:
    fields = refused_fields({**WEEKLY_DICT, "duration_minutes": MAX_DURATION_MINUTES + 1})
    assert list(fields) == ["duration_minutes"]


@pytest.mark.parametrize("minutes", [0, -60, True, 60.0, "60", None])
def test_duration_that_is_not_a_positive_whole_number_of_minutes_is_refused(
    minutes: object,
) -> None:
    assert "duration_minutes" in refused_fields({**WEEKLY_DICT, "duration_minutes": minutes})


def test_a_seven_day_duration_on_one_day_is_allowed() -> None:
    window = FreezeWindow.from_dict({**WEEKLY_DICT, "duration_minutes": MAX_DURATION_MINUTES})
    assert window.duration_minutes == MAX_DURATION_MINUTES


def test_occurrences_that_would_overlap_are_refused_naming_duration() -> None:
    fields = refused_fields({**WEEKLY_DICT, "days": ["fri", "sat"], "duration_minutes": 1441})
    assert fields == {
        "duration_minutes": [
            "must be at most 1440 minutes with these days, or occurrences would overlap"
        ]
    }


def test_daily_occurrences_that_touch_are_allowed() -> None:
    window = FreezeWindow.from_dict(
        {**WEEKLY_DICT, "days": list(DAY_NAMES), "start_time": "00:00", "duration_minutes": 1440}
    )
    assert len(window.days) == 7


@pytest.mark.parametrize("value", ["24:00", "7:30", "12:60", "12:00:00", "noon", 1200, None])
def test_bad_start_times_are_refused_naming_start_time(value: object) -> None:
    assert "start_time" in refused_fields({**WEEKLY_DICT, "start_time": value})


@pytest.mark.parametrize("kind", [None, "monthly", ["weekly"]])
def test_missing_or_unknown_kind_is_refused_naming_only_kind(kind: object) -> None:
    assert refused_fields({**WEEKLY_DICT, "kind": kind}) == {"kind": ["must be one_off or weekly"]}


def test_a_field_of_the_other_kind_is_refused_by_name() -> None:
    fields = refused_fields({**WEEKLY_DICT, "starts_at": ONE_OFF_DICT["starts_at"]})
    assert fields == {"starts_at": ["not allowed for weekly windows"]}


def test_an_unknown_field_is_refused_by_name() -> None:
    assert refused_fields({**WEEKLY_DICT, "end_time": "06:00"}) == {"end_time": ["unknown field"]}


@pytest.mark.parametrize(("name", "problem"), [(None, "is required"), ("  ", "non-empty")])
def test_missing_or_blank_name_is_refused(name: object, problem: str) -> None:
    assert problem in refused_fields({**WEEKLY_DICT, "name": name})["name"][0]


def test_overlong_name_and_reason_are_refused() -> None:
    fields = refused_fields({**WEEKLY_DICT, "name": "n" * 101, "reason": "r" * 501})
    assert set(fields) == {"name", "reason"}


def test_every_bad_field_is_named_in_one_error() -> None:
    fields = refused_fields(
        {
            "kind": "weekly",
            "name": "",
            "days": [],
            "start_time": "25:00",
            "duration_minutes": 0,
            "time_zone": "Nowhere/City",
        }
    )
    assert set(fields) == {"name", "days", "start_time", "duration_minutes", "time_zone"}


def test_input_that_is_not_an_object_is_refused() -> None:
    assert refused_fields(["weekly"]) == {"window": ["must be an object"]}


def test_direct_construction_checks_the_same_rules() -> None:
    with pytest.raises(Invalid) as caught:
        FreezeWindow.one_off("x", utc(2026, 1, 2), utc(2026, 1, 1))
    assert caught.value.fields == {"ends_at": ["must be after starts_at"]}
    with pytest.raises(Invalid) as caught:
        FreezeWindow.weekly(
            "x", days=["mon"], start_time=time(9, 0, 30), duration_minutes=60, time_zone="UTC"
        )
    assert list(caught.value.fields) == ["start_time"]


# --- boundaries -----------------------------------------------------------------------------


def test_one_off_start_is_inclusive_and_end_exclusive() -> None:
    window = FreezeWindow.one_off("x", utc(2026, 5, 1, 10), utc(2026, 5, 1, 12))
    assert span_at(window, utc(2026, 5, 1, 10) - timedelta(microseconds=1)) is None
    assert span_at(window, utc(2026, 5, 1, 10)) == (utc(2026, 5, 1, 10), utc(2026, 5, 1, 12))
    assert span_at(window, utc(2026, 5, 1, 12) - timedelta(microseconds=1)) is not None
    assert span_at(window, utc(2026, 5, 1, 12)) is None


def test_weekly_start_is_inclusive_and_end_exclusive() -> None:
    window = weekly(["wed"], "09:00", 60, "UTC")
    assert span_at(window, utc(2026, 6, 10, 8, 59, 59)) is None
    assert span_at(window, utc(2026, 6, 10, 9)) == (utc(2026, 6, 10, 9), utc(2026, 6, 10, 10))
    assert span_at(window, utc(2026, 6, 10, 9, 59, 59)) is not None
    assert span_at(window, utc(2026, 6, 10, 10)) is None


def test_weekly_window_crossing_midnight_spans_both_days() -> None:
    window = weekly(["wed"], "23:00", 120, "UTC")
    assert span_at(window, utc(2026, 6, 11, 0, 30)) == (utc(2026, 6, 10, 23), utc(2026, 6, 11, 1))


def test_weekly_window_crossing_sunday_to_monday_is_active_on_monday() -> None:
    window = weekly(["sun"], "22:00", 600, BERLIN)
    # Monday 2026-06-08 07:59 CEST is still inside Sunday's occurrence.
    assert span_at(window, utc(2026, 6, 8, 5, 59)) == (utc(2026, 6, 7, 20), utc(2026, 6, 8, 6))
    assert span_at(window, utc(2026, 6, 8, 6)) is None


def test_friday_night_to_monday_morning_freeze_covers_the_weekend() -> None:
    window = weekly(["fri"], "22:00", 56 * 60, BERLIN)
    expected = (utc(2026, 6, 12, 20), utc(2026, 6, 15, 4))
    assert span_at(window, utc(2026, 6, 14, 12)) == expected
    assert span_at(window, utc(2026, 6, 12, 19, 59)) is None
    assert span_at(window, utc(2026, 6, 15, 4)) is None


def test_no_window_is_active_outside_every_window() -> None:
    windows = [weekly(["fri"], "22:00", 60, BERLIN), weekly(["mon"], "09:00", 60, TOKYO)]
    assert active_windows(windows, utc(2026, 6, 10, 12)) == []


def test_active_windows_lists_every_active_window_in_input_order() -> None:
    first = FreezeWindow.one_off("release", utc(2026, 6, 1), utc(2026, 6, 30))
    inactive = weekly(["mon"], "09:00", 60, "UTC", name="monday")
    second = weekly(["wed"], "00:00", 1440, "UTC", name="wednesday")
    active = active_windows([first, inactive, second], utc(2026, 6, 10, 12))
    assert active == [
        ActiveFreeze(first, utc(2026, 6, 1), utc(2026, 6, 30)),
        ActiveFreeze(second, utc(2026, 6, 10), utc(2026, 6, 11)),
    ]


def test_past_and_future_one_off_windows_are_not_active() -> None:
    past = FreezeWindow.one_off("past", utc(2026, 1, 1), utc(2026, 1, 2))
    future = FreezeWindow.one_off("future", utc(2026, 12, 1), utc(2026, 12, 2))
    assert active_windows([past, future], utc(2026, 6, 1)) == []


def test_now_in_any_offset_means_the_same_instant() -> None:
    window = weekly(["wed"], "09:00", 60, "UTC")
    in_tokyo = datetime(2026, 6, 10, 18, 30, tzinfo=ZoneInfo(TOKYO))
    assert span_at(window, in_tokyo) == (utc(2026, 6, 10, 9), utc(2026, 6, 10, 10))


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        active_windows([], datetime(2026, 6, 10, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_change([], datetime(2026, 6, 10, 12))


def test_touching_daily_occurrences_each_report_their_own_day() -> None:
    window = weekly(list(DAY_NAMES), "00:00", 1440, "UTC")
    assert span_at(window, utc(2026, 6, 10, 23, 59)) == (utc(2026, 6, 10), utc(2026, 6, 11))


def test_active_freeze_serialises_its_window_and_span() -> None:
    window = FreezeWindow.from_dict(ONE_OFF_DICT)
    active = active_windows([window], utc(2026, 11, 28))[0]
    assert active.to_dict() == {
        "window": ONE_OFF_DICT,
        "starts_at": "2026-11-27T00:00:00+00:00",
        "ends_at": "2026-11-30T12:00:00+00:00",
    }


# --- DST: Europe/Berlin springs forward 2026-03-29 02:00 CET → 03:00 CEST (01:00 UTC) ------


def test_local_times_in_the_spring_forward_gap_mean_the_end_of_the_gap() -> None:
    zone = ZoneInfo(BERLIN)
    for local in ("02:00", "02:30", "02:59", "03:00"):
        hour, minute = (int(part) for part in local.split(":"))
        assert local_to_utc(datetime(2026, 3, 29, hour, minute), zone) == utc(2026, 3, 29, 1)
    assert local_to_utc(datetime(2026, 3, 29, 1, 59), zone) == utc(2026, 3, 29, 0, 59)


def test_weekly_start_inside_the_gap_starts_when_the_gap_ends() -> None:
    window = weekly(["sun"], "02:30", 60, BERLIN)
    assert span_at(window, utc(2026, 3, 29, 0, 59, 59)) is None
    # Ends at 03:30 CEST wall clock, so only half an hour really elapses.
    assert span_at(window, utc(2026, 3, 29, 1)) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30))


def test_weekly_end_inside_the_gap_ends_when_the_gap_ends() -> None:
    window = weekly(["sun"], "01:00", 90, BERLIN)
    assert span_at(window, utc(2026, 3, 29, 0, 30)) == (utc(2026, 3, 29, 0), utc(2026, 3, 29, 1))
    assert span_at(window, utc(2026, 3, 29, 1)) is None


def test_occurrence_entirely_inside_the_gap_is_empty_and_never_active() -> None:
    window = weekly(["sun"], "02:10", 20, BERLIN)
    assert span_at(window, utc(2026, 3, 29, 1)) is None
    # The next occurrence is the following Sunday, 02:10 CEST.
    assert next_change([window], utc(2026, 3, 28)) == utc(2026, 4, 5, 0, 10)


def test_weekend_freeze_across_spring_forward_ends_at_monday_six_local() -> None:
    window = weekly(["fri"], "22:00", 56 * 60, BERLIN)
    start, end = span_at(window, utc(2026, 3, 28, 12)) or (None, None)
    assert (start, end) == (utc(2026, 3, 27, 21), utc(2026, 3, 30, 4))
    assert end is not None and start is not None and end - start == timedelta(hours=55)


def test_overnight_window_across_spring_forward_lasts_an_hour_less() -> None:
    window = weekly(list(DAY_NAMES), "22:00", 8 * 60, BERLIN)
    assert span_at(window, utc(2026, 3, 29, 2)) == (utc(2026, 3, 28, 21), utc(2026, 3, 29, 4))


# --- DST: Europe/Berlin falls back 2026-10-25 03:00 CEST → 02:00 CET (01:00 UTC) ------------


def test_repeated_local_times_on_fall_back_mean_their_first_occurrence() -> None:
    zone = ZoneInfo(BERLIN)
    assert local_to_utc(datetime(2026, 10, 25, 2, 0), zone) == utc(2026, 10, 25, 0, 0)
    assert local_to_utc(datetime(2026, 10, 25, 2, 59), zone) == utc(2026, 10, 25, 0, 59)
    assert local_to_utc(datetime(2026, 10, 25, 3, 0), zone) == utc(2026, 10, 25, 2, 0)


def test_weekly_start_at_a_repeated_time_starts_at_its_first_occurrence() -> None:
    window = weekly(["sun"], "02:30", 60, BERLIN)
    # 02:30 CEST to 03:30 CET: two real hours.
    assert span_at(window, utc(2026, 10, 25, 0, 30)) == (
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 2, 30),
    )
    assert span_at(window, utc(2026, 10, 25, 0, 29, 59)) is None


def test_weekly_end_at_a_repeated_time_ends_at_its_first_occurrence() -> None:
    window = weekly(["sun"], "01:00", 90, BERLIN)
    assert span_at(window, utc(2026, 10, 25, 0)) == (
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25, 0, 30),
    )
    # 01:15 UTC is 02:15 CET, the second pass through 02:15: no longer frozen.
    assert span_at(window, utc(2026, 10, 25, 1, 15)) is None


def test_weekend_freeze_across_fall_back_ends_at_monday_six_local() -> None:
    window = weekly(["fri"], "22:00", 56 * 60, BERLIN)
    start, end = span_at(window, utc(2026, 10, 25, 12)) or (None, None)
    assert (start, end) == (utc(2026, 10, 23, 20), utc(2026, 10, 26, 5))
    assert end is not None and start is not None and end - start == timedelta(hours=57)


# --- DST: America/New_York 2026-03-08 (07:00 UTC) and 2026-11-01 (06:00 UTC) ----------------


def test_new_york_start_inside_the_spring_gap_starts_at_three_edt() -> None:
    window = weekly(["sun"], "02:15", 60, NEW_YORK)
    assert span_at(window, utc(2026, 3, 8, 7)) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15))
    assert span_at(window, utc(2026, 3, 8, 6, 59)) is None


def test_new_york_repeated_start_on_fall_back_uses_edt() -> None:
    window = weekly(["sun"], "01:30", 60, NEW_YORK)
    # 01:30 EDT (05:30 UTC) to 02:30 EST (07:30 UTC).
    assert span_at(window, utc(2026, 11, 1, 6, 45)) == (
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 7, 30),
    )


def test_new_york_weekly_window_keeps_its_local_time_across_dst() -> None:
    window = weekly(["mon"], "09:00", 60, NEW_YORK)
    assert span_at(window, utc(2026, 3, 2, 14, 30)) == (utc(2026, 3, 2, 14), utc(2026, 3, 2, 15))
    assert span_at(window, utc(2026, 3, 9, 13, 30)) == (utc(2026, 3, 9, 13), utc(2026, 3, 9, 14))
    assert span_at(window, utc(2026, 3, 9, 14, 30)) is None


# --- a zone without DST ---------------------------------------------------------------------


@pytest.mark.parametrize("sunday", [date(2026, 3, 29), date(2026, 10, 25), date(2026, 3, 8)])
def test_tokyo_window_is_the_same_on_european_and_american_dst_days(sunday: date) -> None:
    window = weekly(["sun"], "02:30", 60, TOKYO)
    saturday = datetime.combine(sunday - timedelta(days=1), time(), tzinfo=UTC)
    start, end = (
        saturday + timedelta(hours=17, minutes=30),
        saturday + timedelta(hours=18, minutes=30),
    )
    assert span_at(window, start) == (start, end)
    assert span_at(window, end) is None


# --- next_change ----------------------------------------------------------------------------


def test_next_change_when_not_frozen_is_the_next_start() -> None:
    window = weekly(["fri"], "22:00", 56 * 60, BERLIN)
    assert next_change([window], utc(2026, 6, 10)) == utc(2026, 6, 12, 20)


def test_next_change_when_frozen_is_the_end_of_the_freeze() -> None:
    window = weekly(["fri"], "22:00", 56 * 60, BERLIN)
    assert next_change([window], utc(2026, 6, 13)) == utc(2026, 6, 15, 4)


def test_next_change_at_a_start_instant_is_that_freezes_end() -> None:
    window = FreezeWindow.one_off("x", utc(2026, 6, 1), utc(2026, 6, 2))
    assert next_change([window], utc(2026, 6, 1)) == utc(2026, 6, 2)


def test_next_change_at_an_end_instant_is_the_following_start() -> None:
    window = weekly(["wed"], "09:00", 60, "UTC")
    assert next_change([window], utc(2026, 6, 10, 10)) == utc(2026, 6, 17, 9)


def test_next_change_ignores_a_handover_between_touching_windows() -> None:
    first = FreezeWindow.one_off("a", utc(2026, 6, 1), utc(2026, 6, 2))
    second = FreezeWindow.one_off("b", utc(2026, 6, 2), utc(2026, 6, 3))
    assert next_change([second, first], utc(2026, 6, 1, 12)) == utc(2026, 6, 3)


def test_next_change_uses_the_latest_end_of_overlapping_windows() -> None:
    long = FreezeWindow.one_off("long", utc(2026, 6, 1), utc(2026, 6, 5))
    short = weekly(["tue"], "00:00", 60, "UTC")  # Tuesday 2026-06-02
    assert next_change([short, long], utc(2026, 6, 2, 0, 30)) == utc(2026, 6, 5)


def test_next_change_is_none_without_windows() -> None:
    assert next_change([], utc(2026, 6, 1)) is None


def test_next_change_is_none_when_every_window_is_past() -> None:
    window = FreezeWindow.one_off("x", utc(2026, 1, 1), utc(2026, 1, 2))
    assert next_change([window], utc(2026, 6, 1)) is None


def test_next_change_is_none_when_weekly_windows_cover_the_whole_week() -> None:
    windows = [weekly(list(DAY_NAMES), "00:00", 1440, BERLIN), weekly(["mon"], "00:00", 60, TOKYO)]
    assert next_change(windows, utc(2026, 3, 28)) is None


def test_next_change_finds_a_one_off_window_years_away() -> None:
    window = FreezeWindow.one_off("x", utc(2031, 1, 1), utc(2031, 1, 2))
    assert next_change([window], utc(2026, 6, 1)) == utc(2031, 1, 1)


def test_next_change_finds_the_end_of_a_long_one_off_window() -> None:
    window = FreezeWindow.one_off("x", utc(2026, 1, 1), utc(2028, 6, 1))
    assert next_change([window], utc(2026, 6, 1)) == utc(2028, 6, 1)


def test_next_change_gives_up_when_frozen_past_the_horizon() -> None:
    long = FreezeWindow.one_off("x", utc(2026, 1, 1), utc(2028, 6, 1))  # ends on a Thursday
    window = weekly(["mon"], "09:00", 60, "UTC")
    assert next_change([long, window], utc(2026, 6, 1)) is None
    assert next_change([long, window], utc(2026, 6, 1), horizon=timedelta(days=1000)) == utc(
        2028, 6, 1
    )


# --- properties against a minute-by-minute reference ----------------------------------------

LORD_HOWE = "Australia/Lord_Howe"
ZONES = [BERLIN, NEW_YORK, TOKYO, LORD_HOWE, "UTC"]
# Every 2026 transition of those zones that have DST (Lord Howe shifts by 30 minutes).
TRANSITIONS = [
    (NEW_YORK, utc(2026, 3, 8, 7)),
    (BERLIN, utc(2026, 3, 29, 1)),
    (LORD_HOWE, utc(2026, 4, 4, 15)),
    (LORD_HOWE, utc(2026, 10, 3, 15, 30)),
    (BERLIN, utc(2026, 10, 25, 1)),
    (NEW_YORK, utc(2026, 11, 1, 6)),
]
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINUTE = timedelta(minutes=1)
# The walk starts this long before `now`: every occurrence that can contain or follow `now`
# starts inside it.
HISTORY = timedelta(days=8)
FUTURE = timedelta(days=9)
CHANGE_SEARCH = timedelta(days=8)


def durations(longest: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(1, longest),
        st.integers(1, min(180, longest)),
        st.sampled_from([m for m in (1440, 2880, 3360, 10080) if m <= longest]),
    )


def shortest_gap(days: set[str]) -> int:
    indexes = sorted(DAY_NAMES.index(day) for day in days)
    return min(b - a for a, b in zip(indexes, [*indexes[1:], indexes[0] + 7], strict=True)) * 1440


@st.composite
def weekly_windows(draw: st.DrawFn, zone: str, around: datetime | None = None) -> FreezeWindow:
    """A valid weekly window in `zone`.

    With `around`, it starts or ends (local wall clock) within two hours of that instant, which
    lands starts and ends in DST gaps and repeats far more often than chance would.
    """
    days = draw(st.sets(st.sampled_from(DAY_NAMES), max_size=6))
    if around is None:
        start = datetime.combine(date(2026, 1, 1), time()) + draw(st.integers(0, 1439)) * MINUTE
        days = days or {draw(st.sampled_from(DAY_NAMES))}
        minutes = draw(durations(shortest_gap(days)))
    else:
        local = around.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        target = local + draw(st.integers(-120, 120)) * MINUTE
        if draw(st.booleans()):
            start, minutes = target, 0
        else:  # at most a day, which any choice of days allows
            minutes = draw(st.one_of(st.integers(1, 180), st.integers(1, 1440)))
            start = target - minutes * MINUTE
        days.add(DAY_NAMES[start.weekday()])
        minutes = minutes or draw(durations(shortest_gap(days)))
    return FreezeWindow.weekly(
        "w",
        days=days,
        start_time=start.time(),
        duration_minutes=minutes,
        time_zone=zone,
    )


anywhere = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
instants = st.one_of(
    st.builds(
        lambda transition, seconds: transition[1] + timedelta(seconds=seconds),
        st.sampled_from(TRANSITIONS),
        st.integers(-9 * 86400, 9 * 86400),
    ),
    anywhere,
)


@st.composite
def cases(draw: st.DrawFn, max_windows: int) -> tuple[str, list[FreezeWindow], datetime]:
    """Weekly windows in one zone and an instant: aimed at a real transition, or anywhere."""
    if draw(st.booleans()):
        zone, moment = draw(st.sampled_from(TRANSITIONS))
        seconds = draw(
            st.one_of(st.integers(-6 * 3600, 6 * 3600), st.integers(-9 * 86400, 9 * 86400))
        )
        now = moment + timedelta(seconds=seconds)
        around: datetime | None = moment
    else:
        zone = draw(st.sampled_from(ZONES))
        now = draw(anywhere)
        around = None
    windows = draw(st.lists(weekly_windows(zone, around), min_size=1, max_size=max_windows))
    return zone, windows, now


class MinuteReference:
    """Freeze spans found by walking UTC minute by minute and reading the local wall clock.

    An occurrence starts at the first minute whose wall clock reads its local start or later,
    and ends at the first minute reading its local end or later: the rule, stated without any
    offset arithmetic.
    """

    def __init__(self, zone: str, now: datetime) -> None:
        self.zone = ZoneInfo(zone)
        first = now.replace(second=0, microsecond=0) - HISTORY
        self.minutes = [first + i * MINUTE for i in range(int((HISTORY + FUTURE) / MINUTE))]
        self.walls = [m.astimezone(self.zone).replace(tzinfo=None) for m in self.minutes]

    def spans(self, window: FreezeWindow) -> list[tuple[datetime, datetime]]:
        assert window.start_time is not None and window.duration_minutes is not None
        weekdays = {DAY_NAMES.index(day) for day in window.days}
        day = self.walls[0].date() - timedelta(days=1)
        locals_ = []
        while day <= self.walls[-1].date():
            start = datetime.combine(day, window.start_time)
            # Skip occurrences that may have begun before the walk did.
            if day.weekday() in weekdays and start >= self.walls[0] + timedelta(hours=3):
                locals_.append((start, start + timedelta(minutes=window.duration_minutes)))
            day += timedelta(days=1)
        readings = self._first_readings([local for pair in locals_ for local in pair])
        spans = []
        for start_at, end_at in zip(readings[::2], readings[1::2], strict=True):
            if start_at is not None and (end_at is None or start_at < end_at):
                spans.append((start_at, end_at or datetime.max.replace(tzinfo=UTC)))
        return spans

    def _first_readings(self, locals_: list[datetime]) -> list[datetime | None]:
        """For each local time (ascending), the first minute whose wall clock reads it or later."""
        readings: list[datetime | None] = []
        index = 0
        for local in locals_:
            while index < len(self.walls) and self.walls[index] < local:
                index += 1
            readings.append(self.minutes[index] if index < len(self.walls) else None)
        return readings


def frozen(spans: list[tuple[datetime, datetime]], instant: datetime) -> bool:
    return any(start <= instant < end for start, end in spans)


@PROPERTY
@given(case=cases(max_windows=1))
def test_active_windows_agrees_with_a_minute_by_minute_walk(
    case: tuple[str, list[FreezeWindow], datetime],
) -> None:
    zone, [window], now = case
    spans = MinuteReference(zone, now).spans(window)
    containing = [(start, end) for start, end in spans if start <= now < end]
    assert len(containing) <= 1
    assert span_at(window, now) == (containing[0] if containing else None)


@PROPERTY
@given(case=cases(max_windows=3))
def test_next_change_agrees_with_a_minute_by_minute_walk(
    case: tuple[str, list[FreezeWindow], datetime],
) -> None:
    zone, windows, now = case
    reference = MinuteReference(zone, now)
    spans = [span for window in windows for span in reference.spans(window)]
    state = frozen(spans, now)
    later = (m for m in reference.minutes if now < m <= now + CHANGE_SEARCH)
    expected = next((m for m in later if frozen(spans, m) != state), None)
    assert next_change(windows, now) == expected


@PROPERTY
@given(
    windows=st.lists(
        st.one_of(
            st.sampled_from(ZONES).flatmap(weekly_windows),
            st.builds(
                lambda start, hours: FreezeWindow.one_off(
                    "o", start, start + timedelta(hours=hours)
                ),
                instants,
                st.integers(1, 24 * 20),
            ),
        ),
        max_size=4,
    ),
    now=instants,
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_the_freeze_state_holds_until_next_change_and_flips_there(
    windows: list[FreezeWindow], now: datetime, fraction: float
) -> None:
    change = next_change(windows, now)
    state = bool(active_windows(windows, now))
    if change is None:
        return
    assert change > now
    micros = (change - now) // timedelta(microseconds=1)
    between = now + timedelta(microseconds=min(int(micros * fraction), micros - 1))
    assert bool(active_windows(windows, between)) == state
    assert bool(active_windows(windows, change - timedelta(microseconds=1))) == state
    assert bool(active_windows(windows, change)) != state


@PROPERTY
@given(
    window=st.one_of(
        st.sampled_from(ZONES).flatmap(weekly_windows),
        st.just(FreezeWindow.from_dict(ONE_OFF_DICT)),
    )
)
def test_every_valid_window_round_trips_through_its_dict(window: FreezeWindow) -> None:
    assert FreezeWindow.from_dict(window.to_dict()) == window
