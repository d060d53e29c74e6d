"""The client side of long polling: one cursor, a loop of requests, no lost events.

:class:`LongPollClient` keeps the cursor and decides everything a polling loop must
decide: what the next request looks like, what an answer means, and when to send the
next request.  The adapter only performs requests::

    client = LongPollClient(url, rng=random.Random())
    while not client.closed:
        await sleep_until(client.next_deadline())
        request = client.send_request(now())
        try:
            status, headers, body = await http_get(request.url, request.headers,
                                                   timeout=request.timeout)
        except NetworkError:
            client.connection_failed(now())
            continue
        for item in client.receive_response(status, headers, body, now()):
            yield item          # PollEvent or PollReset

(An adapter that streams the answer should call :meth:`LongPollClient.receive_head`
as soon as the head arrives: an endpoint that is not a poll endpoint -- an event
stream, say, whose body never ends -- is then refused at once.)

The cursor only moves when a complete, valid answer arrived, so a request cut off at
any point is simply repeated from the same cursor: nothing is skipped and nothing is
delivered twice.

Scheduling rules:

* an answer with events: the next request goes out at once (there may be more);
* an answer with nothing new (empty ``200`` or ``304``): not before *min_interval*
  after the previous request was sent, so a server that answers at once cannot make
  the client spin; with an :class:`~tidings.longpoll.AdaptivePoller` the poller decides;
* a reset: at once the first time; a second reset in a row backs off, since two
  resets in a row mean the cursor is not sticking (say, servers with separate
  histories behind one balancer);
* a network error, or a status the one retry decision of every tidings client
  (:func:`tidings.retry.classify_http`) retries -- 408, 425, 429, 500, 502, 503, 504
  -- backs off, with any ``Retry-After`` as a floor under the delay (capped at
  *max_retry_after*).  An answer that brought new events counts as progress and a run
  of good answers that lasted the stable period as a stable connection, as for the
  streaming transports (see :class:`tidings.backoff.Backoff`);
* ``204``: the server says stop; the client closes quietly;
* any other status, or *max_retries* failed retries in a row: :class:`PollRejected`,
  and the client closes;
* a ``200`` whose body is not a valid answer: :class:`~tidings.errors.RemoteProtocolError`,
  and the client closes (the URL is not a tidings poll endpoint).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from tidings._checks import check_seconds
from tidings._checks import header_text as _text
from tidings.backoff import Backoff, Random
from tidings.cursor import EARLIEST, Position
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError
from tidings.longpoll.adaptive import AdaptivePoller
from tidings.longpoll.request import DEFAULT_TIMEOUT
from tidings.retry import GiveUp, Reconnect, Retrier
from tidings.retry_after import retry_after_from_headers

__all__ = [
    "ClientState",
    "LongPollClient",
    "OutgoingPoll",
    "PollEvent",
    "PollRejected",
    "PollReset",
]

#: Largest answer body accepted by default, in bytes.
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
_MAX_TIMEOUT = 86_400.0


class ClientState(enum.Enum):
    """Where a :class:`LongPollClient` is in its loop."""

    #: Waiting until :meth:`LongPollClient.next_deadline` to send the next request.
    READY = "ready"
    #: A request was sent; its answer (or failure) is awaited.
    WAITING = "waiting"
    #: Stopped: by :meth:`LongPollClient.close`, a ``204``, or an error raised.
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PollEvent:
    """One event received, in order.  ``id`` is its position (resume from it)."""

    id: str
    event: str | None
    data: str


@dataclass(frozen=True, slots=True)
class PollReset:
    """The server could not continue from the cursor; resynchronise from ``cursor``.

    Events before this point may have been missed; the events that follow it continue
    from ``cursor``.  ``reason`` is the answer's ``"reason"`` member when it has one.
    """

    cursor: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingPoll:
    """A request to perform: ``GET url`` with *headers*, giving up after *timeout* s.

    *timeout* is the hold time asked of the server plus a grace period, so a request
    that was never answered is abandoned (and reported with
    :meth:`LongPollClient.connection_failed`).
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    timeout: float


