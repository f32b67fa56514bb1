"""Go's time.Duration text form, against Go's own documented examples and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shepherd.durations import (
    HOUR,
    MAX_DURATION,
    MICROSECOND,
    MILLISECOND,
    MIN_DURATION,
    MINUTE,
    SECOND,
    format_duration,
    parse_duration,
)

# From Go's time package tests (durationTests) and the seed log.
FORMAT_CASES = [
    (0, "0s"),
    (1, "1ns"),
    (1100, "1.1µs"),
    (2200 * MICROSECOND, "2.2ms"),
    (3300 * MILLISECOND, "3.3s"),
    (4 * MINUTE + 5 * SECOND, "4m5s"),
    (4 * MINUTE + 5001 * MILLISECOND, "4m5.001s"),
    (5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND, "5h6m7.001s"),
    (8 * MINUTE + 1, "8m0.000000001s"),
    (MAX_DURATION, "2562047h47m16.854775807s"),
    (MIN_DURATION, "-2562047h47m16.854775808s"),
    (250 * MILLISECOND, "250ms"),
    (1500, "1.5µs"),
    (8 * MINUTE + 46 * SECOND, "8m46s"),
    (5 * HOUR + 46 * MINUTE + 16 * SECOND + 425824888, "5h46m16.425824888s"),
    (5 * MINUTE, "5m0s"),
    (-1500 * MILLISECOND, "-1.5s"),
]


@pytest.mark.parametrize(("ns", "text"), FORMAT_CASES)
def test_format_matches_go(ns: int, text: str) -> None:
    assert format_duration(ns) == text


# From Go's parseDurationTests.
PARSE_CASES = [
    ("0", 0),
    ("5s", 5 * SECOND),
    ("30s", 30 * SECOND),
    ("1478s", 1478 * SECOND),
    ("-5s", -5 * SECOND),
    ("+5s", 5 * SECOND),
    ("-0", 0),
    ("+0", 0),
    ("5.0s", 5 * SECOND),
    ("5.6s", 5 * SECOND + 600 * MILLISECOND),
    ("5.s", 5 * SECOND),
    (".5s", 500 * MILLISECOND),
    ("1.0s", SECOND),
    ("1.00s", SECOND),
    ("1.004s", SECOND + 4 * MILLISECOND),
    ("1.0040s", SECOND + 4 * MILLISECOND),
    ("100.00100s", 100 * SECOND + 1 * MILLISECOND),
    ("10ns", 10),
    ("11us", 11 * MICROSECOND),
    ("12µs", 12 * MICROSECOND),
    ("12μs", 12 * MICROSECOND),
    ("13ms", 13 * MILLISECOND),
    ("14s", 14 * SECOND),
    ("15m", 15 * MINUTE),
    ("16h", 16 * HOUR),
    ("3h30m", 3 * HOUR + 30 * MINUTE),
    ("10.5s4m", 4 * MINUTE + 10 * SECOND + 500 * MILLISECOND),
    ("-2m3.4s", -(2 * MINUTE + 3 * SECOND + 400 * MILLISECOND)),
    ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6),
    ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND),
    ("52763797000ns", 52763797000),
    ("0.3333333333333333333h", 20 * MINUTE),
    ("9007199254740993ns", (1 << 53) + 1),
    ("9223372036854775807ns", MAX_DURATION),
    ("9223372036854775.807us", MAX_DURATION),
    ("-9223372036854775808ns", MIN_DURATION),
    ("0.100000000000000000000h", 6 * MINUTE),
    ("5h46m16.425824888s", 5 * HOUR + 46 * MINUTE + 16 * SECOND + 425824888),
]


@pytest.mark.parametrize(("text", "ns"), PARSE_CASES)
def test_parse_matches_go(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    "text",
    ["", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "3000000h", "9223372036854775808ns", "1.5x"],
)
def test_parse_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="time: "):
        parse_duration(text)


@given(st.integers(min_value=MIN_DURATION, max_value=MAX_DURATION))
def test_round_trip(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=59))
def test_whole_minutes_and_seconds_print_without_fraction(minutes: int, seconds: int) -> None:
    text = format_duration(minutes * MINUTE + seconds * SECOND)
    assert "." not in text
    assert text.endswith(f"{seconds}s")
