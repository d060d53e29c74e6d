"""WebSocket sessions: the ``tidings.v1`` subprotocol as sans-IO machines.

* :mod:`tidings.ws.protocol` -- the messages, their strict parsing and encoding;
* :mod:`tidings.ws.client` -- :class:`SessionClient`: cursors and the publish outbox
  across reconnects;
* :mod:`tidings.ws.server` -- :class:`SessionServer`: one connection's subscriptions,
  replay and publishes;
* :mod:`tidings.dedup` -- :class:`PublishDeduplicator`: the server-wide memory of
  recent ``msg_id`` values.
"""

from __future__ import annotations

from tidings.dedup import DEFAULT_DEDUP_MAX_AGE, DEFAULT_DEDUP_MAX_ENTRIES, PublishDeduplicator
from tidings.ws.client import (
    DEFAULT_MAX_OUTBOX,
    ClientOutput,
    PublishAcknowledged,
    PublishFailed,
    SessionClient,
)
from tidings.ws.protocol import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_MSG_ID_LENGTH,
    MAX_TOPIC_LENGTH,
    SUBPROTOCOL,
    ClientMessage,
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
    UnsubscribeMessage,
    parse_client_message,
    parse_server_message,
)
from tidings.ws.server import (
    DEFAULT_MAX_ERRORS,
    DEFAULT_MAX_TOPICS,
    DEFAULT_REPLAY_CHUNK,
    Authorize,
    Follow,
    Publish,
    ServerOutput,
    SessionServer,
    Unfollow,
)

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_DEDUP_MAX_AGE",
    "DEFAULT_DEDUP_MAX_ENTRIES",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OUTBOX",
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_REPLAY_CHUNK",
    "MAX_MSG_ID_LENGTH",
    "MAX_TOPIC_LENGTH",
    "SUBPROTOCOL",
    "ClientMessage",
    "ClientOutput",
    "CloseConnection",
    "ErrorCode",
    "ErrorMessage",
    "EventMessage",
    "MessageTooBig",
    "PublishAcknowledged",
    "PublishDeduplicator",
    "PublishFailed",
    "PublishMessage",
    "PublishedMessage",
    "ResetMessage",
    "ServerMessage",
    "Authorize",
    "Follow",
    "Publish",
    "ServerOutput",
    "Unfollow",
    "SessionClient",
    "SessionServer",
    "SubscribeMessage",
    "SubscribedMessage",
    "UnsubscribeMessage",
    "parse_client_message",
    "parse_server_message",
]
