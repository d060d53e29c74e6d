"""The server's knobs, each with a documented default."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.errors import LocalProtocolError
from tidings.longpoll.request import PollLimits
from tidings.trio.server._auth import AuthHook
from tidings.trio.server._ws_config import WebSocketConfig

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits, timeouts and behaviour of the tidings server.

    Times are in seconds unless the name says milliseconds.  Every limit protects
    the server against a client that is slow, broken or hostile; the defaults suit a
    public-facing process with a few thousand streaming clients.
    """

    #: Connections served at once.  Beyond it a connection gets ``503`` with
    #: ``Retry-After`` and is closed; ``/healthz`` and ``/readyz`` are still
    #: answered as usual on it (then it is closed too).
    max_connections: int = 16_384
    #: Connections beyond :attr:`max_connections` that are still answered (``503``,
    #: or the health probes).  When that many are open, a further one makes room by
    #: closing the oldest of them, so that a probe gets through even while slow
    #: clients hold every place; with ``0`` every connection beyond the limit is
    #: closed without an answer.
    max_rejected_connections: int = 64
    #: The ``Retry-After`` value (seconds) sent with ``503`` answers.
    retry_after: int = 5
    #: Largest request head (request line and headers; on HTTP/2 the header list),
    #: in bytes.  Larger gets ``431``.
    max_header_size: int = 16 * 1024
    #: Time allowed to send a complete request head once its first byte arrived
    #: (and for the TLS handshake).  Slower gets ``408`` and the connection closes.
    header_timeout: float = 10.0
    #: Time a keep-alive connection may sit idle between requests (and an HTTP/2
    #: connection without open streams) before it is closed.
    idle_timeout: float = 30.0
    #: Longest time one write may block (a client that stopped reading).
    write_timeout: float = 60.0
    #: Largest request body (the data of a publish), in bytes.  Larger gets ``413``.
    max_body_size: int = 1024 * 1024
    #: Longest time a request body may take to arrive completely, counted from the
    #: end of its head (HTTP/2: from its HEADERS).  Slower gets ``408``; HTTP/1.1
    #: then closes the connection, HTTP/2 resets the stream (``NO_ERROR``).
    body_timeout: float = 60.0
    #: Slowest average rate, in bytes per second, at which a request body may
    #: arrive once the first :attr:`header_timeout` seconds are over: each byte
    #: received buys ``1 / body_min_rate`` seconds more, never beyond
    #: :attr:`body_timeout`.  Slower gets ``408`` as above; ``0`` turns it off.
    body_min_rate: int = 1024
    #: Whether HTTP/2 is offered (prior knowledge on cleartext, ALPN on TLS).
    http2: bool = True
    #: ``SETTINGS_MAX_CONCURRENT_STREAMS`` on HTTP/2 connections.
    max_concurrent_streams: int = 100
    #: HTTP/2 streams a client may reset (``RST_STREAM``) before their answer
    #: started, or have refused (beyond :attr:`max_concurrent_streams`), within
    #: :attr:`flood_interval`.  More ("rapid reset", CVE-2023-44487) gets ``GOAWAY``
    #: with ``ENHANCE_YOUR_CALM`` and the connection closes.  Resetting a stream
    #: that is being answered (leaving an event stream) does not count.
    max_stream_resets: int = 200
    #: ``SETTINGS`` frames an HTTP/2 client may send within :attr:`flood_interval`;
    #: more gets ``GOAWAY`` ``ENHANCE_YOUR_CALM``.
    max_settings_frames: int = 50
    #: ``PING`` frames an HTTP/2 client may send within :attr:`flood_interval`;
    #: more gets ``GOAWAY`` ``ENHANCE_YOUR_CALM``.
    max_ping_frames: int = 50
    #: The interval over which the HTTP/2 frames above are counted, per connection.
    flood_interval: float = 10.0
    #: The ``retry:`` (milliseconds) sent when an SSE stream opens, or ``None``.
    sse_retry: int | None = 3000
    #: Interval between SSE heartbeat comments on an otherwise quiet stream.
    heartbeat_interval: float = 15.0
    #: Live events buffered per subscriber before it is cut off.
    subscriber_max_events: int = 512
    #: Bytes buffered per subscriber before it is cut off.
    subscriber_max_bytes: int = 1024 * 1024
    #: The ``retry:`` (milliseconds) sent to SSE clients when the server drains,
    #: so that they reconnect (elsewhere) soon.
    drain_retry: int = 500
    #: How long a drain waits for streams and requests to finish before it cuts
    #: the remaining connections.
    drain_timeout: float = 10.0
    #: Value of ``Access-Control-Allow-Origin`` on every answer, or ``None`` for no
    #: CORS header (browsers then refuse cross-origin EventSource).  With it, every
    #: answer also exposes ``Retry-After`` and ``ETag`` to that origin.
    allow_origin: str | None = None
    #: Bytes asked from the network per read.
    receive_size: int = 64 * 1024
    #: ``GET /topics/{topic}/poll``: default and maximum hold time, default and
    #: maximum events per answer.  The maximum hold should stay under the idle limit
    #: of any proxy in front of the server.
    poll_limits: PollLimits = field(default_factory=PollLimits)
    #: ``GET /ws`` (WebSocket sessions): limits, heartbeats, Origin check.
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    #: The authorisation hook asked before every subscribe and publish, on every
    #: transport (see :mod:`tidings.trio.server._auth`), or ``None`` to admit everyone.
    auth: AuthHook | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_header_size",
            "max_concurrent_streams",
            "max_stream_resets",
            "max_settings_frames",
            "max_ping_frames",
            "subscriber_max_events",
            "subscriber_max_bytes",
            "receive_size",
        ):
            if getattr(self, name) < 1:
                raise LocalProtocolError(f"{name} must be >= 1")
        for name in (
            "max_rejected_connections",
            "retry_after",
            "max_body_size",
            "body_min_rate",
            "drain_retry",
        ):
            if getattr(self, name) < 0:
                raise LocalProtocolError(f"{name} must be >= 0")
        for name in (
            "header_timeout",
            "idle_timeout",
            "write_timeout",
            "body_timeout",
            "flood_interval",
            "heartbeat_interval",
            "drain_timeout",
        ):
            if not getattr(self, name) > 0:
                raise LocalProtocolError(f"{name} must be > 0")
        if self.sse_retry is not None and self.sse_retry < 0:
            raise LocalProtocolError("sse_retry must be >= 0")
        if self.allow_origin is not None and any(c in self.allow_origin for c in "\r\n\0"):
            raise LocalProtocolError("allow_origin must not contain CR, LF or NUL")
