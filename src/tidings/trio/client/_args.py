"""Checking what a caller passes to the clients, before any connection.

All three clients add the caller's headers to every request (or handshake) and bound
each attempt with timeouts; a mistake there is the caller's, so it is refused up front
with :class:`~tidings.errors.LocalProtocolError` rather than found on the first
request.  The SSE and long-poll clients also name the topic of their events after the
URL, when it follows the tidings route ``/topics/{topic}/...``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from tidings.errors import LocalProtocolError
from tidings.trio.server._routes import parse_topic

__all__ = ["check_headers", "check_timeout", "topic_from_path"]

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE_RE = re.compile(r"[\x00\r\n]|^[ \t]|[ \t]$")


def check_headers(
    headers: Mapping[str, str] | None,
    managed: frozenset[bytes],
    owner: str,
) -> list[tuple[bytes, bytes]]:
    """The caller's *headers* (a mapping of names to values) as lower-case raw pairs.

    A header named in *managed* is the client's own: asking for it is refused with a
    message saying it "is set by the *owner*".  Names must be HTTP tokens and values
    must not contain CR, LF or NUL or start or end with whitespace.
    """
    if headers is None:
        return []
    if not isinstance(headers, Mapping):
        raise LocalProtocolError(
            f"headers must be a mapping of names to values, not {type(headers).__name__}"
        )
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            raise LocalProtocolError(f"invalid header name {name!r}")
        if not isinstance(value, str) or _BAD_VALUE_RE.search(value):
            raise LocalProtocolError(f"invalid value for header {name!r}: {value!r}")
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


def topic_from_path(path: str, endpoint: str) -> str | None:
    """The topic of a ``.../topics/{topic}/{endpoint}`` path (query ignored), or ``None``.

    The topic segment is decoded and checked with the server's own rule.
    """
    segments = path.partition("?")[0].split("/")
    if len(segments) >= 3 and segments[-3] == "topics" and segments[-1] == endpoint:
        return parse_topic(segments[-2])
    return None
