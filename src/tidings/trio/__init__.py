"""Trio adapters: the hub, the HTTP/1.1 + HTTP/2 server and the clients.

The server side is :class:`Hub` (topics, history, live subscribers), :func:`serve`
/ :class:`Server` (listening, limits, drain) and :class:`ServerConfig`; the client
side is :func:`open_event_stream` (SSE), :func:`open_long_poll` and
:func:`open_session` (WebSocket), which all yield :class:`tidings.Event` and
:class:`tidings.ResetNotice`.
"""

from tidings.trio._config import ServerConfig
from tidings.trio._sync import Waiter
from tidings.trio._ws_config import WebSocketConfig, WebSocketRefusal
from tidings.trio.client import (
    EventStream,
    EventStreamClosed,
    EventStreamError,
    EventStreamFailed,
    open_event_stream,
)
from tidings.trio.hub import Batch, CloseReason, Hub, LiveEvent, Subscription
from tidings.trio.longpoll_client import LongPoll, open_long_poll
from tidings.trio.server import Server, serve, serve_stream, server_ssl_context
from tidings.trio.session_client import (
    PublishRejected,
    SessionClosed,
    WebSocketSession,
    open_session,
)

__all__ = [
    "Batch",
    "CloseReason",
    "EventStream",
    "EventStreamClosed",
    "EventStreamError",
    "EventStreamFailed",
    "Hub",
    "LiveEvent",
    "LongPoll",
    "PublishRejected",
    "Server",
    "ServerConfig",
    "SessionClosed",
    "Subscription",
    "Waiter",
    "WebSocketConfig",
    "WebSocketRefusal",
    "WebSocketSession",
    "open_event_stream",
    "open_long_poll",
    "open_session",
    "serve",
    "serve_stream",
    "server_ssl_context",
]
