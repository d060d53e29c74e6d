"""The EventSource connection model (WHATWG HTML, server-sent events) as a sans-IO machine.

:class:`EventSourceClient` decides everything a browser's ``EventSource`` decides --
which headers the next request carries, whether a response opens the stream, what
the body means, when to reconnect and with which ``Last-Event-ID`` -- and leaves the
sockets, the clock and the sleeping to an adapter.  Whether and when to reconnect is
the one decision every tidings client shares (:class:`tidings.retry.Retrier`): the
server's ``retry`` is a floor under jittered backoff, a connection that delivered new
events resumes promptly, and overloaded servers (``503``, ``429`` ...) are waited for
rather than abandoned -- unless *strict*, which follows the WHATWG rules to the letter.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from operator import attrgetter

from tidings._checks import check_now as _check_now
from tidings._checks import header_text as _text
from tidings.backoff import Backoff, Random
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.retry import GiveUp, Reconnect, Retrier
from tidings.retry_after import retry_after_from_headers
from tidings.sse.parser import (
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_LENGTH,
    EventStreamParser,
    MessageEvent,
)
from tidings.sse.reset import RESET_EVENT_TYPE

__all__ = [
    "DEFAULT_MAX_RECONNECTION_TIME",
    "EVENT_STREAM_MEDIA_TYPE",
    "EventSourceClient",
    "EventSourceCloseReason",
    "EventSourceState",
]

#: The media type (essence) a response must have to open the stream.
EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
#: Longest server ``retry`` honoured, in seconds; longer values are clamped to it.
DEFAULT_MAX_RECONNECTION_TIME = 3600.0

_HTTP_WHITESPACE = " \t\r\n"
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What h11, h2 and Fetch all accept as a header value: no NUL, CR, LF, VT or FF, and
# no whitespace at either end.
_HEADER_VALUE_RE = re.compile(r"[^\x00\t\n\x0b\x0c\r ]+(?:[ \t]+[^\x00\t\n\x0b\x0c\r ]+)*")
_event_id = attrgetter("last_event_id")


def _all_sendable(ids: str) -> bool:
    # The same rule over IDs framed by LF (which no ID contains), as substring tests,
    # which are much cheaper per event than a loop or a regular expression.
    return not (
        "\n " in ids
        or " \n" in ids
        or "\n\t" in ids
        or "\t\n" in ids
        or "\x0b" in ids
        or "\x0c" in ids
    )


class EventSourceState(enum.Enum):
    """Where the client is.  ``readyState`` maps CONNECTING and WAITING to 0, OPEN to 1
    and CLOSED to 2."""

    #: A request should be (or has been) sent; waiting for the response.
    CONNECTING = "connecting"
    #: A good response arrived; body bytes are being parsed.
    OPEN = "open"
    #: The connection ended; waiting until :meth:`EventSourceClient.next_deadline`.
    WAITING = "waiting"
    #: Finished for good; see :attr:`EventSourceClient.close_reason`.
    CLOSED = "closed"


class EventSourceCloseReason(enum.Enum):
    """Why an :class:`EventSourceClient` reached CLOSED."""

    #: :meth:`EventSourceClient.close` was called.
    USER = "user"
    #: The server answered ``204 No Content``: it asks the client to stop.
    SERVER_STOP = "server-stop"
    #: A response that cannot open the stream (a status that must not be retried, or
    #: the wrong media type), a stream that broke the protocol or a limit, or
    #: ``max_retries`` failed retries in a row; the spec's "fail the connection".
    FAILED = "failed"


def _split_outside_quotes(value: str) -> list[str]:
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return parts


def _media_type_essence(values: list[str]) -> str | None:
    """The essence (``type/subtype``, lower case) of a Content-Type, Fetch style.

    Several header lines are combined and split on commas outside quoted strings;
    the last piece that parses and is not ``*/*`` wins.  Parameters are ignored.
    """
    essence: str | None = None
    for piece in _split_outside_quotes(",".join(values)):
        kind, slash, rest = piece.strip(_HTTP_WHITESPACE).partition("/")
        subtype = rest.partition(";")[0].rstrip(_HTTP_WHITESPACE)
        if not slash or not _TOKEN_RE.fullmatch(kind) or not _TOKEN_RE.fullmatch(subtype):
            continue
        candidate = f"{kind}/{subtype}".lower()
        if candidate != "*/*":
            essence = candidate
    return essence


