import calendar

import pytest

from tidings.retry_after import parse_http_date, parse_retry_after

SUNDAY = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ],
)
def test_all_three_http_date_forms_parse(text: str) -> None:
    assert parse_http_date(text) == SUNDAY


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 PST",
        "06 Nov 1994 08:49:37 GMT",
        "yesterday",
        "",
    ],
)
def test_invalid_http_dates_are_none(text: str) -> None:
    assert parse_http_date(text) is None


def test_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0


@pytest.mark.parametrize("text", ["-5", "1.5", "soon", "9" * 40])
def test_retry_after_garbage_is_none(text: str) -> None:
    assert parse_retry_after(text) is None


def test_retry_after_date_prefers_the_date_header_and_never_goes_negative() -> None:
    later = "Sun, 06 Nov 1994 08:51:37 GMT"
    assert parse_retry_after(later, date="Sun, 06 Nov 1994 08:49:37 GMT", wall_time=0.0) == 120.0
    assert parse_retry_after(later, date="garbage", wall_time=SUNDAY) == 120.0
    assert parse_retry_after(later, wall_time=SUNDAY + 1000) == 0.0
    assert parse_retry_after(later) is None


@pytest.mark.parametrize("text", ["Sun, 01 Jan 0000 00:00:00 GMT", "Sat Jan  1 00:00:00 0000"])
def test_year_zero_is_not_a_date(text: str) -> None:
    assert parse_http_date(text) is None
    assert parse_retry_after(text, wall_time=0.0) is None
    assert parse_retry_after("120", date=text) == 120.0


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("Mon, 01 Jan 0001 00:00:00 GMT", (1, 1, 1, 0, 0, 0)),
        ("Fri, 31 Dec 9999 23:59:59 GMT", (9999, 12, 31, 23, 59, 59)),
        ("Sat, 29 Feb 2020 00:00:00 GMT", (2020, 2, 29, 0, 0, 0)),
        ("Sat, 31 Jan 2026 12:00:00 GMT", (2026, 1, 31, 12, 0, 0)),
        ("Sun, 06 Nov 1994 23:59:60 GMT", (1994, 11, 6, 23, 59, 59)),  # a leap second
        ("Sunday, 06-Nov-94 08:49:37 GMT", (1994, 11, 6, 8, 49, 37)),
        ("Thursday, 06-Nov-70 08:49:37 GMT", (1970, 11, 6, 8, 49, 37)),
        ("Thursday, 06-Nov-69 08:49:37 GMT", (2069, 11, 6, 8, 49, 37)),
    ],
)
def test_http_dates_at_the_edges_of_the_calendar_parse(
    text: str, fields: tuple[int, int, int, int, int, int]
) -> None:
    assert parse_http_date(text) == float(calendar.timegm((*fields, 0, 0, 0)))


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 23:60:00 GMT",
        "Sun, 06 Nov 1994 23:59:61 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Fri, 29 Feb 2019 08:49:37 GMT",
        "Thu, 31 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\n",  # only spaces and tabs around a date
    ],
)
def test_http_dates_just_outside_the_calendar_are_none(text: str) -> None:
    assert parse_http_date(text) is None
