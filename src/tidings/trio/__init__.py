"""Trio adapters: the hub, the HTTP/1.1 + HTTP/2 server and the clients.

The server side is :class:`Hub` (the pump between a :class:`History` and live
subscribers; :class:`LocalHistory` keeps events in memory), :func:`serve` /
:class:`Server` (listening, limits, drain) and :class:`ServerConfig`; the client side
is :func:`open_event_stream` (SSE), :func:`open_long_poll` and :func:`open_session`
(WebSocket), which all yield :class:`tidings.Event` and :class:`tidings.ResetNotice`.
"""

from tidings.trio._sync import Waiter
from tidings.trio.client.longpoll import LongPoll, open_long_poll
from tidings.trio.client.sse import (
    EventStream,
    EventStreamClosed,
    EventStreamError,
    EventStreamFailed,
    open_event_stream,
)
from tidings.trio.client.websocket import (
    PublishRejected,
    SessionClosed,
    WebSocketSession,
    open_session,
)
from tidings.trio.history import (
    Feed,
    History,
    HistoryUnavailable,
    ImmediateHistory,
    LocalHistory,
)
from tidings.trio.hub import Batch, CloseReason, DirectSink, Hub, LiveEvent, Subscription, Watch
from tidings.trio.metrics import DELIVERY_BUCKETS, Metrics, TidingsCollector, metrics_page
from tidings.trio.server._app import App, default_router
from tidings.trio.server._auth import Action, AuthHook, Refusal, publish_token
from tidings.trio.server._config import ServerConfig
from tidings.trio.server._http import Request, Responder, StreamWriter
from tidings.trio.server._routes import Handler, Route, Router, static
from tidings.trio.server._serve import Server, serve, serve_stream, server_ssl_context
from tidings.trio.server._ws_config import WebSocketConfig

__all__ = [
    "DELIVERY_BUCKETS",
    "Metrics",
    "TidingsCollector",
    "metrics_page",
    "static",
    "Router",
    "Route",
    "Handler",
    "default_router",
    "App",
    "publish_token",
    "StreamWriter",
    "Responder",
    "Request",
    "Refusal",
    "AuthHook",
    "Action",
    "Batch",
    "CloseReason",
    "EventStream",
    "EventStreamClosed",
    "EventStreamError",
    "EventStreamFailed",
    "DirectSink",
    "Feed",
    "History",
    "HistoryUnavailable",
    "Hub",
    "ImmediateHistory",
    "LiveEvent",
    "LocalHistory",
    "LongPoll",
    "PublishRejected",
    "Server",
    "ServerConfig",
    "SessionClosed",
    "Subscription",
    "Waiter",
    "Watch",
    "WebSocketConfig",
    "WebSocketSession",
    "open_event_stream",
    "open_long_poll",
    "open_session",
    "serve",
    "serve_stream",
    "server_ssl_context",
]
