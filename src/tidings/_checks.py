"""Checks and conversions every sans-IO machine shares (private).

One place for the rules about numbers the caller passes in (``now``, durations) and
about header values from the network, so that every machine refuses the same
things with the same words.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tidings.errors import LocalProtocolError

__all__ = ["check_now", "check_seconds", "header_text", "header_value"]


def check_now(now: object) -> None:
    """*now* must be a finite number (a reading of the caller's clock)."""
    if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
        raise LocalProtocolError(f"now must be a finite number, got {now!r}")


def check_seconds(name: str, value: object, *, positive: bool = False, low: float = 0.0) -> None:
    """*value* must be a finite number >= *low* (> 0 with *positive*), not a bool."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise LocalProtocolError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < low or (positive and value <= 0):
        bound = "> 0" if positive else f">= {low:g}"
        raise LocalProtocolError(f"{name} must be a finite number {bound}, got {value!r}")


def header_text(value: bytes | str) -> str:
    """A header value (or name) as text: bytes decode as Latin-1, which cannot fail
    (the values that matter are then checked against ASCII grammars)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def header_value(headers: Iterable[tuple[bytes | str, bytes | str]], name: str) -> str | None:
    """The first value of header *name* (compared case-insensitively), or ``None``."""
    for raw_name, raw_value in headers:
        if header_text(raw_name).lower() == name:
            return header_text(raw_value)
    return None
