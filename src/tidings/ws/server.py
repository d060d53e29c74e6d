"""The server side of one ``tidings.v1`` connection, without IO.

:class:`SessionServer` turns client messages into answers and into instructions for
the adapter.  It owns no history and no live feed: following a topic is the follow
machine's job (:class:`~tidings.follow.Follower`), and storing a publish is the
history's.

* ``subscribe`` gives :class:`Follow` with a new follower for the topic: the adapter
  registers it for the topic's live events *before* it carries out the follower's
  first read, and then does what the follower says (send events, send a reset as
  :meth:`reset_message`, read the history).  When the follower reports that it
  caught up (:class:`~tidings.follow.CaughtUp`), :meth:`caught_up` gives the
  ``subscribed`` message that tells the client the topic is live.
* ``unsubscribe`` (and the end of the connection) gives :class:`Unfollow`.
* ``publish`` gives :class:`Publish`: the adapter stores it idempotently (the
  ``msg_id`` is the idempotency key, so a resend after a reconnect is stored once)
  and reports the outcome with :meth:`published` or :meth:`publish_failed`.

With ``authorize=True`` a ``subscribe`` or ``publish`` first gives :class:`Authorize`:
the adapter asks its authorisation hook and answers :meth:`admit` (the message then
takes effect) or :meth:`deny` (an ``error`` message; the connection stays up).  The
adapter handles no further client message until it did, so messages still take
effect in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.cursor import Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.follow import DEFAULT_PAGE_SIZE, Follower, Positioned
from tidings.history import Reset
from tidings.ws.protocol import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_MESSAGE_SIZE,
    ClientMessage,
    CloseConnection,
    ErrorCode,
    ErrorMessage,
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
    "Authorize",
    "Follow",
    "Publish",
    "ServerOutput",
    "SessionServer",
    "Unfollow",
]

#: Default largest number of topics one connection may subscribe to.
DEFAULT_MAX_TOPICS = 100
#: Default number of ``error`` answers after which the connection is closed (1008).
DEFAULT_MAX_ERRORS = 10
#: Default number of events read from the history per read during a replay.
DEFAULT_REPLAY_CHUNK = DEFAULT_PAGE_SIZE


@dataclass(frozen=True, slots=True)
class Follow:
    """Follow ``topic`` with ``follower`` (replacing any earlier follower of it):
    register it for live events, then carry out ``follower.begin()``."""

    topic: str
    follower: Follower[Positioned]


@dataclass(frozen=True, slots=True)
class Unfollow:
    """Stop following ``topic``."""

    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Store ``data`` (of type ``event``) in ``topic`` with ``msg_id`` as idempotency
    key, then call :meth:`SessionServer.published` or
    :meth:`SessionServer.publish_failed`."""

    topic: str
    msg_id: str
    data: str
    event: str | None


@dataclass(frozen=True, slots=True)
class Authorize:
    """Ask the authorisation hook about ``message`` (a subscribe or a publish) for
    ``topic``, then call :meth:`SessionServer.admit` or :meth:`SessionServer.deny`."""

    message: SubscribeMessage | PublishMessage

    @property
    def topic(self) -> str:
        """The topic the message is about."""
        return self.message.topic

    @property
    def action(self) -> str:
        """``"subscribe"`` or ``"publish"``."""
        return self.message.type


#: What :class:`SessionServer` asks of its adapter: a message to send or an instruction.
ServerOutput = ServerMessage | Follow | Unfollow | Publish | Authorize | CloseConnection