class PollRejected(RemoteProtocolError):
    """The long poll ended for good: the server answered with a status that means "do
    not retry" (most 4xx), or *max_retries* retries in a row failed.

    ``status`` is the HTTP status that decided (``None`` when the last failure was a
    network error); the message includes the server's ``error`` text when the body
    carried one.  (``error_status_hint`` keeps its default: it is about answering a
    request, which a client does not do.)
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        #: The HTTP status that decided, if one did.
        self.status = status


def _seconds_text(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _check_number(name: str, value: float, *, low: float = 0.0) -> None:
    check_seconds(name, value, low=low)


def _valid_cursor(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise RemoteProtocolError(f"{where} must be a string")
    try:
        Position.parse(text)
    except InvalidCursor as exc:
        raise InvalidCursor(f"{where}: {exc}") from None
    return text


def _parse_event(item: object, index: int) -> PollEvent:
    if not isinstance(item, dict):
        raise RemoteProtocolError(f"events[{index}] must be an object")
    event_id = _valid_cursor(item.get("id"), f"events[{index}].id")
    data = item.get("data")
    if not isinstance(data, str):
        raise RemoteProtocolError(f"events[{index}].data must be a string")
    kind = item.get("event")
    if kind is not None and not isinstance(kind, str):
        raise RemoteProtocolError(f"events[{index}].event must be a string or null")
    return PollEvent(event_id, kind, data)


def _parse_body(body: bytes) -> tuple[list[PollEvent], str, bool, str | None]:
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"answer is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RemoteProtocolError("answer must be a JSON object")
    for field in ("events", "cursor", "reset"):
        if field not in document:
            raise RemoteProtocolError(f"answer lacks the {field!r} field")
    raw_events = document["events"]
    if not isinstance(raw_events, list):
        raise RemoteProtocolError("'events' must be an array")
    cursor = _valid_cursor(document["cursor"], "'cursor'")
    reset = document["reset"]
    if not isinstance(reset, bool):
        raise RemoteProtocolError("'reset' must be true or false")
    reason = document.get("reason")
    if not isinstance(reason, str):
        reason = None
    events = [_parse_event(item, i) for i, item in enumerate(raw_events)]
    return events, cursor, reset, reason


def _check_json(headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
    for raw_name, raw_value in headers:
        if _text(raw_name).lower() == "content-type":
            media = _text(raw_value).split(";", 1)[0].strip(" \t").lower()
            if media == "text/event-stream":
                raise RemoteProtocolError(
                    "answer is text/event-stream, not JSON: an event stream, not a poll endpoint"
                )
            if media != "application/json" and not media.endswith("+json"):
                raise RemoteProtocolError(f"answer has content-type {media!r}, not JSON")


def _error_text(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])[:200]
    return None


class LongPollClient:
    """Follows one poll endpoint from a cursor, through errors, without losing events.

    *url* is the poll endpoint (``http://h/topics/T/poll``; it may carry unrelated
    query parameters, but not ``cursor``, ``timeout`` or ``limit``).  *cursor* is where
    to start: a cursor string, ``"earliest"``, or ``None`` for live from now.
    *cursor_in* picks where the cursor travels: the ``cursor`` query parameter
    (``"query"``) or ``If-None-Match`` (``"header"``, which also makes a timed-out
    poll a bodiless ``304``).

    *timeout* is the hold time asked of the server (default 25 s; with a *poller*,
    default 0: conditional short polling paced by the :class:`AdaptivePoller`, with
    the cursor in the header).  *limit* asks for at most that many events per answer
    (``None``: the server's default).  *rng* feeds the backoff jitter; *backoff* is the
    pacing (default :func:`tidings.backoff.default_backoff`, as for every tidings
    client) and *max_retries* the failed retries in a row after which the client gives
    up (``None``: never).

    All times (``now``) are seconds on one monotonic clock of the caller's choosing.
    """

    __slots__ = (
        "_cursor",
        "_gave_up",
        "_header_mode",
        "_limit",
        "_poller",
        "_reset_streak",
        "_retrier",
        "_send_at",
        "_sent_at",
        "_state",
        "_timeout",
        "_up",
        "max_body_size",
        "max_retry_after",
        "min_interval",
        "timeout_grace",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        rng: Random,
        cursor: str | None = None,
        cursor_in: Literal["query", "header"] | None = None,
        timeout: float | None = None,
        limit: int | None = None,
        poller: AdaptivePoller | None = None,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        min_interval: float = 1.0,
        timeout_grace: float = 10.0,
        max_retry_after: float = 600.0,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        parts = urlsplit(url)
        clash = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)} & {
            "cursor",
            "timeout",
            "limit",
        }
        if clash:
            raise LocalProtocolError(f"url must not set {sorted(clash)}: the client sets them")
        if cursor is not None and cursor != EARLIEST:
            try:
                Position.parse(cursor)
            except InvalidCursor:
                raise LocalProtocolError(f"invalid start cursor {cursor!r}") from None
        if cursor_in is None:
            cursor_in = "header" if poller is not None else "query"
        if cursor_in not in ("query", "header"):
            raise LocalProtocolError(f"cursor_in must be 'query' or 'header', not {cursor_in!r}")
        if timeout is None:
            timeout = 0.0 if poller is not None else DEFAULT_TIMEOUT
        _check_number("timeout", timeout)
        if timeout > _MAX_TIMEOUT:
            raise LocalProtocolError(f"timeout must be <= {_MAX_TIMEOUT}")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise LocalProtocolError(f"limit must be an int >= 1, got {limit!r}")
        _check_number("min_interval", min_interval)
        _check_number("timeout_grace", timeout_grace)
        _check_number("max_retry_after", max_retry_after)
        if type(max_body_size) is not int or max_body_size < 1:
            raise LocalProtocolError(f"max_body_size must be an int >= 1, got {max_body_size!r}")
        #: The poll endpoint, as given (without a fragment).
        self.url = parts._replace(fragment="").geturl()
        #: Least time between the starts of two requests when the first brought nothing.
        self.min_interval = float(min_interval)
        #: Seconds added to the hold time before a request counts as lost.
        self.timeout_grace = float(timeout_grace)
        #: The largest ``Retry-After`` honoured, in seconds.
        self.max_retry_after = float(max_retry_after)
        #: The largest answer body accepted, in bytes.
        self.max_body_size = max_body_size
        self._cursor = cursor
        self._header_mode = cursor_in == "header"
        self._timeout = float(timeout)
        self._limit = limit
        self._poller = poller
        self._retrier = Retrier(
            rng, backoff=backoff, max_retries=max_retries, max_floor=self.max_retry_after
        )
        # Whether a run of good answers is going on (the long-poll "connection").
        self._up = False
        self._gave_up: GiveUp | None = None
        self._state = ClientState.READY
        self._send_at = -math.inf
        self._sent_at = -math.inf
        self._reset_streak = 0

    @property
    def cursor(self) -> str | None:
        """The position after the last event delivered (resume from here)."""
        return self._cursor

    @property
    def state(self) -> ClientState:
        """Where the client is in its loop."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the client has stopped for good."""
        return self._state is ClientState.CLOSED

    @property
    def attempt(self) -> int:
        """Consecutive failures (and repeated resets) behind the current backoff."""
        return self._retrier.attempt

    @property
    def retrier(self) -> Retrier:
        """The retry decision and its pacing (read it; the client drives it)."""
        return self._retrier

    @property
    def gave_up(self) -> GiveUp | None:
        """Why the client stopped retrying, once it did (``None`` otherwise, and after a
        ``204`` or :meth:`close`)."""
        return self._gave_up

    def next_deadline(self) -> float | None:
        """When to send the next request (``-inf``: at once); ``None`` unless ready."""
        return self._send_at if self._state is ClientState.READY else None

    def send_request(self, now: float) -> OutgoingPoll:
        """The next request to perform; the client then waits for its outcome.

        Sending before :meth:`next_deadline` is allowed (e.g. the user asked for a
        refresh); sending while a request is outstanding is not.
        """
        if self._state is not ClientState.READY:
            raise LocalProtocolError(f"cannot send a request while {self._state.value}")
        _check_number("now", now, low=-math.inf)
        params: list[str] = []
        headers = [("accept", "application/json"), ("cache-control", "no-cache")]
        if self._cursor is not None:
            if self._header_mode:
                headers.append(("if-none-match", f'"{self._cursor}"'))
            else:
                params.append("cursor=" + quote(self._cursor, safe=""))
        params.append("timeout=" + _seconds_text(self._timeout))
        if self._limit is not None:
            params.append(f"limit={self._limit}")
        separator = "&" if "?" in self.url else "?"
        if self.url.endswith(("?", "&")):
            separator = ""
        self._state = ClientState.WAITING
        self._sent_at = now
        return OutgoingPoll(
            self.url + separator + "&".join(params),
            tuple(headers),
            self._timeout + self.timeout_grace,
        )

    def _expect_waiting(self, now: float) -> None:
        if self._state is not ClientState.WAITING:
            raise LocalProtocolError(f"no request outstanding (client is {self._state.value})")
        _check_number("now", now, low=-math.inf)

    def _decide(self, decision: Reconnect | GiveUp, now: float) -> Reconnect | GiveUp:
        self._up = False
        if isinstance(decision, GiveUp):
            self._state = ClientState.CLOSED
            self._gave_up = decision
        else:
            self._state = ClientState.READY
            self._send_at = now + decision.delay
        return decision

    def connection_failed(self, now: float, error: str = "") -> Reconnect | GiveUp:
        """The outstanding request failed without an answer: retry later, or give up.

        Covers connection errors, connections cut mid-answer, and the request
        timeout of :class:`OutgoingPoll` expiring.  The cursor stays where it was.
        *error* describes the failure.  After :class:`~tidings.retry.GiveUp` (only
        with *max_retries*) the client is closed.
        """
        self._expect_waiting(now)
        return self._decide(self._retrier.network_error(now, error), now)

    def receive_head(self, status: int, headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
        """Judge the head of the answer before its body (optional, but saves waiting).

        Raises :class:`~tidings.errors.RemoteProtocolError`, and closes the client, for
        a ``200`` that is not JSON: the URL is not a poll endpoint (an event stream,
        whose body would never end, or an HTML page).  Anything else is judged by
        :meth:`receive_response` with the complete body.
        """
        self._expect_waiting(0.0)
        if status != 200:
            return
        try:
            _check_json(headers)
        except RemoteProtocolError:
            self._state = ClientState.CLOSED
            raise

    def receive_response(
        self,
        status: int,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes,
        now: float,
        *,
        wall_time: float | None = None,
    ) -> list[PollEvent | PollReset]:
        """Take the complete answer to the outstanding request; return what it brought.

        *headers* are ``(name, value)`` pairs (bytes or str, any case).  *wall_time*
        is the current Unix time in seconds, used only for a ``Retry-After`` given as
        an HTTP-date when the answer has no ``Date`` field (see
        :func:`~tidings.retry_after.parse_retry_after`).

        Raises :class:`PollRejected` for a status that must not be retried (or when
        *max_retries* failed retries in a row are reached) and
        :class:`~tidings.errors.RemoteProtocolError` for an invalid ``200`` answer;
        either closes the client.
        """
        self._expect_waiting(now)
        if status == 200:
            try:
                return self._receive_ok(headers, body, now)
            except RemoteProtocolError:
                self._state = ClientState.CLOSED
                raise
        if status == 304:
            self._good(now)
            self._schedule(changed=False, now=now)
            return []
        if status == 204:
            self._state = ClientState.CLOSED
            return []
        headers = list(headers)
        retry_after = retry_after_from_headers(headers, wall_time=wall_time)
        decision = self._decide(self._retrier.http_failure(status, retry_after, now), now)
        if isinstance(decision, Reconnect):
            return []
        detail = _error_text(body) if len(body) <= self.max_body_size else None
        message = f"poll rejected: {decision.reason}"
        raise PollRejected(status, f"{message}: {detail}" if detail else message)

    def _receive_ok(
        self, headers: Iterable[tuple[bytes | str, bytes | str]], body: bytes, now: float
    ) -> list[PollEvent | PollReset]:
        _check_json(headers)
        if len(body) > self.max_body_size:
            raise RemoteProtocolError(f"answer body exceeds {self.max_body_size} bytes")
        events, cursor, reset, reason = _parse_body(body)
        self._cursor = cursor
        self._good(now)
        items: list[PollEvent | PollReset] = []
        if reset:
            items.append(PollReset(cursor, reason))
            self._reset_streak += 1
            if self._reset_streak > 1:
                # Two resets in a row: the cursor does not stick (say, servers with
                # separate histories behind one balancer).  Back off as for a failure.
                self._decide(self._retrier.ended(now, "repeated reset"), now)
                items.extend(events)
                return items
            self._state = ClientState.READY
            self._send_at = now
            if self._poller is not None:
                self._poller.record(True, now)
        else:
            if events:
                self._retrier.progress()
            self._schedule(changed=bool(events), now=now)
        items.extend(events)
        return items

    def _good(self, now: float) -> None:
        """A valid answer arrived: the long-poll "connection" is up (since *now* if new)."""
        if not self._up:
            self._retrier.connected(now)
            self._up = True

    def _schedule(self, *, changed: bool, now: float) -> None:
        """A good, non-reset answer: schedule the next request."""
        self._reset_streak = 0
        self._state = ClientState.READY
        if self._poller is not None:
            deadline = self._poller.record(changed, now)
            self._send_at = now if changed else deadline
        elif changed:
            self._send_at = now
        else:
            self._send_at = max(now, self._sent_at + self.min_interval)

    def close(self) -> None:
        """Stop: no further requests.  Safe to call more than once."""
        self._state = ClientState.CLOSED

    def __repr__(self) -> str:
        return (
            f"<LongPollClient {self.url!r} cursor={self._cursor!r} state={self._state.value} "
            f"attempt={self._retrier.attempt}>"
        )
