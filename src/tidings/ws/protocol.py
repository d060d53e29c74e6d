"""The ``tidings.v1`` WebSocket subprotocol: its messages and their strict wire form.

Every message is one JSON object in one text message, discriminated by ``"type"``::

    client -> server
      {"type": "subscribe",   "topic": T, "cursor": C}        cursor optional / null:
                                                              live from now; "earliest":
                                                              everything retained
      {"type": "unsubscribe", "topic": T}
      {"type": "publish",     "topic": T, "msg_id": M, "event": E, "data": D}
                                                              event optional / null
    server -> client
      {"type": "event",      "topic": T, "id": P, "event": E, "data": D}
      {"type": "reset",      "topic": T, "cursor": P, "reason": R}   reason optional
      {"type": "subscribed", "topic": T, "cursor": P}
      {"type": "published",  "msg_id": M, "id": P}
      {"type": "error",      "code": K, "message": S, "topic": T, "msg_id": M}
                                                              topic, msg_id optional

``subscribed`` closes every accepted ``subscribe``, after any ``reset`` and replayed
``event`` messages: from then on the topic is live, and ``cursor`` is the position the
stream continues after.  A client that subscribed "live from now" resumes from that
cursor after a reconnect, so nothing published while it was away is lost.

Parsing is strict because the input is hostile until proven otherwise: the text must
be valid JSON without duplicate keys or ``NaN``; the object must have exactly the
fields of its type, each of the right JSON type and within its length limit, strings
must be valid Unicode (no lone surrogates), topics and event types follow the rules
every transport shares (:mod:`tidings.names`).  Any violation raises
:class:`~tidings.errors.RemoteProtocolError`; a message longer than the size limit
raises its subclass :class:`MessageTooBig`, which a connection answers with close
code 1009 instead of an ``error`` message.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tidings.cursor import MAX_CURSOR_LENGTH, Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.history import StoredEvent
from tidings.names import MAX_EVENT_TYPE_LENGTH, MAX_TOPIC_LENGTH, TOPIC_RULE, is_valid_topic

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_MSG_ID_LENGTH",
    "MAX_TOPIC_LENGTH",
    "SUBPROTOCOL",
    "ClientMessage",
    "CloseConnection",
    "ErrorCode",
    "ErrorMessage",
    "EventMessage",
    "MessageTooBig",
    "PublishMessage",
    "PublishedMessage",
    "ResetMessage",
    "ServerMessage",
    "SubscribeMessage",
    "SubscribedMessage",
    "UnsubscribeMessage",
    "parse_client_message",
    "parse_server_message",
]

#: The ``Sec-WebSocket-Protocol`` value both sides must agree on.
SUBPROTOCOL = "tidings.v1"
#: Default largest message accepted, in bytes of UTF-8.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: Longest ``msg_id``, in characters (printable ASCII only).
MAX_MSG_ID_LENGTH = 128
#: Longest error code / error text, in characters.
MAX_ERROR_CODE_LENGTH = 64
MAX_ERROR_TEXT_LENGTH = 1024

#: Close code for a message over the size limit (RFC 6455).
CLOSE_MESSAGE_TOO_BIG = 1009
#: Close code for a binary message: ``tidings.v1`` is text only (RFC 6455).
CLOSE_UNSUPPORTED_DATA = 1003
#: Close code for a peer that sent something unparseable (RFC 6455).
CLOSE_PROTOCOL_ERROR = 1002
#: Close code for a peer that keeps sending garbage (RFC 6455).
CLOSE_POLICY_VIOLATION = 1008

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MSG_ID_RE = re.compile(r"[!-~]+")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class MessageTooBig(RemoteProtocolError):
    """The peer sent a message larger than allowed; close the connection with 1009."""

    #: The WebSocket close code to use.
    close_code = CLOSE_MESSAGE_TOO_BIG

    def __init__(self, msg: str) -> None:
        super().__init__(msg, error_status_hint=413)


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` message."""

    #: Not JSON, unknown ``type``, missing / extra / ill-typed fields.
    MALFORMED = "malformed"
    #: Subscribing to one more topic would exceed the connection's limit.
    TOO_MANY_TOPICS = "too-many-topics"
    #: A publish was refused (too large for the history, ...); carries ``msg_id``.
    PUBLISH_REJECTED = "publish-rejected"
    #: A publish could not be stored now (the history's store is unreachable); the
    #: client may resend it later (same ``msg_id``).  Carries ``msg_id``.
    UNAVAILABLE = "unavailable"
    #: The server's authorisation hook wants credentials for this subscribe or
    #: publish (an HTTP ``401``).  Carries ``topic`` (and ``msg_id`` for a publish).
    UNAUTHORIZED = "unauthorized"
    #: The server's authorisation hook refused this subscribe or publish.
    FORBIDDEN = "forbidden"


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class SubscribeMessage:
    """Client: deliver *topic* from after *cursor* (``None``: live from now)."""

    type: ClassVar[str] = "subscribe"
    topic: str
    cursor: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``cursor`` left out when ``None``)."""
        obj: dict[str, Any] = {"type": "subscribe", "topic": self.topic}
        if self.cursor is not None:
            obj["cursor"] = self.cursor
        return obj

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class UnsubscribeMessage:
    """Client: stop delivering *topic*."""

    type: ClassVar[str] = "unsubscribe"
    topic: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return {"type": "unsubscribe", "topic": self.topic}

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class PublishMessage:
    """Client: store *data* in *topic*; *msg_id* makes a resend idempotent."""

    type: ClassVar[str] = "publish"
    topic: str
    msg_id: str
    data: str
    event: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``event`` left out when ``None``)."""
        obj: dict[str, Any] = {"type": "publish", "topic": self.topic, "msg_id": self.msg_id}
        if self.event is not None:
            obj["event"] = self.event
        obj["data"] = self.data
        return obj

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class EventMessage:
    """Server: an event of *topic* at position *id*.

    Broadcasting encodes the same event for every subscriber, so :meth:`encode`
    remembers its result, and :meth:`from_stored` keeps the parsed position for the
    server's duplicate filter: build one per published event and share it.
    """

    type: ClassVar[str] = "event"
    topic: str
    id: str
    data: str
    event: str | None = None
    _position: Position | None = field(default=None, repr=False, compare=False)
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_stored(cls, topic: str, stored: StoredEvent) -> EventMessage:
        """The message for *stored*, an event of *topic* from a history."""
        return cls(topic, stored.position.format(), stored.data, stored.event, stored.position)

    @property
    def position(self) -> Position | None:
        """``id`` parsed, or ``None`` when it is not a tidings cursor."""
        if self._position is None:
            try:
                object.__setattr__(self, "_position", Position.parse(self.id))
            except RemoteProtocolError:
                return None
        return self._position

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``event`` is ``null`` when ``None``)."""
        return {
            "type": "event",
            "topic": self.topic,
            "id": self.id,
            "event": self.event,
            "data": self.data,
        }

    def encode(self) -> str:
        """The text message (computed once)."""
        text = self._text
        if text is None:
            text = _ENCODER.encode(self.to_json())
            object.__setattr__(self, "_text", text)
        return text


@dataclass(frozen=True, slots=True)
class ResetMessage:
    """Server: *topic* cannot continue from where it stood; events were lost before
    *cursor*.  Every event still retained after *cursor* follows.  *reason* is the
    server's short explanation (``evicted``, ``unknown-epoch``, ...), if any."""

    type: ClassVar[str] = "reset"
    topic: str
    cursor: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``reason`` left out when ``None``)."""
        obj: dict[str, Any] = {"type": "reset", "topic": self.topic, "cursor": self.cursor}
        if self.reason is not None:
            obj["reason"] = self.reason
        return obj

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class SubscribedMessage:
    """Server: *topic* is live; everything up to *cursor* has been sent."""

    type: ClassVar[str] = "subscribed"
    topic: str
    cursor: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return {"type": "subscribed", "topic": self.topic, "cursor": self.cursor}

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    """Server: the publish *msg_id* is stored at position *id* (also for a repeat)."""

    type: ClassVar[str] = "published"
    msg_id: str
    id: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return {"type": "published", "msg_id": self.msg_id, "id": self.id}

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Server: a request failed; *topic* / *msg_id* say which one when known."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    topic: str | None = None
    msg_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``topic`` and ``msg_id`` left out when ``None``)."""
        obj: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.topic is not None:
            obj["topic"] = self.topic
        if self.msg_id is not None:
            obj["msg_id"] = self.msg_id
        return obj

    def encode(self) -> str:
        """The text message."""
        return _ENCODER.encode(self.to_json())


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """An instruction to the adapter, never sent as JSON: close the WebSocket with
    ``code`` and ``reason``; this connection is over."""

    code: int
    reason: str


