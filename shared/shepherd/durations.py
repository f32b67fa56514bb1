"""Go's `time.Duration` text form: `String()` and `ParseDuration`, on integer nanoseconds."""

from __future__ import annotations

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

MAX_DURATION = 2**63 - 1
MIN_DURATION = -(2**63)

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,  # U+00B5 micro sign
    "μs": MICROSECOND,  # U+03BC Greek small letter mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}


def _fraction(value: int, digits: int) -> tuple[str, int]:
    """Splits `value` into '.fraction' (trailing zeros dropped) and the integer part."""
    frac = value % 10**digits
    text = f"{frac:0{digits}d}".rstrip("0")
    return ("." + text if text else ""), value // 10**digits


def format_duration(ns: int) -> str:
    """Formats nanoseconds exactly as Go's `time.Duration.String()` does."""
    if not MIN_DURATION <= ns <= MAX_DURATION:
        raise ValueError(f"duration {ns}ns is outside Go's int64 range")
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < SECOND:
        for unit, digits in (("ns", 0), ("µs", 3), ("ms", 6)):
            if u < 1000 * 10**digits:
                frac, whole = _fraction(u, digits)
                return f"{sign}{whole}{frac}{unit}"
    frac, seconds = _fraction(u, 9)
    text = f"{seconds % 60}{frac}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        hours = minutes // 60
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def _fraction_ns(digits: str, unit: int) -> int:
    """Go's arithmetic for the fraction: digits up to int64 range, then float64 scaling."""
    f, scale = 0, 1.0
    for d in digits:
        if f > MAX_DURATION // 10:
            break
        f, scale = f * 10 + int(d), scale * 10
    return int(float(f) * (float(unit) / scale))


def parse_duration(text: str) -> int:
    """Parses Go's duration syntax ("1h30m", "250ms", "-1.5µs") into nanoseconds.

    Raises ValueError with Go's wording for anything Go's `time.ParseDuration` refuses.
    """
    invalid = ValueError(f'time: invalid duration "{text}"')
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        i = 0
        while i < len(s) and s[i].isascii() and s[i].isdigit():
            i += 1
        whole, s = s[:i], s[i:]
        frac = ""
        if s.startswith("."):
            j = 1
            while j < len(s) and s[j].isascii() and s[j].isdigit():
                j += 1
            frac, s = s[1:j], s[j:]
        if not whole and not frac:
            raise invalid
        j = 0
        while j < len(s) and s[j] != "." and not (s[j].isascii() and s[j].isdigit()):
            j += 1
        unit_name, s = s[:j], s[j:]
        if not unit_name:
            raise ValueError(f'time: missing unit in duration "{text}"')
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f'time: unknown unit "{unit_name}" in duration "{text}"')
        value = int(whole or "0") * unit
        if frac:
            value += _fraction_ns(frac, unit)
        total += value
        if total > MAX_DURATION + (1 if negative else 0):
            raise invalid
    return -total if negative else total
