"""The server side of one long poll: answer now, or hold until something happens.

A :class:`LongPollServer` is made per request, like an h11 connection is made per
socket.  It owns no clock and no waiting: the adapter calls :meth:`~LongPollServer.poll`
when the request arrives and again whenever the topic may have changed (a publish),
and :meth:`~LongPollServer.handle_timer` when :meth:`~LongPollServer.next_deadline`
passes.  Each call returns a finished :class:`PollAnswer` or ``None`` (keep holding).

Answers are plain data: status, headers, body bytes.  The body is built by hand from
pre-escaped pieces, because a wake-up can answer thousands of held requests at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Protocol

from tidings.cursor import EARLIEST, Position
from tidings.errors import LocalProtocolError
from tidings.history import Replay, Reset, StoredEvent
from tidings.longpoll.request import Cursor, PollRequest

__all__ = [
    "LongPollServer",
    "PollAnswer",
    "ReadableHistory",
    "encode_poll_body",
    "error_answer",
]

_JSON = b"application/json"
_NO_STORE = b"no-store"


class ReadableHistory(Protocol):
    """The part of a history a :class:`LongPollServer` reads (``MemoryHistory`` fits)."""

    def head(self, topic: str) -> Position:
        """The position of the newest event of *topic*."""
        ...

    def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        """At most *limit* events of *topic* after *after*, or a reset."""
        ...


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """A complete HTTP answer to send: the adapter writes it as it is.

    ``headers`` are lower-case ``(name, value)`` byte pairs, ready for h11 or h2.
    Answers with a body carry ``content-length``; a ``304`` carries neither a body nor
    a ``content-type``.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""


def _event_json(event: StoredEvent) -> str:
    kind = "null" if event.event is None else encode_basestring_ascii(event.event)
    # Positions are ASCII letters, digits, '-', '_' and '.': nothing to escape.
    return (
        f'{{"id":"{event.position.format()}","event":{kind},'
        f'"data":{encode_basestring_ascii(event.data)}}}'
    )


def encode_poll_body(events: Sequence[StoredEvent], cursor: Position, reset: bool) -> bytes:
    """The JSON answer body ``{"events": [...], "cursor": ..., "reset": ...}``.

    Each event is ``{"id", "event", "data"}`` (``event`` is ``null`` for an untyped
    event).  Output is compact and pure ASCII (non-ASCII text is ``\\u`` escaped).
    """
    parts = ",".join([_event_json(event) for event in events])
    flag = "true" if reset else "false"
    return f'{{"events":[{parts}],"cursor":"{cursor.format()}","reset":{flag}}}'.encode("ascii")


def _headers_200(cursor: Position, length: int) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"content-type", _JSON),
        (b"cache-control", _NO_STORE),
        (b"etag", b'"' + cursor.format().encode("ascii") + b'"'),
        (b"content-length", str(length).encode("ascii")),
    )


def _ok(events: Sequence[StoredEvent], cursor: Position, reset: bool) -> PollAnswer:
    body = encode_poll_body(events, cursor, reset)
    return PollAnswer(200, _headers_200(cursor, len(body)), body)


def error_answer(message: str, status: int = 400) -> PollAnswer:
    """A JSON error answer ``{"error": message}`` (for a rejected request).

    Typical use: ``error_answer(str(exc), exc.error_status_hint)`` after
    :func:`~tidings.longpoll.parse_poll_request` raised.
    """
    if not 400 <= status <= 599:
        raise LocalProtocolError(f"an error answer needs a 4xx or 5xx status, got {status}")
    body = json.dumps({"error": message}, separators=(",", ":")).encode("ascii")
    headers = (
        (b"content-type", _JSON),
        (b"cache-control", _NO_STORE),
        (b"content-length", str(len(body)).encode("ascii")),
    )
    return PollAnswer(status, headers, body)


