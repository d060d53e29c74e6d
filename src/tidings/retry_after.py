"""Reading ``Retry-After`` (RFC 9110 §10.2.3) without a clock of our own.

The field is either delay-seconds (``120``) or an HTTP-date.  A date is only useful
relative to "now" on the *same* clock as the server's, which a sans-IO client does
not have; so a date is measured against the response's own ``Date`` field when there
is one (which also cancels any skew between the two machines' clocks), else against
a caller-supplied wall-clock time in Unix epoch seconds, else it is ignored.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable

from tidings._checks import header_value

__all__ = ["parse_http_date", "parse_retry_after", "retry_after_from_headers"]

_MONTHS = {
    name: index
    for index, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
# obsolete RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
_RFC850 = re.compile(rf"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT")
# obsolete asctime: Sun Nov  6 08:49:37 1994
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ 0-9][0-9]) {_TIME} ([0-9]{{4}})")
_SECONDS = re.compile(r"[0-9]{1,16}")


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    if not 1 <= year <= 9999:  # what the calendar functions accept
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return None
    return float(calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0)))


def parse_http_date(value: str) -> float | None:
    """An HTTP-date as Unix epoch seconds, or ``None`` if *value* is not one.

    Accepts the three forms RFC 9110 §5.6.7 requires recipients to read; a two-digit
    RFC 850 year is taken as 19xx from 70 up and 20xx below (the 50-year rule applied
    to a fixed century, which is what every current implementation does).
    """
    value = value.strip(" \t")
    if (match := _IMF.fullmatch(value)) is not None:
        day, month, year, hour, minute, second = match.groups()
        return _epoch(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    if (match := _RFC850.fullmatch(value)) is not None:
        day, month, short_year, hour, minute, second = match.groups()
        year = int(short_year) + (1900 if int(short_year) >= 70 else 2000)
        return _epoch(year, _MONTHS[month], int(day), int(hour), int(minute), int(second))
    if (match := _ASCTIME.fullmatch(value)) is not None:
        month, day, hour, minute, second, year = match.groups()
        return _epoch(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    return None


def parse_retry_after(
    value: str | bytes, *, date: str | None = None, wall_time: float | None = None
) -> float | None:
    """The delay ``Retry-After: value`` asks for, in seconds, or ``None`` if unusable.

    Delay-seconds are returned as they are.  An HTTP-date is turned into a delay
    against *date* (the same response's ``Date`` field) when that parses, else against
    *wall_time* (Unix epoch seconds, e.g. ``time.time()`` in the adapter), else the
    field is ignored.  A date in the past gives ``0.0``.  Anything unparsable gives
    ``None``: a broken header must not stop a client, it only loses its floor.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(" \t")
    if _SECONDS.fullmatch(value) is not None:
        return float(int(value))
    target = parse_http_date(value)
    if target is None:
        return None
    reference = parse_http_date(date) if date is not None else None
    if reference is None:
        if wall_time is None or not math.isfinite(wall_time):
            return None
        reference = wall_time
    return max(0.0, target - reference)


def retry_after_from_headers(
    headers: Iterable[tuple[bytes | str, bytes | str]], *, wall_time: float | None = None
) -> float | None:
    """The delay the first ``Retry-After`` of a response's *headers* asks for, or ``None``.

    Names are matched case-insensitively (bytes are read as Latin-1); an HTTP-date is
    measured against the first ``Date`` field, else *wall_time*, as in
    :func:`parse_retry_after`.
    """
    headers = list(headers)
    retry_after = header_value(headers, "retry-after")
    if retry_after is None:
        return None
    date = header_value(headers, "date")
    return parse_retry_after(retry_after, date=date, wall_time=wall_time)
