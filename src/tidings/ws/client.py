"""The client side of a ``tidings.v1`` session across reconnects, without IO.

:class:`SessionClient` owns what must survive a lost connection: the topics and their
resume cursors (kept in its :class:`~tidings.session.ReconnectingSession`, which also
decides when to reconnect) and the *outbox* of publishes the server has not
acknowledged yet.  After every reconnect :meth:`SessionClient.connection_made` yields a
``subscribe`` per topic from its last position, then every unacknowledged publish again,
in the original order.  The server recognises repeats by ``msg_id`` and answers with
the original position, so each publish is stored once.

As a last line of defence the client also drops an event whose position is not after
the last one it delivered for that topic in the same epoch.

A new event and an acknowledged publish count as progress for the session's retry
decision (:class:`~tidings.retry.Retrier`): a connection that achieved either is not a
failure when it drops, however young it was.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from tidings.backoff import Random
from tidings.cursor import MAX_CURSOR_LENGTH, Position
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError
from tidings.names import check_event_type, check_topic
from tidings.session import ReconnectingSession
from tidings.ws.protocol import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_MESSAGE_SIZE,
    ClientMessage,
    CloseConnection,
    ErrorMessage,
    EventMessage,
    MessageTooBig,
    PublishedMessage,
    PublishMessage,
    ResetMessage,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    parse_server_message,
)

__all__ = [
    "DEFAULT_MAX_OUTBOX",
    "ClientOutput",
    "PublishAcknowledged",
    "PublishFailed",
    "SessionClient",
]

#: Default largest number of unacknowledged publishes kept for resending.
DEFAULT_MAX_OUTBOX = 1000
#: Characters of a generated ``msg_id`` (base 62: about 131 bits).
DEFAULT_MSG_ID_LENGTH = 22
_MSG_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class PublishAcknowledged:
    """The publish ``msg_id`` to ``topic`` is stored at position ``id``."""

    msg_id: str
    topic: str
    id: str


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """The server refused the publish ``msg_id`` to ``topic``; it will not be resent."""

    msg_id: str
    topic: str
    code: str
    message: str


#: What :meth:`SessionClient.receive_text` reports: messages for the application,
#: publish outcomes, or an instruction to close the connection.
ClientOutput = (
    EventMessage
    | ResetMessage
    | SubscribedMessage
    | ErrorMessage
    | PublishAcknowledged
    | PublishFailed
    | CloseConnection
)


def _parse_or_none(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    try:
        return Position.parse(cursor)
    except InvalidCursor:
        return None  # "earliest", or a foreign server's opaque id: no duplicate filter


class SessionClient:
    """A ``tidings.v1`` client session that outlives its connections.

    *rng* generates ``msg_id`` values and, through the default *session*, backoff
    jitter: pass ``random.SystemRandom()`` in production (ids from different clients
    must not collide) and a seeded ``random.Random`` in tests.  *max_outbox* bounds
    the unacknowledged publishes; *max_message_size* bounds incoming messages (larger:
    close 1009).
    """

    def __init__(
        self,
        rng: Random,
        *,
        session: ReconnectingSession | None = None,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        msg_id_length: int = DEFAULT_MSG_ID_LENGTH,
    ) -> None:
        for name, value in (
            ("max_outbox", max_outbox),
            ("max_message_size", max_message_size),
        ):
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1")
        if type(msg_id_length) is not int or not 8 <= msg_id_length <= 128:
            raise LocalProtocolError("msg_id_length must be an int in 8..128")
        self._rng = rng
        #: Reconnect decisions and the resume cursor of every topic.
        self.session = ReconnectingSession(rng) if session is None else session
        self.max_outbox = max_outbox
        self.max_message_size = max_message_size
        self.msg_id_length = msg_id_length
        self._outbox: OrderedDict[str, PublishMessage] = OrderedDict()
        self._last: dict[str, Position | None] = {
            topic: _parse_or_none(cursor) for topic, cursor in self.session.positions.items()
        }
        self._connected = False

    # -- observation

    @property
    def connected(self) -> bool:
        """Whether a connection is up (between connection_made and connection_lost)."""
        return self._connected

    @property
    def topics(self) -> frozenset[str]:
        """The subscribed topics."""
        return frozenset(self._last)

    @property
    def outbox(self) -> tuple[PublishMessage, ...]:
        """The unacknowledged publishes, oldest first."""
        return tuple(self._outbox.values())

    @property
    def outbox_full(self) -> bool:
        """Whether :meth:`publish` would refuse (wait for acknowledgements first)."""
        return len(self._outbox) >= self.max_outbox

    # -- application input

    def subscribe(self, topic: str, cursor: str | None = None) -> list[ClientMessage]:
        """Follow *topic* from after *cursor* (``None``: live from now; ``"earliest"``).

        Returns the message to send now (nothing while disconnected: it is sent by
        :meth:`connection_made`).  Subscribing again restarts the topic from *cursor*.
        """
        check_topic(topic)
        if cursor is not None and (
            not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_LENGTH
        ):
            raise LocalProtocolError("cursor must be None or a non-empty str of <= 128 chars")
        self.session.track(topic, cursor)
        self._last[topic] = _parse_or_none(cursor)
        return [SubscribeMessage(topic, cursor)] if self._connected else []

    def unsubscribe(self, topic: str) -> list[ClientMessage]:
        """Stop following *topic*; returns the message to send now, if connected."""
        if topic not in self._last:
            return []
        del self._last[topic]
        self.session.forget(topic)
        return [UnsubscribeMessage(topic)] if self._connected else []

    def publish(
        self, topic: str, data: str, event: str | None = None
    ) -> tuple[str, list[ClientMessage]]:
        """Queue a publish; returns its ``msg_id`` and the message to send now.

        The publish stays in the outbox, and is resent after every reconnect, until
        the server acknowledges (:class:`PublishAcknowledged`) or refuses it
        (:class:`PublishFailed`).  Raises :class:`~tidings.errors.LocalProtocolError`
        when the outbox is full.
        """
        check_topic(topic)
        if not isinstance(data, str):
            raise LocalProtocolError("data must be a str")
        if event is not None:
            check_event_type(event)
        if self.outbox_full:
            raise LocalProtocolError(f"outbox full ({self.max_outbox} unacknowledged publishes)")
        msg_id = self._new_msg_id()
        message = PublishMessage(topic, msg_id, data, event)
        self._outbox[msg_id] = message
        return msg_id, [message] if self._connected else []

    def _new_msg_id(self) -> str:
        while True:
            msg_id = "".join(
                _MSG_ID_ALPHABET[int(self._rng.random() * 62) % 62]
                for _ in range(self.msg_id_length)
            )
            if msg_id not in self._outbox:
                return msg_id

    # -- connection input

    def connection_made(self) -> list[ClientMessage]:
        """A connection is up: subscribe every topic from its last position, then
        resend every unacknowledged publish in order."""
        if self._connected:
            raise LocalProtocolError("connection_made while already connected")
        self._connected = True
        messages: list[ClientMessage] = [
            SubscribeMessage(topic, cursor) for topic, cursor in self.session.positions.items()
        ]
        messages.extend(self._outbox.values())
        return messages

    def connection_lost(self) -> None:
        """The connection ended; the outbox and cursors are kept for the next one."""
        self._connected = False

    def receive_text(self, text: str | bytes) -> list[ClientOutput]:
        """Handle one text message from the server; returns what happened.

        Duplicate events and events of topics no longer followed are dropped.  A
        malformed message gives a :class:`~tidings.ws.protocol.CloseConnection` (1002,
        or 1009 when too big) instead of raising.
        """
        if not self._connected:
            raise LocalProtocolError("receive_text while not connected")
        try:
            message = parse_server_message(text, max_size=self.max_message_size)
        except MessageTooBig as exc:
            return [CloseConnection(exc.close_code, "message too big")]
        except RemoteProtocolError as exc:
            return [CloseConnection(CLOSE_PROTOCOL_ERROR, str(exc)[:100])]
        if isinstance(message, EventMessage):
            return self._event(message)
        if isinstance(message, ResetMessage | SubscribedMessage):
            if message.topic not in self._last:
                return []
            # Every connection repeats these: they are not progress.
            cursor = message.cursor
            self._advance(message.topic, cursor, _parse_or_none(cursor), progress=False)
            return [message]
        if isinstance(message, PublishedMessage):
            pending = self._outbox.pop(message.msg_id, None)
            if pending is None:
                return []  # not ours (any more)
            self.session.progress()
            return [PublishAcknowledged(message.msg_id, pending.topic, message.id)]
        if message.msg_id is not None:
            pending = self._outbox.pop(message.msg_id, None)
            if pending is not None:
                return [PublishFailed(message.msg_id, pending.topic, message.code, message.message)]
        return [message]

    def receive_binary(self) -> list[ClientOutput]:
        """A binary message arrived: ``tidings.v1`` is text only (close 1003)."""
        return [CloseConnection(CLOSE_UNSUPPORTED_DATA, "tidings.v1 messages are text")]

    def receive_many(self, texts: Iterable[str | bytes]) -> list[ClientOutput]:
        """:meth:`receive_text` for a batch, in order (stops after a close)."""
        outputs: list[ClientOutput] = []
        for text in texts:
            outputs.extend(self.receive_text(text))
            if outputs and isinstance(outputs[-1], CloseConnection):
                break
        return outputs

    def _event(self, message: EventMessage) -> list[ClientOutput]:
        topic = message.topic
        if topic not in self._last:
            return []
        last = self._last[topic]
        position = message.position
        if (
            position is not None
            and last is not None
            and position.epoch == last.epoch
            and position.offset <= last.offset
        ):
            return []
        self._advance(topic, message.id, position)
        return [message]

    def _advance(
        self, topic: str, cursor: str, position: Position | None, *, progress: bool = True
    ) -> None:
        self.session.message(cursor, topic=topic, progress=progress)
        self._last[topic] = position

    def __repr__(self) -> str:
        return (
            f"<SessionClient topics={len(self._last)} outbox={len(self._outbox)} "
            f"connected={self._connected}>"
        )
