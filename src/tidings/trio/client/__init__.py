"""The Trio clients, one module per transport: :mod:`~tidings.trio.client.sse`
(:func:`open_event_stream`), :mod:`~tidings.trio.client.longpoll`
(:func:`open_long_poll`) and :mod:`~tidings.trio.client.websocket`
(:func:`open_session`), on a shared HTTP/1.1 + HTTP/2 client (``_http``).  They
reconnect and resume by themselves, pace retries with the one decision in
:mod:`tidings.retry`, and yield :class:`tidings.Event` and
:class:`tidings.ResetNotice`.  The public names are re-exported here and from
:mod:`tidings.trio`.
"""

from tidings.trio.client.longpoll import DEFAULT_POLL_CONNECT_TIMEOUT, LongPoll, open_long_poll
from tidings.trio.client.sse import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_REDIRECTS,
    EventStream,
    EventStreamClosed,
    EventStreamError,
    EventStreamFailed,
    open_event_stream,
)
from tidings.trio.client.websocket import (
    DEFAULT_SESSION_CONNECT_TIMEOUT,
    PublishRejected,
    SessionClosed,
    WebSocketSession,
    open_session,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_POLL_CONNECT_TIMEOUT",
    "DEFAULT_SESSION_CONNECT_TIMEOUT",
    "EventStream",
    "EventStreamClosed",
    "EventStreamError",
    "EventStreamFailed",
    "LongPoll",
    "PublishRejected",
    "SessionClosed",
    "WebSocketSession",
    "open_event_stream",
    "open_long_poll",
    "open_session",
]