class LongPollServer:
    """Decides the answer to one poll request on one topic.

    Drive it like this (the adapter subscribes to wake-ups *before* the first poll, so
    a publish that lands in between is not missed)::

        server = LongPollServer(topic, request, now)
        answer = server.poll(history, now)
        while answer is None:
            # wait for a publish on the topic or for server.next_deadline()
            answer = server.poll(history, now)      # after a publish
            answer = server.handle_timer(now)       # after the deadline
        send(answer)

    With a history whose reads are asynchronous, read it yourself and pass the result
    to :meth:`receive_read` instead of :meth:`poll`: read after :attr:`read_after`
    with :attr:`limit`; when :attr:`read_after` is ``None`` (live from now) pass
    ``Replay((), head)`` built from the topic's head.
    """

    __slots__ = ("_after", "_answer", "_deadline", "request", "topic")

    def __init__(self, topic: str, request: PollRequest, now: float) -> None:
        if not isinstance(now, int | float) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number, got {now!r}")
        #: The topic this request reads.
        self.topic = topic
        #: The validated request.
        self.request = request
        self._after: Cursor = request.cursor
        self._deadline = now + request.timeout
        self._answer: PollAnswer | None = None

    @property
    def read_after(self) -> Cursor:
        """Where the next read starts: a position, ``"earliest"``, or ``None`` (head).

        Becomes a concrete position after the first read that found nothing, so later
        reads neither skip events published in between nor start over.
        """
        return self._after

    @property
    def limit(self) -> int:
        """The most events the answer may carry."""
        return self.request.limit

    @property
    def answer(self) -> PollAnswer | None:
        """The answer, once decided; ``None`` while the request is held."""
        return self._answer

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called; ``None`` once answered."""
        return None if self._answer is not None else self._deadline

    def _check_open(self) -> None:
        if self._answer is not None:
            raise LocalProtocolError("this poll has already been answered")

    def poll(self, history: ReadableHistory, now: float) -> PollAnswer | None:
        """Read *history* and answer if there is something (or the time is up)."""
        self._check_open()
        after = self._after
        if after is None:
            after = history.head(self.topic)
            self._after = after
        return self.receive_read(history.read(self.topic, after, self.request.limit), now)

    def receive_read(self, result: Replay | Reset, now: float) -> PollAnswer | None:
        """Act on a read done by the caller: answer events or a reset, else hold.

        An empty :class:`~tidings.history.Replay` after the deadline answers as the
        timer would.
        """
        self._check_open()
        if isinstance(result, Reset):
            self._answer = _ok((), result.head, reset=True)
            return self._answer
        if not isinstance(result, Replay):
            raise LocalProtocolError(f"expected a Replay or a Reset, got {result!r}")
        if result.events:
            self._answer = _ok(result.events, result.cursor, reset=False)
            return self._answer
        self._after = result.cursor
        if now >= self._deadline:
            return self._timed_out()
        return None

    def handle_timer(self, now: float) -> PollAnswer | None:
        """At or after the deadline, answer "nothing new"; before it, ``None``.

        Nothing new is ``304 Not Modified`` when the request was conditional and its
        cursor is still the current one, else ``200`` with no events and the cursor.
        """
        self._check_open()
        if now < self._deadline:
            return None
        return self._timed_out()

    def _timed_out(self) -> PollAnswer:
        after = self._after
        if after is None or after == EARLIEST:
            raise LocalProtocolError("handle_timer() before the first poll() or receive_read()")
        assert isinstance(after, Position)
        text = after.format()
        if self.request.conditional and text == self.request.cursor_text:
            headers = (
                (b"cache-control", _NO_STORE),
                (b"etag", b'"' + text.encode("ascii") + b'"'),
            )
            self._answer = PollAnswer(304, headers)
        else:
            self._answer = _ok((), after, reset=False)
        return self._answer

    def __repr__(self) -> str:
        state = "held" if self._answer is None else f"answered {self._answer.status}"
        return f"<LongPollServer topic={self.topic!r} after={self._after!s} {state}>"
