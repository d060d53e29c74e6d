"""The server side of one long poll: answer now, or hold until something happens.

A :class:`LongPollServer` is made per request, like an h11 connection is made per
socket.  It owns no clock, no waiting and no history: what to read, and whether a
read's answer is events, a reset or "nothing yet", is decided by the follow machine
(:class:`~tidings.follow.Follower`) it drives.  The adapter performs the reads it
asks for (:attr:`~LongPollServer.read`), tells it when the topic may have changed
(:meth:`~LongPollServer.published`), calls :meth:`~LongPollServer.handle_timer` when
:meth:`~LongPollServer.next_deadline` passes, and :meth:`~LongPollServer.answer_now`
when it must answer at once (the server drains).  Each returns a finished
:class:`PollAnswer` or ``None`` (keep holding).

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

from tidings.cursor import Position
from tidings.errors import LocalProtocolError
from tidings.follow import Deliver, Follower, ReadHistory
from tidings.history import Replay, Reset, StoredEvent
from tidings.longpoll.request import PollRequest

__all__ = [
    "LongPollServer",
    "PollAnswer",
    "ReadableHistory",
    "answer_read",
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
    #: How many events the body carries (for an adapter's metrics).
    events: int = 0
    #: The reset's reason (a :class:`~tidings.history.ResetReason` value) when the
    #: answer is a reset, else ``None``.
    reset: str | None = None


def _event_json(event: StoredEvent) -> str:
    kind = "null" if event.event is None else encode_basestring_ascii(event.event)
    # Positions are ASCII letters, digits, '-', '_' and '.': nothing to escape.
    return (
        f'{{"id":"{event.position.format()}","event":{kind},'
        f'"data":{encode_basestring_ascii(event.data)}}}'
    )


def encode_poll_body(
    events: Sequence[StoredEvent], cursor: Position, reset: bool, reason: str | None = None
) -> bytes:
    """The JSON answer body ``{"events": [...], "cursor": ..., "reset": ...}``.

    Each event is ``{"id", "event", "data"}`` (``event`` is ``null`` for an untyped
    event).  A reset may carry ``"reason"`` (a :class:`~tidings.history.ResetReason`
    value).  Output is compact and pure ASCII (non-ASCII text is ``\\u`` escaped).
    """
    parts = ",".join([_event_json(event) for event in events])
    flag = "true" if reset else "false"
    extra = "" if reason is None else f',"reason":{encode_basestring_ascii(reason)}'
    return (f'{{"events":[{parts}],"cursor":"{cursor.format()}","reset":{flag}{extra}}}').encode(
        "ascii"
    )


def _headers_200(cursor: Position, length: int) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"content-type", _JSON),
        (b"cache-control", _NO_STORE),
        (b"etag", b'"' + cursor.format().encode("ascii") + b'"'),
        (b"content-length", str(length).encode("ascii")),
    )


def _ok(
    events: Sequence[StoredEvent], cursor: Position, reset: bool, reason: str | None = None
) -> PollAnswer:
    body = encode_poll_body(events, cursor, reset, reason)
    return PollAnswer(
        200, _headers_200(cursor, len(body)), body, len(events), reason if reset else None
    )


def _answer(actions: Sequence[object], cursor: Position | None) -> PollAnswer | None:
    """The answer to what a follower said after a read: a reset (answered alone: the
    client polls on from its cursor and gets the retained events), events, or
    ``None`` for nothing yet."""
    events: list[StoredEvent] = []
    for action in actions:
        if isinstance(action, Reset):
            return _ok((), action.cursor, reset=True, reason=action.reason.value)
        if isinstance(action, Deliver):
            events += action.events
    if events:
        assert cursor is not None
        return _ok(events, cursor, reset=False)
    return None


def answer_read(after: Position, read: Replay | Reset, limit: int) -> PollAnswer | None:
    """The answer :meth:`LongPollServer.receive_read` gives to *read* (made after
    *after*, with *limit*) for every request that holds at *after*: events or a reset
    answer at once, "nothing yet" gives ``None``.

    A pure function of its arguments, so an adapter waking many held requests that
    read the same thing can compute the answer once and hand it to each
    (:meth:`LongPollServer.receive_answer`).
    """
    follower: Follower[StoredEvent] = Follower(after, page_size=limit)
    follower.begin()
    actions = follower.history(read)
    return _answer(actions, follower.last)


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

    Drive it like this (the adapter registers for wake-ups *before* the first read,
    so a publish that lands in between is not missed)::

        server = LongPollServer(topic, request, now)
        answer = None
        while answer is None:
            if server.read is not None:               # a read to make
                answer = server.receive_read(read the history as server.read says, now)
            else:                                     # wait for a publish or the deadline
                on a publish:       server.published()  (then read again)
                on the deadline:    answer = server.handle_timer(now)
                when draining:      answer = server.answer_now()
        send(answer)

    :meth:`poll` does the read itself for a synchronous history.
    """

    __slots__ = ("_answer", "_deadline", "_follower", "_read", "request", "topic")

    def __init__(self, topic: str, request: PollRequest, now: float) -> None:
        if not isinstance(now, int | float) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number, got {now!r}")
        #: The topic this request reads.
        self.topic = topic
        #: The validated request.
        self.request = request
        self._deadline = now + request.timeout
        self._answer: PollAnswer | None = None
        self._follower: Follower[StoredEvent] = Follower(request.cursor, page_size=request.limit)
        (first,) = self._follower.begin()
        assert isinstance(first, ReadHistory)
        self._read: ReadHistory | None = first

    @property
    def read(self) -> ReadHistory | None:
        """The history read to make now (``after`` ``None``: the head only, answer
        ``Replay((), head)``), or ``None`` while waiting or once answered."""
        return None if self._answer is not None else self._read

    @property
    def read_after(self) -> Position | str | None:
        """Where the next read starts: the pending read's ``after``, else the place
        the request holds at (a position once the first read was answered)."""
        if self._read is not None:
            return self._read.after
        return self._follower.last

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
        """Read a synchronous *history* and act on it: call it when the request
        arrives and again whenever the topic may have changed (a publish)."""
        self._check_open()
        read = self._read if self._read is not None else self.published()
        if read is None:
            return None
        if read.after is None:
            result: Replay | Reset = Replay((), history.head(self.topic))
        else:
            result = history.read(self.topic, read.after, read.limit)
        return self.receive_read(result, now)

    def receive_read(self, result: Replay | Reset, now: float) -> PollAnswer | None:
        """The answer to :attr:`read`: answer events or a reset, else hold.

        An empty :class:`~tidings.history.Replay` after the deadline answers as the
        timer would.
        """
        self._check_open()
        if self._read is None:
            raise LocalProtocolError("receive_read() without a pending read")
        if not isinstance(result, Replay | Reset):
            raise LocalProtocolError(f"expected a Replay or a Reset, got {result!r}")
        self._read = None
        actions = self._follower.history(result)
        answer = _answer(actions, self._follower.last)
        if answer is not None:
            self._answer = answer
            return answer
        if now >= self._deadline:
            return self._nothing_new()
        return None

    def receive_answer(self, result: Replay | Reset, answer: PollAnswer) -> PollAnswer:
        """Record *answer*, computed once by :func:`answer_read` for *result* (the
        answer to :attr:`read`) on behalf of every request holding at the same place.

        Equivalent to :meth:`receive_read` for a result with events or a reset
        (whose answer does not depend on the time or on the request); the machine
        still takes the result, so its state is the same either way.
        """
        self._check_open()
        if self._read is None:
            raise LocalProtocolError("receive_answer() without a pending read")
        self._read = None
        self._follower.history(result)
        self._answer = answer
        return answer

    def published(self) -> ReadHistory | None:
        """Something was published on the topic: the read to make (see :attr:`read`)."""
        self._check_open()
        if self._read is None:
            actions = self._follower.overflow()
            if actions:
                read = actions[0]
                assert isinstance(read, ReadHistory)
                self._read = read
        return self._read

    def handle_timer(self, now: float) -> PollAnswer | None:
        """At or after the deadline, answer "nothing new"; before it, ``None``.

        Nothing new is ``304 Not Modified`` when the request was conditional and its
        cursor is still the current one, else ``200`` with no events and the cursor.
        """
        self._check_open()
        if now < self._deadline:
            return None
        return self._nothing_new()

    def answer_now(self) -> PollAnswer:
        """Answer "nothing new" at once, deadline or not (the server drains; the
        client comes straight back, elsewhere)."""
        self._check_open()
        return self._nothing_new()

    def _nothing_new(self) -> PollAnswer:
        after = self._follower.last
        if after is None:
            raise LocalProtocolError("no read was answered yet: nothing to say")
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
        return f"<LongPollServer topic={self.topic!r} after={self.read_after!s} {state}>"
