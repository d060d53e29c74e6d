"""``GET /ws``: ``tidings.v1`` WebSocket sessions on the HTTP/1.1 server.

The handler checks the handshake (``Origin`` allow-list, auth hook, version, key,
subprotocol), answers ``101`` through the responder's upgrade and then pumps bytes
between the socket, :mod:`wsproto` (frames, pings, closing handshake) and one
:class:`~tidings.ws.SessionServer` (the protocol decisions).

One task per connection (idle sessions are the common case, and each task costs
memory).  It feeds what the client sent to wsproto and the session machine, which
queues the answers; then it sends, in order, the queued answers, what the hub's
subscriptions (one per topic, sharing one :class:`~tidings.trio.Waiter`) have
ready, pings and the close frame; then it waits for the client or a wake-up.
Registering with the hub happens in the same step as the replay is read, and
queued answers go out before live events, so no event is missed or reordered.
While the task waits on a plain socket, the publisher writes live events straight
to it (:class:`_SharedSink`): a burst of publishes costs one system call per
session and no task switch.

Live events are encoded once per event for all sessions: the WebSocket frame a
server sends is not masked, so the very bytes are shared (:meth:`LiveEvent.encoded`).
Each topic's subscription drives the follower the session machine made for it (the
follow machine decides what to send); a session whose subscription overflows (the
client reads too slowly) catches up from the history instead of being dropped; one
whose socket stays blocked for ``write_timeout`` is cut.  Publishes go through the
hub with the ``msg_id`` as idempotency key, so they reach SSE and long-poll
subscribers too and are stored once however often a client resends them (within the
history's de-duplication window).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import generate_accept_token

from tidings.history import StoredEvent
from tidings.session import ClosePeer, HeartbeatPolicy
from tidings.trio._sync import Waiter
from tidings.trio.hub import LiveEvent
from tidings.trio.server._auth import Action, Refusal
from tidings.trio.server._http import Request, Responder
from tidings.trio.server._socket_sink import SocketSink, write_some
from tidings.trio.server._ws_config import WebSocketConfig
from tidings.trio.server._ws_core import SessionCore, SessionWaker
from tidings.ws import SUBPROTOCOL, EventMessage

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["WebSocketState", "ws_session"]

log = logging.getLogger("tidings.server")

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
# Per-topic frame encoders, shared so that LiveEvent.encoded() caches one frame per
# event for every session; bounded (a miss only costs one more encoding).
_MAX_ENCODERS = 4096
_FRAMER = FrameProtocol(client=False, extensions=[])
# Close codes for a peer that broke the protocol: it gets _ABUSE_LINGER seconds (and
# at most _LINGER_BYTES more bytes) to take our close frame, then the connection ends.
_ABUSE_CODES = frozenset({1002, 1003, 1008, 1009})
_ABUSE_LINGER = 1.0
_LINGER_BYTES = 1024 * 1024


def _frame(text: str) -> bytes:
    """One unmasked, unfragmented text frame (the same bytes for every client)."""
    return bytes(_FRAMER.send_data(text, fin=True))


class WebSocketState:
    """What every WebSocket session of one server shares: its config and the per-topic
    encoders (so that an event's frame, or text, is built once for every session)."""

    def __init__(self, config: WebSocketConfig) -> None:
        self.config = config
        self.encoders: dict[str, Callable[[StoredEvent], bytes]] = {}
        self.text_encoders: dict[str, Callable[[StoredEvent], str]] = {}

    def encoder(self, topic: str) -> Callable[[StoredEvent], bytes]:
        """The function giving the frame of an event of *topic* (shared)."""
        encoder = self.encoders.get(topic)
        if encoder is None:
            if len(self.encoders) >= _MAX_ENCODERS:
                self.encoders.clear()

            def encoder(stored: StoredEvent) -> bytes:
                return _frame(EventMessage.from_stored(topic, stored).encode())

            self.encoders[topic] = encoder
        return encoder

    def text_encoder(self, topic: str) -> Callable[[StoredEvent], str]:
        """The function giving the text message of an event of *topic* (shared)."""
        encoder = self.text_encoders.get(topic)
        if encoder is None:
            if len(self.text_encoders) >= _MAX_ENCODERS:
                self.text_encoders.clear()

            def encoder(stored: StoredEvent) -> str:
                return EventMessage.from_stored(topic, stored).encode()

            self.text_encoders[topic] = encoder
        return encoder


# ------------------------------------------------------------------------- handshake


def _tokens(request: Request, name: bytes) -> list[str]:
    values: list[str] = []
    for key, value in request.headers:
        if key == name:
            values += [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]
    return values


async def _refuse(
    app: App, responder: Responder, refusal: Refusal, *, by_hook: bool = False
) -> None:
    if by_hook:
        app.metrics.rejected["auth"] += 1
    else:
        app.metrics.reject(refusal.status)
    body = (refusal.message + "\n").encode("utf-8", "replace")
    headers = app.headers(_TEXT, (b"cache-control", b"no-store"), *refusal.headers)
    await responder.respond(refusal.status, headers, body)


async def ws_session(app: App, request: Request, responder: Responder) -> None:
    """Check the handshake, upgrade, and serve one ``tidings.v1`` session."""
    config = app.websocket.config
    if "websocket" not in [t.lower() for t in _tokens(request, b"upgrade")]:
        await _refuse(
            app,
            responder,
            Refusal(
                426,
                "This endpoint speaks WebSocket (tidings.v1) only",
                [(b"upgrade", b"websocket"), (b"connection", b"upgrade")],
            ),
        )
        return
    if not app.origin_allowed(request):
        await _refuse(app, responder, Refusal(403, "Origin not allowed"))
        return
    refusal = await app.authorize(request, Action.CONNECT, None)
    if refusal is not None:
        await _refuse(app, responder, refusal, by_hook=True)
        return
    if request.header(b"sec-websocket-version") != b"13":
        await _refuse(
            app,
            responder,
            Refusal(426, "WebSocket version 13 only", [(b"sec-websocket-version", b"13")]),
        )
        return
    key = request.header(b"sec-websocket-key")
    try:
        valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if key is None or not valid_key:
        await _refuse(app, responder, Refusal(400, "Bad Sec-WebSocket-Key"))
        return
    offered = _tokens(request, b"sec-websocket-protocol")
    if SUBPROTOCOL not in offered and (offered or config.require_subprotocol):
        await _refuse(app, responder, Refusal(400, f"Subprotocol {SUBPROTOCOL} required"))
        return
    if not responder.can_upgrade:
        # HTTP/2 (RFC 8441 is not offered) or an h11 quirk: ask for HTTP/1.1.
        await _refuse(app, responder, Refusal(426, "Use HTTP/1.1 for WebSocket"))
        return
    if app.draining:
        retry = app.retry_after_header()
        await _refuse(app, responder, Refusal(503, "Server draining", [retry]))
        return
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]
    if SUBPROTOCOL in offered:
        headers.append((b"sec-websocket-protocol", SUBPROTOCOL.encode()))
    stream, leftover = await responder.upgrade(headers)
    session = _Session(app, config, request, stream)
    app.connections.add(session)
    try:
        await session.run(leftover)
    finally:
        app.connections.discard(session)
        session.cleanup()


