"""The server side of one ``tidings.v1`` connection, without IO.

:class:`SessionServer` turns client messages into answers and into instructions for
the adapter.  It reads and appends through a narrow, synchronous :class:`History`
(``head`` / ``read`` / ``append``; :class:`~tidings.history.MemoryHistory` fits) and
gets live events from the hub through :meth:`SessionServer.live`.

Subscribe-then-replay: a ``subscribe`` yields :class:`StartLive` *first*, then the
replay read from the history in the same synchronous call.  An adapter that registers
with the hub on :class:`StartLive` before its next ``await`` therefore cannot miss an
event appended in between; events that reach :meth:`~SessionServer.live` although the
replay already contained them (position <= last sent) are dropped.  If a live event
does not follow the last one sent (a gap, or a new epoch), the history is read again
to fill the gap or to produce an explicit ``reset``: nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tidings.cursor import Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.history import Replay, Reset, StoredEvent
from tidings.ws.dedup import PublishDeduplicator
from tidings.ws.protocol import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_TOPIC_LENGTH,
    CloseConnection,
    ErrorCode,
    ErrorMessage,
    EventMessage,
    MessageTooBig,
    PublishedMessage,
    PublishMessage,
    ResetMessage,
    ServerMessage,
    SubscribedMessage,
    SubscribeMessage,
    parse_client_message,
)

__all__ = [
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_REPLAY_CHUNK",
    "Appended",
    "History",
    "ServerOutput",
    "SessionServer",
    "StartLive",
    "StopLive",
]

#: Default largest number of topics one connection may subscribe to.
DEFAULT_MAX_TOPICS = 100
#: Default number of ``error`` answers after which the connection is closed (1008).
DEFAULT_MAX_ERRORS = 10
#: Default number of events read from the history per ``read`` call during a replay.
DEFAULT_REPLAY_CHUNK = 1000


class History(Protocol):
    """What :class:`SessionServer` needs from a history (synchronous)."""

    def head(self, topic: str) -> Position:
        """The position of the newest event of *topic* (offset 0 when none)."""
        ...

    def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        """The events after *after* (a position, its wire form or ``"earliest"``)."""
        ...

    def append(self, topic: str, data: str, event: str | None = None) -> StoredEvent:
        """Store an event; raise :class:`~tidings.errors.LocalProtocolError` to refuse."""
        ...


@dataclass(frozen=True, slots=True)
class StartLive:
    """Register this connection with the hub for live events of ``topic``, before the
    next ``await``."""

    topic: str


@dataclass(frozen=True, slots=True)
class StopLive:
    """Stop delivering live events of ``topic`` to this connection."""

    topic: str


@dataclass(frozen=True, slots=True)
class Appended:
    """``event`` was stored in ``topic``: fan ``message`` (shared by all) out to every
    subscriber, this connection included."""

    topic: str
    event: StoredEvent
    message: EventMessage


#: What :class:`SessionServer` asks of its adapter: a message to send or an instruction.
ServerOutput = ServerMessage | StartLive | StopLive | Appended | CloseConnection


class SessionServer:
    """One connection's ``tidings.v1`` server machine.

    *history* stores and replays events; *dedup* is the server-wide
    :class:`~tidings.ws.dedup.PublishDeduplicator`.  Limits: *max_topics* subscriptions
    per connection, *max_message_size* bytes per message (larger: close 1009),
    *max_errors* ``error`` answers before closing with 1008, *replay_chunk* events per
    history read.  Set *fill_gaps* to false for histories whose offsets are not
    consecutive integers (then only a new epoch triggers a history read).
    """

    def __init__(
        self,
        history: History,
        dedup: PublishDeduplicator,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_topic_length: int = MAX_TOPIC_LENGTH,
        max_errors: int = DEFAULT_MAX_ERRORS,
        replay_chunk: int = DEFAULT_REPLAY_CHUNK,
        fill_gaps: bool = True,
    ) -> None:
        for name, value in (
            ("max_topics", max_topics),
            ("max_message_size", max_message_size),
            ("max_topic_length", max_topic_length),
            ("max_errors", max_errors),
            ("replay_chunk", replay_chunk),
        ):
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1")
        self.history = history
        self.dedup = dedup
        self.max_topics = max_topics
        self.max_message_size = max_message_size
        self.max_topic_length = max_topic_length
        self.max_errors = max_errors
        self.replay_chunk = replay_chunk
        self.fill_gaps = fill_gaps
        # topic -> position of the last event sent (or the point the stream starts after)
        self._last: dict[str, Position] = {}
        self._errors = 0
        self._closed = False

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection is subscribed to."""
        return frozenset(self._last)

    @property
    def closed(self) -> bool:
        """Whether the machine asked to close or was told the connection ended."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the session is closed")

    # -- client input

    def receive_text(self, text: str | bytes, now: float) -> list[ServerOutput]:
        """Handle one text message received at *now*; returns what to do, in order."""
        self._check_open()
        try:
            message = parse_client_message(
                text, max_size=self.max_message_size, max_topic_length=self.max_topic_length
            )
        except MessageTooBig as exc:
            return self._close(exc.close_code, "message too big")
        except RemoteProtocolError as exc:
            return self._error(ErrorMessage(ErrorCode.MALFORMED, str(exc)))
        if isinstance(message, SubscribeMessage):
            return self._subscribe(message)
        if isinstance(message, PublishMessage):
            return self._publish(message, now)
        return self._unsubscribe(message.topic)

    def receive_binary(self) -> list[ServerOutput]:
        """A binary message arrived: ``tidings.v1`` is text only (close 1003)."""
        self._check_open()
        return self._close(CLOSE_UNSUPPORTED_DATA, "tidings.v1 messages are text")

    def message_too_big(self) -> list[ServerOutput]:
        """The adapter stopped assembling a message over :attr:`max_message_size`."""
        self._check_open()
        return self._close(MessageTooBig.close_code, "message too big")

    def connection_closed(self) -> list[ServerOutput]:
        """The connection ended (either side): unregister every topic from the hub."""
        outputs: list[ServerOutput] = [StopLive(topic) for topic in self._last]
        self._last.clear()
        self._closed = True
        return outputs

    def _close(self, code: int, reason: str) -> list[ServerOutput]:
        outputs = self.connection_closed()
        outputs.append(CloseConnection(code, reason))
        return outputs

    def _error(self, error: ErrorMessage) -> list[ServerOutput]:
        self._errors += 1
        if self._errors >= self.max_errors:
            outputs: list[ServerOutput] = [error]
            outputs.extend(self._close(CLOSE_POLICY_VIOLATION, "too many errors"))
            return outputs
        return [error]

    def _subscribe(self, message: SubscribeMessage) -> list[ServerOutput]:
        topic = message.topic
        outputs: list[ServerOutput] = []
        if topic not in self._last:
            if len(self._last) >= self.max_topics:
                return self._error(
                    ErrorMessage(
                        ErrorCode.TOO_MANY_TOPICS,
                        f"at most {self.max_topics} topics per connection",
                        topic=topic,
                    )
                )
            outputs.append(StartLive(topic))
        if message.cursor is None:
            self._last[topic] = self.history.head(topic)
        else:
            outputs.extend(self._replay(topic, message.cursor))
        outputs.append(SubscribedMessage(topic, self._last[topic].format()))
        return outputs

    def _replay(self, topic: str, after: Position | str) -> list[ServerMessage]:
        """The events after *after* (or a reset); moves ``_last[topic]`` past them."""
        outputs: list[ServerMessage] = []
        while True:
            result = self.history.read(topic, after, self.replay_chunk)
            if isinstance(result, Reset):
                self._last[topic] = result.head
                outputs.append(ResetMessage(topic, result.head.format()))
                return outputs
            outputs.extend(EventMessage.from_stored(topic, e) for e in result.events)
            self._last[topic] = result.cursor
            if not result.more:
                return outputs
            after = result.cursor

    def _unsubscribe(self, topic: str) -> list[ServerOutput]:
        if self._last.pop(topic, None) is None:
            return []
        return [StopLive(topic)]

    def _publish(self, message: PublishMessage, now: float) -> list[ServerOutput]:
        original = self.dedup.lookup(message.topic, message.msg_id, now)
        if original is not None:
            return [PublishedMessage(message.msg_id, original.format())]
        try:
            stored = self.history.append(message.topic, message.data, message.event)
        except LocalProtocolError as exc:
            return self._error(
                ErrorMessage(ErrorCode.PUBLISH_REJECTED, str(exc), message.topic, message.msg_id)
            )
        self.dedup.remember(message.topic, message.msg_id, stored.position, now)
        return [
            Appended(message.topic, stored, EventMessage.from_stored(message.topic, stored)),
            PublishedMessage(message.msg_id, stored.position.format()),
        ]

    # -- hub input

    def live(self, message: EventMessage) -> list[ServerMessage]:
        """A live event from the hub: what to send for it (often ``[message]`` itself,
        nothing for a duplicate, or a gap-filling replay / reset)."""
        if self._closed:
            return []
        topic = message.topic
        last = self._last.get(topic)
        if last is None:
            return []  # unsubscribed while the event was on its way
        position = message.position
        if position is None:
            raise LocalProtocolError(f"live event id {message.id!r} is not a position")
        if position.epoch == last.epoch:
            if position.offset <= last.offset:
                return []
            if not self.fill_gaps or position.offset == last.offset + 1:
                self._last[topic] = position
                return [message]
        # Not the next event: ask the history what really follows ``last`` (reusing the
        # hub's shared message, whose encoding is cached, for the same event).
        return [
            message if isinstance(m, EventMessage) and m.id == message.id else m
            for m in self._replay(topic, last)
        ]

    def live_many(self, messages: Iterable[EventMessage]) -> list[ServerMessage]:
        """:meth:`live` for a batch, in order."""
        outputs: list[ServerMessage] = []
        for message in messages:
            outputs.extend(self.live(message))
        return outputs

    def __repr__(self) -> str:
        return f"<SessionServer topics={len(self._last)} closed={self._closed}>"
