"""Turning an incoming poll request into a typed :class:`PollRequest`, strictly.

A poll arrives as ``GET …/poll?cursor=<c>&timeout=<s>&limit=<n>``, or with the cursor
in ``If-None-Match: "<c>"`` instead of the query.  Everything here comes from the
network, so every value is checked against a grammar and every number is bounded
before a server acts on it; a bad request raises
:class:`~tidings.errors.RemoteProtocolError` (``error_status_hint`` 400) with a
message fit to send back in a ``400`` answer.

Rules (also in ``docs/longpoll.rst``):

* ``cursor``: a position's wire form (:mod:`tidings.cursor`) or ``earliest``
  (everything retained).  Absent or empty means *live from now*: the server reads
  from the topic's current head.  Anything else is a *malformed cursor*: not an
  error but a place the history cannot find, answered with a ``malformed`` reset to
  the head, as the other transports answer a garbage ``Last-Event-ID`` or resume
  cursor (see :doc:`/positions`).
* ``timeout``: seconds to hold the request, a plain decimal (``25``, ``0.5``; no sign,
  no exponent).  Absent or empty means :attr:`PollLimits.default_timeout`; larger
  values are clamped to :attr:`PollLimits.max_timeout`.  ``0`` answers at once (a
  short poll).
* ``limit``: most events per answer, a positive integer.  Absent or empty means
  :attr:`PollLimits.default_limit`; larger values are clamped to
  :attr:`PollLimits.max_limit`; ``0`` is an error.
* Each of these parameters may appear at most once; other parameters (cache
  busters such as ``_=1712345``) are ignored.
* ``If-None-Match``: a list of entity tags.  A weak tag ``W/"c"`` counts like ``"c"``
  (If-None-Match compares weakly, and proxies that compress weaken tags).  Every tag
  in the list must name the same cursor (repeats are fine); two different cursors,
  ``*``, or an unparsable list are errors; a well-formed tag that is not a cursor is
  a malformed cursor, as above.  A request with an ``If-None-Match`` is
  *conditional*: when it times out with nothing new, it gets ``304 Not Modified``.
* A request may carry the cursor in both places only if they agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote_plus

from tidings._checks import header_text as _text
from tidings.cursor import EARLIEST, Position
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT",
    "MAX_LIMIT",
    "MAX_TIMEOUT",
    "Cursor",
    "PollLimits",
    "PollRequest",
    "parse_poll_request",
]

#: Seconds a request without ``timeout`` is held.
DEFAULT_TIMEOUT = 25.0
#: The longest hold a server grants by default, in seconds: under the 30 to 60 s idle
#: limits of common proxies and load balancers.
MAX_TIMEOUT = 30.0
#: Events per answer when the request gives no ``limit``.
DEFAULT_LIMIT = 100
#: The largest ``limit`` a server grants by default.
MAX_LIMIT = 1000

#: Where a poll starts reading: a position, ``"earliest"``, ``None`` for the head, or
#: any other string: a malformed cursor as the client sent it (the history answers a
#: read after it with a ``malformed`` reset).
Cursor: TypeAlias = Position | str | None

_TIMEOUT_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9}")
_LIMIT_RE = re.compile(r"[0-9]{1,32}")
# One element of an If-None-Match list: optional weak prefix, then a quoted opaque tag
# (RFC 9110 §8.8.3: etagc = %x21 / %x23-7E / obs-text).
_ETAG_RE = re.compile(r'[ \t]*(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')
_KNOWN = ("cursor", "timeout", "limit")


@dataclass(frozen=True, slots=True)
class PollLimits:
    """What a server grants to poll requests; every field has a safe default."""

    #: Hold time when the request does not ask, in seconds.
    default_timeout: float = DEFAULT_TIMEOUT
    #: Upper bound on the hold time, in seconds; larger requests are clamped.
    max_timeout: float = MAX_TIMEOUT
    #: Events per answer when the request does not ask.
    default_limit: int = DEFAULT_LIMIT
    #: Upper bound on events per answer; larger requests are clamped.
    max_limit: int = MAX_LIMIT

    def __post_init__(self) -> None:
        for name in ("default_timeout", "max_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise LocalProtocolError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.default_timeout > self.max_timeout:
            raise LocalProtocolError("default_timeout must be <= max_timeout")
        for name in ("default_limit", "max_limit"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1, got {value!r}")
        if self.default_limit > self.max_limit:
            raise LocalProtocolError("default_limit must be <= max_limit")


@dataclass(frozen=True, slots=True)
class PollRequest:
    """One validated poll: where to read from, how long to hold, how much to answer.

    ``conditional`` is true when the cursor came in ``If-None-Match``; such a request
    gets ``304 Not Modified`` instead of an empty ``200`` when it times out and its
    cursor is still current.
    """

    #: Where to read from; ``None`` means the topic's head when the poll starts; a
    #: string other than ``"earliest"`` is a malformed cursor (a reset to the head).
    cursor: Cursor = None
    #: How long to hold the request when nothing is waiting, in seconds.
    timeout: float = DEFAULT_TIMEOUT
    #: The most events one answer carries.
    limit: int = DEFAULT_LIMIT
    #: Whether the cursor came in ``If-None-Match``.
    conditional: bool = False

    def __post_init__(self) -> None:
        cursor = self.cursor
        if not (cursor is None or isinstance(cursor, Position | str)):
            raise LocalProtocolError(f"cursor must be a Position, a str or None: {cursor!r}")
        if (
            not isinstance(self.timeout, int | float)
            or not math.isfinite(self.timeout)
            or self.timeout < 0
        ):
            raise LocalProtocolError(f"timeout must be a finite number >= 0, got {self.timeout!r}")
        if type(self.limit) is not int or self.limit < 1:
            raise LocalProtocolError(f"limit must be an int >= 1, got {self.limit!r}")
        if self.conditional and self.cursor is None:
            raise LocalProtocolError("a conditional request needs a cursor")

    @property
    def cursor_text(self) -> str | None:
        """The cursor as the client sent it (wire form), or ``None``."""
        if self.cursor is None or isinstance(self.cursor, str):
            return self.cursor
        return self.cursor.format()


def _query_params(query: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
        except UnicodeDecodeError:
            continue  # not one of ours: ours are ASCII
        if name not in _KNOWN:
            continue
        if name in found:
            raise RemoteProtocolError(f"query parameter {name!r} given more than once")
        if name == "cursor":
            # Not UTF-8 is just one more way to be a malformed cursor (cursors are ASCII).
            found[name] = unquote_plus(raw_value, errors="replace")
            continue
        try:
            found[name] = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"query parameter {name!r} is not valid UTF-8") from None
    return found


def _parse_cursor(text: str) -> Position | str:
    """*text* as a position, or as it is (``earliest``, or a malformed cursor)."""
    if text == EARLIEST:
        return EARLIEST
    try:
        return Position.parse(text)
    except InvalidCursor:
        return text


def _if_none_match(values: list[str]) -> str:
    """The one cursor text named by the If-None-Match field lines *values*."""
    tags: set[str] = set()
    for value in values:
        for element in value.split(","):
            if not element.strip(" \t"):
                continue  # empty list elements are allowed (RFC 9110 §5.6.1)
            if element.strip(" \t") == "*":
                raise RemoteProtocolError("If-None-Match: * is not supported on a poll")
            match = _ETAG_RE.fullmatch(element)
            if match is None:
                raise RemoteProtocolError("If-None-Match: malformed entity tag")
            tags.add(match.group(1))
    if not tags:
        raise RemoteProtocolError("If-None-Match: empty")
    if len(tags) > 1:
        raise RemoteProtocolError("If-None-Match: names more than one cursor")
    return tags.pop()


def _parse_timeout(text: str, limits: PollLimits) -> float:
    if _TIMEOUT_RE.fullmatch(text) is None:
        raise RemoteProtocolError(
            "query parameter 'timeout' must be a non-negative decimal number of seconds"
        )
    return min(float(text), limits.max_timeout)


def _parse_limit(text: str, limits: PollLimits) -> int:
    if _LIMIT_RE.fullmatch(text) is None:
        raise RemoteProtocolError("query parameter 'limit' must be a positive integer")
    value = int(text)
    if value < 1:
        raise RemoteProtocolError("query parameter 'limit' must be a positive integer")
    return min(value, limits.max_limit)


def parse_poll_request(
    query: bytes | str,
    headers: Iterable[tuple[bytes | str, bytes | str]] = (),
    limits: PollLimits | None = None,
) -> PollRequest:
    """Validate one poll request and clamp it to *limits*.

    *query* is the part of the request target after ``?`` (without a fragment; pass
    ``b""`` when there is none).  *headers* are ``(name, value)`` pairs as h11 or h2
    give them; only ``If-None-Match`` is read, with names compared case-insensitively.
    Raises :class:`~tidings.errors.RemoteProtocolError` (``error_status_hint`` 400) on
    anything the module rules reject.  A malformed cursor is not rejected: it is the
    request's :attr:`~PollRequest.cursor`, as a string, and the answer is a reset.
    """
    if limits is None:
        limits = PollLimits()
    params = _query_params(_text(query))
    match_values = [
        _text(value) for name, value in headers if _text(name).lower() == "if-none-match"
    ]

    cursor: Cursor = None
    conditional = False
    query_cursor = params.get("cursor", "")
    if query_cursor:
        cursor = _parse_cursor(query_cursor)
    if match_values:
        tag = _if_none_match(match_values)
        tag_cursor = _parse_cursor(tag)
        if cursor is not None and cursor != tag_cursor:
            raise RemoteProtocolError("query parameter 'cursor' and If-None-Match disagree")
        cursor = tag_cursor
        conditional = True

    timeout_text = params.get("timeout", "")
    timeout = _parse_timeout(timeout_text, limits) if timeout_text else limits.default_timeout
    limit_text = params.get("limit", "")
    limit = _parse_limit(limit_text, limits) if limit_text else limits.default_limit
    return PollRequest(cursor=cursor, timeout=timeout, limit=limit, conditional=conditional)