#: A message a client sends.
ClientMessage = SubscribeMessage | UnsubscribeMessage | PublishMessage
#: A message a server sends.
ServerMessage = EventMessage | ResetMessage | SubscribedMessage | PublishedMessage | ErrorMessage


# ------------------------------------------------------------------------------ parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def _load(text: str | bytes, max_size: int) -> dict[str, Any]:
    if isinstance(text, bytes | bytearray | memoryview):
        if len(text) > max_size:
            raise MessageTooBig(f"message of {len(text)} bytes exceeds {max_size}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("message is not UTF-8") from None
    elif isinstance(text, str):
        # Characters never outnumber UTF-8 bytes; count bytes only when it matters.
        if len(text) > max_size or (
            len(text) * 4 > max_size
            and not text.isascii()
            and len(text.encode("utf-8", "surrogatepass")) > max_size
        ):
            raise MessageTooBig(f"message exceeds {max_size} bytes")
    else:
        raise LocalProtocolError(f"message must be str or bytes, not {type(text).__name__}")
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message is not a JSON object")
    return obj


def _string(
    obj: Mapping[str, Any],
    key: str,
    *,
    max_length: int | None,
    optional: bool = False,
    allow_empty: bool = False,
    no_controls: bool = False,
) -> Any:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise RemoteProtocolError(f"{key!r} is required")
    if type(value) is not str:
        raise RemoteProtocolError(f"{key!r} must be a string")
    if max_length is not None and len(value) > max_length:
        raise RemoteProtocolError(f"{key!r} longer than {max_length} characters")
    if not value and not allow_empty:
        raise RemoteProtocolError(f"{key!r} must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError(f"{key!r} is not valid Unicode") from None
    if no_controls and _CONTROL_RE.search(value) is not None:
        raise RemoteProtocolError(f"{key!r} contains control characters")
    return value


def _fields(obj: Mapping[str, Any], required: frozenset[str], allowed: frozenset[str]) -> None:
    keys = obj.keys()
    missing = required - keys
    if missing:
        raise RemoteProtocolError(f"missing field(s) {sorted(missing)}")
    extra = keys - allowed
    if extra:
        raise RemoteProtocolError(f"unknown field(s) {sorted(extra)}")


def _topic(obj: Mapping[str, Any]) -> str:
    topic: str = _string(obj, "topic", max_length=MAX_TOPIC_LENGTH)
    if not is_valid_topic(topic):
        raise RemoteProtocolError(f"'topic': {TOPIC_RULE}")
    return topic


def _event_type(obj: Mapping[str, Any]) -> str | None:
    event: str | None = _string(
        obj, "event", max_length=MAX_EVENT_TYPE_LENGTH, optional=True, no_controls=True
    )
    return event


def _msg_id(obj: Mapping[str, Any]) -> str:
    msg_id: str = _string(obj, "msg_id", max_length=MAX_MSG_ID_LENGTH)
    if _MSG_ID_RE.fullmatch(msg_id) is None:
        raise RemoteProtocolError("'msg_id' must be printable ASCII without spaces")
    return msg_id


def _cursor(obj: Mapping[str, Any], *, optional: bool) -> Any:
    return _string(obj, "cursor", max_length=MAX_CURSOR_LENGTH, optional=optional)


_T = frozenset({"type", "topic"})


def _parse_subscribe(obj: Mapping[str, Any]) -> SubscribeMessage:
    _fields(obj, _T, _T | {"cursor"})
    return SubscribeMessage(_topic(obj), _cursor(obj, optional=True))


def _parse_unsubscribe(obj: Mapping[str, Any]) -> UnsubscribeMessage:
    _fields(obj, _T, _T)
    return UnsubscribeMessage(_topic(obj))


_PUBLISH_REQUIRED = _T | {"msg_id", "data"}


def _parse_publish(obj: Mapping[str, Any]) -> PublishMessage:
    _fields(obj, _PUBLISH_REQUIRED, _PUBLISH_REQUIRED | {"event"})
    data: str = _string(obj, "data", max_length=None, allow_empty=True)
    return PublishMessage(_topic(obj), _msg_id(obj), data, _event_type(obj))


_CLIENT_PARSERS: Mapping[str, Callable[[Mapping[str, Any]], ClientMessage]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "publish": _parse_publish,
}


def _id(obj: Mapping[str, Any]) -> str:
    ident: str = _string(obj, "id", max_length=MAX_CURSOR_LENGTH)
    return ident


_EVENT_FIELDS = _T | {"id", "event", "data"}


def _parse_event(obj: Mapping[str, Any]) -> EventMessage:
    _fields(obj, _T | {"id", "data"}, _EVENT_FIELDS)
    data: str = _string(obj, "data", max_length=None, allow_empty=True)
    return EventMessage(_topic(obj), _id(obj), data, _event_type(obj))


_CURSOR_FIELDS = _T | {"cursor"}


def _parse_reset(obj: Mapping[str, Any]) -> ResetMessage:
    _fields(obj, _CURSOR_FIELDS, _CURSOR_FIELDS | {"reason"})
    reason: str | None = _string(
        obj, "reason", max_length=MAX_ERROR_CODE_LENGTH, optional=True, no_controls=True
    )
    return ResetMessage(_topic(obj), _cursor(obj, optional=False), reason)


def _parse_subscribed(obj: Mapping[str, Any]) -> SubscribedMessage:
    _fields(obj, _CURSOR_FIELDS, _CURSOR_FIELDS)
    return SubscribedMessage(_topic(obj), _cursor(obj, optional=False))


_PUBLISHED_FIELDS = frozenset({"type", "msg_id", "id"})


def _parse_published(obj: Mapping[str, Any]) -> PublishedMessage:
    _fields(obj, _PUBLISHED_FIELDS, _PUBLISHED_FIELDS)
    return PublishedMessage(_msg_id(obj), _id(obj))


_ERROR_REQUIRED = frozenset({"type", "code", "message"})


def _parse_error(obj: Mapping[str, Any]) -> ErrorMessage:
    _fields(obj, _ERROR_REQUIRED, _ERROR_REQUIRED | {"topic", "msg_id"})
    code: str = _string(obj, "code", max_length=MAX_ERROR_CODE_LENGTH, no_controls=True)
    text: str = _string(obj, "message", max_length=MAX_ERROR_TEXT_LENGTH, allow_empty=True)
    topic = _topic(obj) if obj.get("topic") is not None else None
    msg_id = _msg_id(obj) if obj.get("msg_id") is not None else None
    return ErrorMessage(code, text, topic, msg_id)


_SERVER_PARSERS: Mapping[str, Callable[[Mapping[str, Any]], ServerMessage]] = {
    "event": _parse_event,
    "reset": _parse_reset,
    "subscribed": _parse_subscribed,
    "published": _parse_published,
    "error": _parse_error,
}


def _check_limits(max_size: int) -> None:
    if type(max_size) is not int or max_size < 1:
        raise LocalProtocolError("max_size must be an int >= 1")


def _dispatch(
    text: str | bytes,
    parsers: Mapping[str, Callable[[Mapping[str, Any]], Any]],
    max_size: int,
) -> Any:
    _check_limits(max_size)
    obj = _load(text, max_size)
    kind = obj.get("type")
    if type(kind) is not str:
        raise RemoteProtocolError("'type' must be a string")
    parser = parsers.get(kind)
    if parser is None:
        raise RemoteProtocolError(f"unknown message type {kind[:64]!r}")
    return parser(obj)


def parse_client_message(
    text: str | bytes,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> ClientMessage:
    """Parse one client -> server text message strictly.

    Raises :class:`MessageTooBig` above *max_size* bytes and
    :class:`~tidings.errors.RemoteProtocolError` for anything malformed.
    """
    message: ClientMessage = _dispatch(text, _CLIENT_PARSERS, max_size)
    return message


def parse_server_message(
    text: str | bytes,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> ServerMessage:
    """Parse one server -> client text message strictly (same errors as
    :func:`parse_client_message`)."""
    message: ServerMessage = _dispatch(text, _SERVER_PARSERS, max_size)
    return message
