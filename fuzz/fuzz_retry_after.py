"""atheris harness: ``Retry-After`` and HTTP-dates (:mod:`tidings.retry_after`).

Half the inputs are raw bytes; the other half are HTTP-dates assembled from the input
(one of the three forms, with fuzzer-chosen day names, numbers, months and stray
spaces), since random bytes almost never make a date.

Invariants, on every input:

- :func:`parse_http_date` answers ``None`` or a finite number of seconds within the
  years 1 to 9999; an IMF-fixdate that parses formats back (by the standard
  library's :func:`email.utils.formatdate`) to the same date and time;
- :func:`parse_retry_after`, as bytes or text, with or without a ``Date`` and a wall
  clock, answers ``None`` or a finite delay ``>= 0``; delay-seconds give exactly
  their value; and :func:`retry_after_from_headers` agrees with it;
- nothing raises.

Run: ``python fuzz/fuzz_retry_after.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import math
import sys
from email.utils import formatdate

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.retry_after import parse_http_date, parse_retry_after, retry_after_from_headers

_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Sunday", "Monday", "Xyz", ""]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MONTHS += ["jan", "Foo"]
_LOWEST = -62135596800.0  # 0001-01-01T00:00:00Z
_HIGHEST = 253402300799.0  # 9999-12-31T23:59:59Z


def _number(fdp: atheris.FuzzedDataProvider, width: int) -> str:
    value = str(fdp.ConsumeIntInRange(0, 10**width - 1)).zfill(width)
    return value if fdp.ConsumeIntInRange(0, 15) else value[1:]


def _date(fdp: atheris.FuzzedDataProvider) -> str:
    day = fdp.PickValueInList(_DAYS)
    month = fdp.PickValueInList(_MONTHS)
    time = ":".join(_number(fdp, 2) for _ in range(3))
    form = fdp.ConsumeIntInRange(0, 2)
    if form == 0:
        text = f"{day}, {_number(fdp, 2)} {month} {_number(fdp, 4)} {time} GMT"
    elif form == 1:
        text = f"{day}, {_number(fdp, 2)}-{month}-{_number(fdp, 2)} {time} GMT"
    else:
        mday = _number(fdp, 2)
        if mday.startswith("0") and fdp.ConsumeBool():
            mday = " " + mday[1:]
        text = f"{day} {month} {mday} {time} {_number(fdp, 4)}"
    if fdp.ConsumeIntInRange(0, 7) == 0:
        text = fdp.PickValueInList([" ", "\t", "  "]) + text + fdp.PickValueInList(["", " "])
    return text


def _check_date(value: str) -> float | None:
    result = parse_http_date(value)
    if result is None:
        return None
    if not (math.isfinite(result) and _LOWEST <= result <= _HIGHEST):
        raise AssertionError(f"{value!r} parsed to {result!r}")
    stripped = value.strip(" \t")
    if stripped[3:5] == ", " and len(stripped) == 29 and stripped[-6:-4] != "60":
        # IMF-fixdate: formatdate writes the same form (with the real day name).
        again = formatdate(result, usegmt=True)
        if again[3:] != stripped[3:]:
            raise AssertionError(f"{value!r} parsed to {result!r}, which is {again!r}")
    return result


def test_one_input(data: bytes) -> None:
    # The first byte picks the mode; in raw mode the rest is the field's value (so
    # that a seed is that byte and a value from the tests).
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:] if mode & 1 else b"")
    date = _date(fdp) if mode & 2 else None
    wall_time = [None, 0.0, 1e9, 1.7e9, math.inf, -1e12, None, None][(mode >> 2) & 7]
    value = _date(fdp).encode("latin-1") if mode & 1 else data[1:]
    text = value.decode("latin-1")

    _check_date(text)
    if date is not None:
        _check_date(date)

    delay = parse_retry_after(value, date=date, wall_time=wall_time)
    if delay is not None and not (math.isfinite(delay) and delay >= 0):
        raise AssertionError(f"{value!r} gave delay {delay!r}")
    if value.isascii():
        if parse_retry_after(text, date=date, wall_time=wall_time) != delay:
            raise AssertionError(f"bytes and text disagree on {value!r}")
        if text.strip(" \t").isdigit() and delay != float(int(text.strip(" \t"))):
            digits = text.strip(" \t")
            if len(digits) <= 16:
                raise AssertionError(f"{value!r} gave delay {delay!r}")
    headers: list[tuple[bytes, bytes]] = [(b"Retry-After", value)]
    if date is not None:
        headers.insert(fdp.ConsumeIntInRange(0, 1), (b"DATE", date.encode("latin-1")))
    from_headers = retry_after_from_headers(headers, wall_time=wall_time)
    expected = parse_retry_after(text, date=date, wall_time=wall_time)
    if from_headers != expected:
        raise AssertionError(f"headers gave {from_headers!r}, the value {expected!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