class EventSourceClient:
    """One logical event stream across any number of HTTP connections.

    The adapter drives it like this (``now`` from a monotonic clock, in seconds)::

        client = EventSourceClient(rng=random.Random())
        while client.state is not EventSourceState.CLOSED:
            # state is CONNECTING
            headers = client.request_headers()        # add them to a GET of the URL
            try:
                response = <send the request, follow redirects, read the head>
                client.receive_response(response.status, response.headers, now)
                if client.state is not EventSourceState.OPEN:
                    continue                          # WAITING (503 ...) or CLOSED
                async for chunk in <the body>:
                    for event in client.receive_data(chunk):
                        <deliver event>               # MessageEvent(type, data, last_event_id)
                client.receive_eof(now)               # body ended: WAITING (or CLOSED)
            except <network error>:
                client.connection_failed(now)         # WAITING (or CLOSED)
            # (a RemoteProtocolError from receive_data leaves the client CLOSED)
            <sleep until client.next_deadline()>
            client.handle_timer(now)                  # state is CONNECTING again

    :meth:`close` may be called at any time (it is the user's ``EventSource.close()``);
    after it the adapter stops feeding the client.  Calling a method in the wrong state
    raises :class:`~tidings.errors.LocalProtocolError`.

    What persists across connections: :attr:`last_event_id` (sent back as
    ``Last-Event-ID``; an ``id`` inside an event cut off by the end of a connection does
    not count) and :attr:`reconnection_time` (the server's ``retry``, clamped to
    *max_reconnection_time*).  Each connection gets a fresh
    :class:`~tidings.sse.parser.EventStreamParser` with *max_line_length* and
    *max_event_size* (1 MiB and 16 MiB of characters by default).

    **Reconnecting** is decided by a :class:`~tidings.retry.Retrier` (:attr:`retrier`)
    with *backoff* (:func:`~tidings.backoff.default_backoff` by default) and
    *max_retries* (``None``: retry forever).  The delay is the reconnection time plus
    jitter, where the jitter grows with failed attempts; a connection that delivered
    new events (an event of a type other than ``tidings.reset``, and the last event ID
    moved between the start and the end of the connection) counts as progress: it
    resets the attempts and resumes after a short jitter without the reconnection
    time, so a follower keeps up on a link that drops every few kilobytes; a server
    that repeats the same backlog on every connection makes none.  A connection that
    lived for the stable period resets the attempts too, but spreads its first
    reconnection widely, since a server restart drops all clients at once.

    **Judging a response**: status 200 with media type ``text/event-stream`` (any case,
    parameters ignored) opens the stream; 200 with another media type closes it for
    good (FAILED).  204 closes it for good because the server asked
    (:attr:`EventSourceCloseReason.SERVER_STOP`).  Any other status is judged by
    :func:`~tidings.retry.classify_http`: 408, 425, 429, 500, 502, 503 and 504 are
    retried (a ``Retry-After`` is a floor under the delay), the rest close the stream
    for good (FAILED) -- including 3xx: following redirects (with the same request
    headers) is the adapter's job, as it is Fetch's in a browser.  The body must be
    handed over after any content coding was removed.

    *strict* follows the WHATWG rules where tidings is more forgiving: every status
    other than 200 fails the stream, as in a browser, and the reconnection time is
    waited even after a productive connection.

    One deliberate addition to the spec: an ``id`` that could not be sent back in an
    HTTP header (leading or trailing whitespace, vertical tab or form feed), seen on a
    returned event or as the last event ID after a chunk, fails the stream with
    :class:`~tidings.errors.RemoteProtocolError` rather than breaking the next request
    or resuming from the wrong place.  When :meth:`receive_data` raises, no event of
    that chunk has been delivered, so :attr:`last_event_id` is rolled back to its value
    before the chunk.
    """

    def __init__(
        self,
        *,
        rng: Random,
        last_event_id: str = "",
        reconnection_time: float = 0.0,
        max_reconnection_time: float = DEFAULT_MAX_RECONNECTION_TIME,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        strict: bool = False,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        if not isinstance(last_event_id, str):
            raise LocalProtocolError("last_event_id must be a str")
        if last_event_id and not _HEADER_VALUE_RE.fullmatch(last_event_id):
            raise LocalProtocolError(f"last_event_id {last_event_id!r} cannot be sent in a header")
        for name, value in (
            ("reconnection_time", reconnection_time),
            ("max_reconnection_time", max_reconnection_time),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise LocalProtocolError(f"{name} must be finite and >= 0, got {value!r}")
        self._retrier = Retrier(rng, backoff=backoff, max_retries=max_retries, strict=strict)
        self._max_reconnection_time = float(max_reconnection_time)
        self._reconnection_time = min(float(reconnection_time), self._max_reconnection_time)
        self._retrier.standing_floor = self._reconnection_time
        self._last_event_id = last_event_id
        self._max_line_length = max_line_length
        self._max_event_size = max_event_size
        # Fail early on bad limits rather than at the first response.
        self._new_parser()
        self._parser: EventStreamParser | None = None
        self._state = EventSourceState.CONNECTING
        self._deadline: float | None = None
        self._close_reason: EventSourceCloseReason | None = None
        self._close_message = ""
        self._last_decision: Reconnect | GiveUp | None = None
        # The last event ID when the current connection opened (progress moves it),
        # and whether the connection delivered an event other than a reset notice.
        self._opened_with: str | None = None
        self._delivered = False

    # -- inspection -------------------------------------------------------------------

    @property
    def state(self) -> EventSourceState:
        """The current :class:`EventSourceState`."""
        return self._state

    @property
    def last_event_id(self) -> str:
        """The last event ID string: what the next connection sends as ``Last-Event-ID``."""
        return self._last_event_id

    @property
    def reconnection_time(self) -> float:
        """The spec's reconnection time in seconds: the floor under every reconnect delay."""
        return self._reconnection_time

    @property
    def backoff(self) -> Backoff:
        """The attempt tracker (read it; the client drives it)."""
        return self._retrier.backoff

    @property
    def retrier(self) -> Retrier:
        """The retry decision and its pacing (read it; the client drives it)."""
        return self._retrier

    @property
    def strict(self) -> bool:
        """Whether the WHATWG rules apply to the letter (see the class documentation)."""
        return self._retrier.strict

    @property
    def last_decision(self) -> Reconnect | GiveUp | None:
        """What the last ended connection (or refused attempt) led to, with the reason:
        :class:`~tidings.retry.Reconnect` while WAITING, :class:`~tidings.retry.GiveUp`
        once it gave up; ``None`` before the first."""
        return self._last_decision

    @property
    def close_reason(self) -> EventSourceCloseReason | None:
        """Why the client is CLOSED, or ``None`` while it is not."""
        return self._close_reason

    @property
    def close_message(self) -> str:
        """A human-readable explanation of :attr:`close_reason` (empty while not CLOSED)."""
        return self._close_message

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_timer` (WAITING only), else ``None``."""
        return self._deadline if self._state is EventSourceState.WAITING else None

    # -- driving ----------------------------------------------------------------------

    def request_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers for the request of the connection about to be made (CONNECTING only).

        Lower-case names, as h11 and h2 both accept: ``accept: text/event-stream``,
        ``cache-control: no-cache`` and, when the last event ID is not empty,
        ``last-event-id`` with its UTF-8 bytes.
        """
        self._require(EventSourceState.CONNECTING, "request_headers")
        headers = [
            (b"accept", EVENT_STREAM_MEDIA_TYPE.encode("ascii")),
            (b"cache-control", b"no-cache"),
        ]
        if self._last_event_id:
            headers.append((b"last-event-id", self._last_event_id.encode("utf-8")))
        return headers

    def receive_response(
        self,
        status: int,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        now: float,
        *,
        wall_time: float | None = None,
    ) -> EventSourceState:
        """Judge the response head (CONNECTING only) and return the new state.

        OPEN when the stream starts (the connection's lifetime counts from *now*),
        WAITING when the status is worth another attempt (see :attr:`last_decision`),
        CLOSED otherwise.  Header names are matched case-insensitively; bytes are
        decoded as Latin-1.  *wall_time* (Unix time) reads a ``Retry-After`` given as
        an HTTP-date when the response has no ``Date``.
        """
        self._require(EventSourceState.CONNECTING, "receive_response")
        _check_now(now)
        if status == 204:
            self._finish(EventSourceCloseReason.SERVER_STOP, "server answered 204 No Content")
            return self._state
        if status != 200:
            headers = list(headers)
            retry_after = retry_after_from_headers(headers, wall_time=wall_time)
            self._decide(self._retrier.http_failure(status, retry_after, now), now)
            return self._state
        content_types = [
            _text(value) for name, value in headers if _text(name).lower() == "content-type"
        ]
        essence = _media_type_essence(content_types)
        if essence != EVENT_STREAM_MEDIA_TYPE:
            shown = ", ".join(content_types) if content_types else "no Content-Type"
            self._finish(
                EventSourceCloseReason.FAILED,
                f"response is not {EVENT_STREAM_MEDIA_TYPE} ({shown})",
            )
            return self._state
        self._parser = self._new_parser()
        self._state = EventSourceState.OPEN
        self._retrier.connected(now)
        self._opened_with = self._last_event_id
        self._delivered = False
        return self._state

    def receive_data(self, data: bytes) -> list[MessageEvent]:
        """Parse body bytes (OPEN only) and return the events they complete.

        Raises :class:`~tidings.errors.RemoteProtocolError` (and the client is CLOSED,
        FAILED) when the stream exceeds a parser limit or sets an ID that cannot be
        sent back in a header.
        """
        self._require(EventSourceState.OPEN, "receive_data")
        parser = self._parser
        assert parser is not None
        before = self._last_event_id
        try:
            events = parser.receive_data(data)
            last_event_id = parser.last_event_id
            if events and not _all_sendable("\n" + "\n".join(map(_event_id, events)) + "\n"):
                for event in events:
                    self._check_sendable(event.last_event_id)
            self._check_sendable(last_event_id)
        except RemoteProtocolError as exc:
            self._last_event_id = before
            self._finish(EventSourceCloseReason.FAILED, str(exc))
            raise
        self._take_retry(parser)
        self._last_event_id = last_event_id
        if not self._delivered and any(e.type != RESET_EVENT_TYPE for e in events):
            self._delivered = True
        return events

    def _note_progress(self) -> None:
        # At the end of a connection: it made progress if it delivered an event that
        # is not a reset notice *and* the last event ID moved.  A foreign server that
        # repeats its backlog (with or without IDs) on every connection ends where it
        # started, and makes none.
        if (
            self._state is EventSourceState.OPEN
            and self._delivered
            and self._last_event_id != self._opened_with
        ):
            self._retrier.progress()

    def receive_eof(self, now: float) -> Reconnect | GiveUp:
        """The body ended (OPEN only): reconnect after a delay, or (with *max_retries*)
        give up.

        An event not yet ended by a blank line is discarded, and an ``id`` inside it
        does not change :attr:`last_event_id`; a ``retry`` inside it still counts, as
        the spec applies ``retry`` when the field is read.
        """
        self._require(EventSourceState.OPEN, "receive_eof")
        _check_now(now)
        parser = self._parser
        assert parser is not None
        parser.receive_eof()
        self._take_retry(parser)
        self._note_progress()
        return self._decide(self._retrier.ended(now), now)

    def connection_failed(self, now: float, error: str = "") -> Reconnect | GiveUp:
        """A network error (CONNECTING or OPEN): reconnect after a delay, or give up.

        Use it for a refused or reset connection, a timeout, an HTTP/2 stream reset or a
        body cut short: anything but a complete response head that :meth:`receive_response`
        could judge.  A partial event is discarded as at the end of the body.  *error*
        describes the failure for :attr:`last_decision`.
        """
        if self._state not in (EventSourceState.CONNECTING, EventSourceState.OPEN):
            raise LocalProtocolError(f"connection_failed called in state {self._state.name}")
        _check_now(now)
        self._note_progress()
        return self._decide(self._retrier.network_error(now, error), now)

    def handle_timer(self, now: float) -> None:
        """Move from WAITING to CONNECTING once *now* reached :meth:`next_deadline`.

        Does nothing in any other state or before the deadline, so it is safe to call
        on spurious wake-ups.
        """
        _check_now(now)
        if (
            self._state is EventSourceState.WAITING
            and self._deadline is not None
            and now >= self._deadline
        ):
            self._state = EventSourceState.CONNECTING
            self._deadline = None

    def close(self) -> None:
        """Stop for good, as ``EventSource.close()`` does.  Idempotent."""
        if self._state is not EventSourceState.CLOSED:
            self._finish(EventSourceCloseReason.USER, "closed by the user")

    # -- internals --------------------------------------------------------------------

    def _require(self, state: EventSourceState, method: str) -> None:
        if self._state is not state:
            raise LocalProtocolError(
                f"{method} needs state {state.name}, but the client is {self._state.name}"
            )

    def _new_parser(self) -> EventStreamParser:
        return EventStreamParser(
            last_event_id=self._last_event_id,
            max_line_length=self._max_line_length,
            max_event_size=self._max_event_size,
        )

    @staticmethod
    def _check_sendable(last_event_id: str) -> None:
        if last_event_id and not _HEADER_VALUE_RE.fullmatch(last_event_id):
            raise RemoteProtocolError(
                f"event id {last_event_id!r} cannot be sent back in a Last-Event-ID header"
            )

    def _take_retry(self, parser: EventStreamParser) -> None:
        retry = parser.retry
        if retry is not None:
            # Clamp before dividing: a retry of hundreds of digits overflows a float.
            self._reconnection_time = min(retry, self._max_reconnection_time * 1000) / 1000
            self._retrier.standing_floor = self._reconnection_time

    def _decide(self, decision: Reconnect | GiveUp, now: float) -> Reconnect | GiveUp:
        self._parser = None
        self._opened_with = None
        self._last_decision = decision
        if isinstance(decision, GiveUp):
            self._finish(EventSourceCloseReason.FAILED, decision.reason)
        else:
            self._state = EventSourceState.WAITING
            self._deadline = now + decision.delay
        return decision

    def _finish(self, reason: EventSourceCloseReason, message: str) -> None:
        self._parser = None
        self._opened_with = None
        self._deadline = None
        self._state = EventSourceState.CLOSED
        self._close_reason = reason
        self._close_message = message

    def __repr__(self) -> str:
        return (
            f"<EventSourceClient state={self._state.name} "
            f"last_event_id={self._last_event_id!r} "
            f"reconnection_time={self._reconnection_time!r} attempt={self._retrier.attempt}>"
        )
