"""The knobs of ``GET /ws``: limits, heartbeats and the hooks that guard the upgrade."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from tidings.errors import LocalProtocolError
from tidings.session import DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT
from tidings.trio.server._http import Request
from tidings.ws.protocol import DEFAULT_MAX_MESSAGE_SIZE
from tidings.ws.server import DEFAULT_MAX_ERRORS, DEFAULT_MAX_TOPICS

__all__ = ["OriginCheck", "WebSocketConfig"]


#: ``check(origin, request)``: whether a browser page from *origin* may connect.
OriginCheck = Callable[[str, Request], bool]


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """How ``GET /ws`` serves ``tidings.v1`` sessions.

    **Origin** (cross-site WebSocket hijacking): browsers send ``Origin`` with every
    WebSocket handshake and attach the user's cookies whatever the page.  Requests
    without ``Origin`` (non-browser clients) and same-origin pages (``Origin`` host
    equals ``Host``) are always admitted, and so is the server's CORS origin
    (:attr:`ServerConfig.allow_origin <tidings.trio.ServerConfig.allow_origin>`);
    *allowed_origins* admits more: a collection of origins (``"*"``: any) or a
    callable that decides.  Others get ``403`` before the upgrade; the same rule
    guards ``POST`` (publishing).

    **Auth**: the server's authorisation hook (:attr:`ServerConfig.auth
    <tidings.trio.ServerConfig.auth>`) runs after the origin check, before the
    upgrade, and again for every ``subscribe`` and ``publish`` message.
    """

    #: Largest message accepted from a client, in bytes (larger: close 1009).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Topics one connection may follow at once.
    max_topics: int = DEFAULT_MAX_TOPICS
    #: ``error`` answers after which the connection is closed with 1008.
    max_errors: int = DEFAULT_MAX_ERRORS
    #: High-water mark of a session's queued answers, in bytes: above it the session
    #: handles no further client message until they are sent (backpressure).
    max_queued_bytes: int = 1024 * 1024
    #: Seconds between pings; a pong missing for :attr:`pong_timeout` closes with 1011.
    ping_interval: float = DEFAULT_PING_INTERVAL
    pong_timeout: float = DEFAULT_PONG_TIMEOUT
    #: Admitted ``Origin`` values (see above).
    allowed_origins: Collection[str] | OriginCheck | None = None
    #: Whether a handshake must offer ``tidings.v1`` (otherwise ``400``); when false a
    #: client offering no subprotocol is served ``tidings.v1`` all the same.
    require_subprotocol: bool = True
    #: Close code sent to every session when the server drains (1001 going away:
    #: clients reconnect at once, elsewhere; 1012 makes them wait a few seconds).
    drain_close_code: int = 1001
    #: Seconds the closing handshake may take before the connection is cut.
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_topics", "max_errors", "max_queued_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1")
        for name in ("ping_interval", "pong_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise LocalProtocolError(f"{name} must be > 0")
        if self.drain_close_code not in (1001, 1012, 1013):
            raise LocalProtocolError("drain_close_code must be 1001, 1012 or 1013")