class SessionServer:
    """One connection's ``tidings.v1`` server machine.

    Limits: *max_topics* subscriptions per connection, *max_message_size* bytes per
    message (larger: close 1009), *max_errors* ``error`` answers before closing with
    1008; *replay_chunk* events per history read of each follower.  *authorize*
    makes every ``subscribe`` and ``publish`` wait for the adapter's verdict
    (:class:`Authorize`).
    """

    def __init__(
        self,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_errors: int = DEFAULT_MAX_ERRORS,
        replay_chunk: int = DEFAULT_REPLAY_CHUNK,
        max_buffered: int = 1024,
        authorize: bool = False,
    ) -> None:
        for name, value in (
            ("max_topics", max_topics),
            ("max_message_size", max_message_size),
            ("max_errors", max_errors),
            ("replay_chunk", replay_chunk),
            ("max_buffered", max_buffered),
        ):
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1")
        self.max_topics = max_topics
        self.max_message_size = max_message_size
        self.max_errors = max_errors
        self.replay_chunk = replay_chunk
        self.max_buffered = max_buffered
        self.authorize = authorize
        self._authorizing: ClientMessage | None = None
        self._followers: dict[str, Follower[Positioned]] = {}
        # Publishes handed to the adapter and not reported back yet: msg_id -> topic.
        self._publishing: dict[str, str] = {}
        self._errors = 0
        self._closed = False

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection follows."""
        return frozenset(self._followers)

    def follower(self, topic: str) -> Follower[Positioned] | None:
        """The follower of *topic*, if the connection follows it."""
        return self._followers.get(topic)

    @property
    def closed(self) -> bool:
        """Whether the machine asked to close or was told the connection ended."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the session is closed")

    # -- client input

    def receive_text(self, text: str | bytes) -> list[ServerOutput]:
        """Handle one text message; returns what to do, in order."""
        self._check_open()
        try:
            message = parse_client_message(text, max_size=self.max_message_size)
        except MessageTooBig as exc:
            return self._close(exc.close_code, "message too big")
        except RemoteProtocolError as exc:
            return self._error(ErrorMessage(ErrorCode.MALFORMED, str(exc)))
        if self.authorize and isinstance(message, SubscribeMessage | PublishMessage):
            if self._authorizing is not None:
                raise LocalProtocolError("a message arrived before the last one was authorised")
            self._authorizing = message
            return [Authorize(message)]
        return self._take(message)

    def admit(self, authorize: Authorize) -> list[ServerOutput]:
        """The hook admitted *authorize*'s message: it takes effect now."""
        self._check_authorizing(authorize)
        self._authorizing = None
        return self._take(authorize.message)

    def deny(self, authorize: Authorize, status: int, reason: str) -> list[ServerOutput]:
        """The hook refused *authorize*'s message with HTTP-like *status* (401: wants
        credentials, anything else: forbidden) and a one-line *reason*."""
        self._check_authorizing(authorize)
        self._authorizing = None
        message = authorize.message
        code = ErrorCode.UNAUTHORIZED if status == 401 else ErrorCode.FORBIDDEN
        msg_id = message.msg_id if isinstance(message, PublishMessage) else None
        return self._error(ErrorMessage(code, reason, message.topic, msg_id))

    def _check_authorizing(self, authorize: Authorize) -> None:
        self._check_open()
        if self._authorizing is not authorize.message:
            raise LocalProtocolError("no such message is waiting for authorisation")

    def _take(self, message: ClientMessage) -> list[ServerOutput]:
        if isinstance(message, SubscribeMessage):
            return self._subscribe(message)
        if isinstance(message, PublishMessage):
            return self._publish(message)
        return self._unsubscribe(message.topic)

    def receive_binary(self) -> list[ServerOutput]:
        """A binary message arrived: ``tidings.v1`` is text only (close 1003)."""
        self._check_open()
        return self._close(CLOSE_UNSUPPORTED_DATA, "tidings.v1 messages are text")

    def message_too_big(self) -> list[ServerOutput]:
        """The adapter stopped assembling a message over :attr:`max_message_size`."""
        self._check_open()
        return self._close(MessageTooBig.close_code, "message too big")

    def refuse(self, message: ErrorMessage) -> list[ServerOutput]:
        """The adapter refused a client message (for example, its authorisation hook
        did): answer *message*, counting it toward :attr:`max_errors`."""
        self._check_open()
        return self._error(message)

    def connection_closed(self) -> list[ServerOutput]:
        """The connection ended (either side): stop following every topic."""
        outputs: list[ServerOutput] = [Unfollow(topic) for topic in self._followers]
        self._followers.clear()
        self._publishing.clear()
        self._authorizing = None
        self._closed = True
        return outputs

    # -- adapter input

    def caught_up(self, topic: str, cursor: Position) -> list[ServerOutput]:
        """The follower of *topic* caught up at *cursor*: tell the client it is live."""
        if self._closed or topic not in self._followers:
            return []
        return [SubscribedMessage(topic, cursor.format())]

    def reset_message(self, topic: str, reset: Reset) -> ResetMessage:
        """The ``reset`` message for a reset the follower of *topic* reported."""
        return ResetMessage(topic, reset.cursor.format(), reset.reason.value)

    def published(self, msg_id: str, position: Position) -> list[ServerOutput]:
        """The publish *msg_id* is stored at *position* (or was already, for a resend)."""
        if self._closed or self._publishing.pop(msg_id, None) is None:
            return []
        return [PublishedMessage(msg_id, position.format())]

    def publish_failed(
        self, msg_id: str, message: str, *, retry: bool = False
    ) -> list[ServerOutput]:
        """The publish *msg_id* was not stored: refused (``retry`` false: too large,
        not allowed) or not possible now (``retry`` true: the store is unreachable)."""
        if self._closed:
            return []
        topic = self._publishing.pop(msg_id, None)
        if topic is None:
            return []
        code = ErrorCode.UNAVAILABLE if retry else ErrorCode.PUBLISH_REJECTED
        return self._error(ErrorMessage(code, message, topic, msg_id))

    # -- internals

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
        if topic not in self._followers and len(self._followers) >= self.max_topics:
            return self._error(
                ErrorMessage(
                    ErrorCode.TOO_MANY_TOPICS,
                    f"at most {self.max_topics} topics per connection",
                    topic=topic,
                )
            )
        follower: Follower[Positioned] = Follower(
            message.cursor, page_size=self.replay_chunk, max_buffered=self.max_buffered
        )
        self._followers[topic] = follower
        return [Follow(topic, follower)]

    def _unsubscribe(self, topic: str) -> list[ServerOutput]:
        if self._followers.pop(topic, None) is None:
            return []
        return [Unfollow(topic)]

    def _publish(self, message: PublishMessage) -> list[ServerOutput]:
        if message.msg_id in self._publishing:
            return []  # a resend while the first is being stored: one answer will do
        self._publishing[message.msg_id] = message.topic
        return [Publish(message.topic, message.msg_id, message.data, message.event)]

    def __repr__(self) -> str:
        return f"<SessionServer topics={len(self._followers)} closed={self._closed}>"