# --------------------------------------------------------------------------- session


class _SharedSink(SocketSink):
    """Lets the publisher write live events straight to an idle session's socket.

    While the writer task has nothing to do it hangs one :class:`_TopicSink` per
    topic on the subscriptions; the hub then queues each next event here and
    :meth:`flush` writes a burst in one system call; an interruption wakes the
    writer, which takes the unsent bytes and owns the socket again.
    """

    __slots__ = ("_waiter",)

    def __init__(self, fd: int, waiter: Waiter) -> None:
        super().__init__(fd)
        self._waiter = waiter

    def _wake(self) -> None:
        self._waiter.wake()


class _TopicSink:
    """One topic's view of a :class:`_SharedSink` (a hub ``DirectSink``)."""

    __slots__ = ("encoder", "shared")

    def __init__(self, shared: _SharedSink, encoder: Callable[[StoredEvent], bytes]) -> None:
        self.shared = shared
        self.encoder = encoder

    def deliver(self, item: LiveEvent) -> bool:
        shared = self.shared
        return not shared.interrupted and shared.queue(item.encoded(self.encoder))

    def flush(self) -> None:
        self.shared.flush()

    def interrupt(self) -> None:
        self.shared.interrupt()


class _Session:
    """One upgraded connection, served by one task.

    The protocol work is its :class:`~tidings.trio.server._ws_core.SessionCore`'s; this
    class carries it over wsproto.  The task sends what there is to send (answers,
    live events, pings, the close frame), then waits for the client *or* a wake-up
    (hub, drain, heartbeat deadline), and starts over.  While it waits on a plain
    socket, the publisher writes live events straight to it (:class:`_SharedSink`).
    One task and no nursery per session keeps idle sessions small; reading only
    between writes is the backpressure on a client that sends without reading.

    One read can hold hundreds of messages, and one ``subscribe`` can replay a whole
    topic: once the queued answers pass ``max_queued_bytes`` the rest of the read
    stays in wsproto (:attr:`backlog`) until they are sent, so a client that sends
    without reading is held up by ``write_timeout``, not served from memory.
    """

    __slots__ = (
        "app",
        "backlog",
        "close_deadline",
        "close_sent",
        "config",
        "core",
        "eof",
        "fd",
        "heartbeat",
        "linger_bytes",
        "max_queued",
        "part_chars",
        "parts",
        "peer_closed",
        "state",
        "stream",
        "waiter",
        "ws",
    )

    def __init__(
        self, app: App, config: WebSocketConfig, request: Request, stream: trio.abc.Stream
    ) -> None:
        self.app = app
        self.config = config
        self.stream = stream
        # A plain TCP socket can be written without waiting (see _SharedSink).
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.state = app.websocket
        self.ws = Connection(ConnectionType.SERVER)
        self.waiter = SessionWaker()
        self.core: SessionCore[bytes] = SessionCore(
            app, request, self.waiter, frame=_frame, size=len, encoder_for=self.state.encoder
        )
        self.heartbeat = HeartbeatPolicy(interval=config.ping_interval, timeout=config.pong_timeout)
        self.max_queued = config.max_queued_bytes
        # Whether wsproto may hold events not handled yet (see _events).
        self.backlog = False
        self.close_sent = False
        self.close_deadline = math.inf
        self.peer_closed = False
        self.eof = False
        # Bytes received after our close frame went out (see _received).
        self.linger_bytes = 0
        self.parts: list[str] | None = None
        self.part_chars = 0

    # -- lifecycle

    def drain(self) -> None:
        """The server drains: close with the configured code (called by the app)."""
        self.core.close(self.config.drain_close_code, "server draining")

    def cleanup(self) -> None:
        self.core.cleanup()

    async def run(self, leftover: bytes) -> None:
        """Serve the session until it ends.

        Written as one coroutine (no helper awaited while idle): an idle session is
        mostly this frame, and every frame less is memory saved per session.
        """
        self.heartbeat.start(trio.current_time())
        write_timeout = self.app.config.write_timeout
        receive_size = self.app.config.receive_size
        waiter = self.waiter
        core = self.core
        try:
            if leftover:
                self._received(leftover)
            while True:
                chunks = self._collect()
                if chunks:
                    with trio.move_on_after(write_timeout) as scope:
                        await self._send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                    if scope.cancelled_caught:
                        log.debug("websocket client stopped reading; cutting it off")
                        return
                    continue
                if core.needs_settle:
                    await core.settle()
                    continue
                if self.backlog:
                    # The queue is sent: take the next messages of the last read.
                    self._events()
                    continue
                if self.eof or self.peer_closed or self.ws.state is ConnectionState.CLOSED:
                    return  # (an answer to the peer's close frame went out above)
                if self.close_sent:
                    if trio.current_time() >= self.close_deadline:
                        return  # the peer never answered our close frame
                    deadline = self.close_deadline
                else:
                    next_ping = self.heartbeat.next_deadline()
                    deadline = math.inf if next_ping is None else next_ping
                if waiter.is_set:
                    waiter.clear()
                    await trio.lowlevel.checkpoint()
                    continue
                # Wait for the client's bytes (b"": it left) or a wake-up (None).
                sink = self._attach_sink()
                data: bytes | None = None
                try:
                    with trio.CancelScope(deadline=deadline) as scope:
                        waiter.scope = scope
                        if self.fd >= 0:
                            await trio.lowlevel.wait_readable(self.fd)
                            data = self._read(receive_size)
                        else:
                            data = bytes(await self.stream.receive_some(receive_size))
                finally:
                    waiter.scope = None
                    waiter.clear()
                    if sink is not None:
                        self._detach_sink(sink)
                if data is not None:
                    self._received(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    def _attach_sink(self) -> _SharedSink | None:
        """Idle on a plain socket: let the publisher write live events to it."""
        if self.fd < 0 or self.close_sent:
            return None
        sink = _SharedSink(self.fd, self.waiter)
        for topic, subscription in self.core.subscriptions.items():
            subscription.sink = _TopicSink(sink, self.state.encoder(topic))
        return sink

    def _detach_sink(self, sink: _SharedSink) -> None:
        """The session's task owns the socket again; unsent bytes go out first."""
        for subscription in self.core.subscriptions.values():
            if isinstance(subscription.sink, _TopicSink):
                subscription.sink = None
        unsent = sink.take()
        if unsent:
            self.core.queued.insert(0, unsent)
            self.core.queued_size += len(unsent)
        if sink.broken:
            self.eof = True

    def _read(self, size: int) -> bytes | None:
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def _send(self, data: bytes) -> None:
        """Write *data*: straight to the socket when it has room, else by the stream."""
        view: bytes | memoryview = data
        if self.fd >= 0:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = write_some(self.fd, data)
            except OSError as exc:
                raise trio.BrokenResourceError(f"write failed: {exc}") from exc
            if sent == len(data):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            view = memoryview(data)[sent:]
        await self.stream.send_all(view)

    # -- reading

    def _received(self, data: bytes) -> None:
        if self.close_sent:
            self.linger_bytes += len(data)
            if self.linger_bytes > _LINGER_BYTES:
                self.eof = True  # enough read after our close frame: stop here
                return
        if not data:
            self.eof = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        self._events()

    def _events(self) -> None:
        """Handle what wsproto has, until the queued answers pass the high-water
        mark or a message waits for the authorisation hook; then leave the rest in
        wsproto (a frame is parsed only when asked for) and set :attr:`backlog`, so
        that the queue is sent (and the hook asked) first."""
        now = trio.current_time()
        core = self.core
        self.backlog = False
        for event in self.ws.events():
            if core.closing is not None and not isinstance(event, CloseConnection):
                continue  # closing: only the peer's close frame matters now
            if isinstance(event, TextMessage):
                self._text(event.data, event.message_finished)
            elif isinstance(event, BytesMessage):
                if event.message_finished:
                    core.receive_binary()
            elif isinstance(event, Ping):
                core.queue(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self.heartbeat.pong_received(bytes(event.payload), now)
            elif isinstance(event, CloseConnection):
                self.peer_closed = True
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    core.queue(self.ws.send(event.response()))
                    self.close_sent = True
                return
            if core.queued_size >= self.max_queued or core.blocked:
                self.backlog = True
                return

    def _text(self, data: str, finished: bool) -> None:
        if self.core.server.closed:
            return
        self.part_chars += len(data)
        if self.part_chars > self.config.max_message_size:
            # Characters never outnumber UTF-8 bytes: surely too big; stop buffering.
            self.parts = None
            self.core.message_too_big()
            return
        if not finished:
            if self.parts is None:
                self.parts = []
            self.parts.append(data)
            return
        if self.parts is not None:
            self.parts.append(data)
            data = "".join(self.parts)
            self.parts = None
        self.part_chars = 0
        self.core.receive_text(data)

    # -- writing

    def _collect(self) -> list[bytes]:
        """Everything to send now, in order: answers, live events, pings, close."""
        core = self.core
        chunks = core.take_queued()
        if self.close_sent:
            return chunks
        if core.closing is None:
            core.collect_live(chunks)
            for action in self.heartbeat.handle_timer(trio.current_time()):
                if isinstance(action, ClosePeer):
                    core.close(action.code, action.reason)
                else:
                    chunks.append(self.ws.send(Ping(action.payload)))
        if core.closing is not None and self.ws.state is ConnectionState.OPEN:
            code, reason = core.closing
            chunks.append(self.ws.send(CloseConnection(code, reason)))
            self.close_sent = True
            # A peer that broke the protocol (an oversized or binary message, too
            # many errors) gets a short while to read our close frame, not a full
            # closing handshake while it goes on sending.
            linger = _ABUSE_LINGER if code in _ABUSE_CODES else self.config.close_timeout
            self.close_deadline = trio.current_time() + min(linger, self.config.close_timeout)
        return chunks
