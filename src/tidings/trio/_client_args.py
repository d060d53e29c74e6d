"""Checking what a caller passes to the SSE and long-poll clients, before any connection.

Both clients add the caller's headers to every request and bound each attempt with
timeouts; a mistake there is the caller's, so it is refused up front with
:class:`~tidings.errors.LocalProtocolError` rather than found on the first request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tidings.errors import LocalProtocolError

__all__ = ["check_headers", "check_timeout"]


def check_headers(
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None,
    managed: frozenset[bytes],
    owner: str,
) -> list[tuple[bytes, bytes]]:
    """The caller's *headers* as lower-case raw pairs.

    A header named in *managed* is the client's own: asking for it is refused with a
    message saying it "is set by the *owner*".
    """
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[bytes, bytes]] = []
    for name, value in items:
        raw = name.encode("ascii").lower()
        if raw in managed:
            raise LocalProtocolError(f"header {name!r} is set by the {owner}")
        out.append((raw, value.encode("utf-8")))
    return out


def check_timeout(name: str, value: float | None, *, finite: bool = False) -> None:
    """Refuse a timeout *value* (the argument *name*) that is not ``None`` or ``> 0``.

    With *finite*, an infinite or non-numeric value is refused too.
    """
    if value is None:
        return
    if (finite and not (isinstance(value, int | float) and math.isfinite(value))) or not (
        value > 0
    ):
        raise LocalProtocolError(f"{name} must be > 0 or None, got {value!r}")
