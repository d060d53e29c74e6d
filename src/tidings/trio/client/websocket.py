"""Follow and publish to topics over a ``tidings.v1`` WebSocket, across reconnects.

:func:`open_session` is the pump around :class:`~tidings.ws.SessionClient` (cursors,
outbox) and its :class:`~tidings.session.ReconnectingSession` (when to reconnect,
when to stop), on :mod:`trio_websocket`.  Every decision is the machines': which
``subscribe`` and which resent publishes follow a reconnect, whether a close code or
an HTTP refusal is worth another attempt, how long to wait.  Heartbeats follow
:class:`~tidings.session.HeartbeatPolicy`: a pong missing for ``pong_timeout``
closes the connection with 1011 and the session reconnects.  The pong timeout does
not run while the consumer holds up the reading (the pong waits behind messages it
has not taken yet): that is backpressure, not a dead peer.

It yields what every tidings client yields, :class:`~tidings.events.Event` and
:class:`~tidings.events.ResetNotice`; the wire messages (:class:`~tidings.ws.EventMessage`,
:class:`~tidings.ws.ResetMessage`) stay inside.  Reconnections are logged under
``tidings.trio.session`` at INFO; nothing is printed.

Events are *pulled*: a consumer that stops iterating stops the reading, and the
server catches the session up from its history later.  An event's cursor moves when
it is received, before the consumer takes it, so an event whose hand-over a lost
connection cancelled is kept and handed over first, before the session reconnects:
the resume skips it, so it must not be dropped.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError as WsprotoLocalProtocolError

from tidings.backoff import Backoff, Random
from tidings.errors import LocalProtocolError
from tidings.events import DEFAULT_EVENT_TYPE, Event, ResetNotice
from tidings.retry_after import retry_after_from_headers
from tidings.session import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    ClosePeer,
    Connect,
    GiveUp,
    HeartbeatPolicy,
    ReconnectingSession,
    SessionAction,
    Wait,
)
from tidings.trio.client._args import check_headers
from tidings.ws import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_OUTBOX,
    SUBPROTOCOL,
    ClientMessage,
    CloseConnection,
    ErrorMessage,
    EventMessage,
    PublishAcknowledged,
    PublishFailed,
    ResetMessage,
    SessionClient,
    SubscribedMessage,
)

__all__ = [
    "DEFAULT_SESSION_CONNECT_TIMEOUT",
    "PublishRejected",
    "SessionClosed",
    "WebSocketSession",
    "open_session",
]

logger = logging.getLogger("tidings.trio.session")

#: Seconds allowed for TCP, TLS and the WebSocket handshake of one attempt.
DEFAULT_SESSION_CONNECT_TIMEOUT = 30.0
#: Events buffered between the connection and a consumer that is busy.
DEFAULT_SESSION_BUFFER = 256


class SessionClosed(Exception):
    """The session ended for good (the classifier said stop, or it was closed).

    ``code`` / ``status`` are the close code or HTTP status that decided, if any.
    """

    def __init__(self, reason: str, *, code: int | None = None, status: int | None = None):
        super().__init__(reason)
        #: The WebSocket close code that ended the session, if one did.
        self.code = code
        #: The HTTP status that refused the handshake, if one did.
        self.status = status


class PublishRejected(Exception):
    """The server refused a publish (``error`` with its ``code``); it is not resent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        #: The ``error`` code (for example ``publish_rejected``).
        self.code = code


@dataclass(slots=True)
class _Pending:
    done: trio.Event
    result: str | BaseException | None = None


class WebSocketSession:
    """A live ``tidings.v1`` session: iterate for events and resets, publish, close.

    Made by :func:`open_session`.  Iterating yields :class:`~tidings.events.Event`
    (``topic``, ``id``, ``event``, ``data``) and :class:`~tidings.events.ResetNotice`
    (``topic``, ``cursor``: events before it may be missing, the ones after it
    follow), in order per topic, each event once; iteration ends when the session
    gives up, raising :class:`SessionClosed` unless it was closed by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        client: SessionClient,
        *,
        ssl_context: ssl.SSLContext | None,
        headers: list[tuple[bytes, bytes]],
        connect_timeout: float,
        ping_interval: float,
        pong_timeout: float,
        buffer: int,
        receive_buffer_size: int,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise LocalProtocolError(f"a session URL is ws://host/path or wss://, not {url!r}")
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname
        try:
            port = parts.port
        except ValueError as exc:
            raise LocalProtocolError(f"bad port in {url!r}") from exc
        self._port = port if port is not None else (443 if self._secure else 80)
        default_port = 443 if self._secure else 80
        self._host_header = parts.netloc if self._port != default_port else self._host
        self._resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        #: The sans-IO machine (cursors, outbox, reconnect decisions).
        self.client = client
        self._ssl = ssl_context
        self._headers = list(headers)
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._receive_buffer_size = receive_buffer_size
        self._send, self._receive = trio.open_memory_channel[Event | ResetNotice](buffer)
        # Received (their cursors already moved) but not yet taken by the consumer.
        self._undelivered: deque[Event | ResetNotice] = deque()
        # Set while the reading waits for a busy consumer (None: not waiting) ...
        self._consumer_busy: trio.Event | None = None
        # ... and when such a wait last ended.
        self._consumer_caught_up = -math.inf
        self._ws: WebSocketConnection | None = None
        self._pending: dict[str, _Pending] = {}
        self._ended: SessionClosed | None = None
        self._closed_by_us = False
        self._close_timeout = 1.0
        self._run_scope = trio.CancelScope()
        self._conn_scope: trio.CancelScope | None = None
        self._ended_event = trio.Event()
        #: Connections opened so far.
        self.connections = 0
        #: Connection attempts so far (successful or not).
        self.attempts = 0

    # -- application API

    @property
    def connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._ws is not None

    @property
    def positions(self) -> Mapping[str, str | None]:
        """Each topic's resume cursor (the last id seen, or ``None``)."""
        return self.client.session.positions

    def __aiter__(self) -> WebSocketSession:
        return self

    async def __anext__(self) -> Event | ResetNotice:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._ended is not None and not self._closed_by_us:
                raise self._ended from None
            raise StopAsyncIteration from None

    async def subscribe(self, topic: str, cursor: str | None = None) -> None:
        """Follow *topic* from after *cursor* (``None``: live; ``"earliest"``: all)."""
        await self._send_all(self.client.subscribe(topic, cursor))

    async def unsubscribe(self, topic: str) -> None:
        """Stop following *topic*."""
        await self._send_all(self.client.unsubscribe(topic))

    async def publish(self, topic: str, data: str, event: str | None = None) -> str:
        """Publish and return the event's id once the server stored it.

        Survives reconnects (the outbox resends; the server de-duplicates), so it is
        stored exactly once.  Raises :class:`PublishRejected` if the server refuses
        it, :class:`SessionClosed` if the session ends first, and
        :class:`~tidings.errors.LocalProtocolError` when ``max_outbox`` publishes are
        already waiting.  Acknowledgements arrive in order with the events: a session
        that follows topics must be iterated meanwhile (events are pulled).
        """
        if self._ended is not None:
            raise self._ended
        msg_id, messages = self.client.publish(topic, data, event)
        pending = self._pending[msg_id] = _Pending(trio.Event())
        try:
            await self._send_all(messages)
            await pending.done.wait()
        finally:
            self._pending.pop(msg_id, None)
        if isinstance(pending.result, str):
            return pending.result
        assert isinstance(pending.result, BaseException)
        raise pending.result

    async def aclose(self) -> None:
        """End the session (close 1000; unacknowledged publishes fail)."""
        self._closed_by_us = True
        scope = self._conn_scope
        if scope is not None and self._ended is None:
            # The connection's task closes (1000) while trio-websocket's reader still
            # runs to complete the closing handshake.
            scope.cancel()
            with trio.move_on_after(self._close_timeout + 1):
                await self._ended_event.wait()
        self._end(SessionClosed("closed by the application"))
        self._run_scope.cancel()

    # -- internals

    async def _send_all(self, messages: Iterable[ClientMessage]) -> None:
        ws = self._ws
        if ws is None:
            return  # sent by connection_made() after the reconnect
        for message in messages:
            try:
                await ws.send_message(message.encode())
            except ConnectionClosed:
                return  # the run loop sees it too; the outbox resends

    def _finished(self) -> bool:
        return self._ended is not None

    def _end(self, error: SessionClosed) -> None:
        if self._ended is None:
            self._ended = error
        self.client.session.stop()
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.result = self._ended
                pending.done.set()
        self._send.close()
        self._ended_event.set()

    async def _run(self) -> None:
        if self._ended is not None:
            return  # closed before the task started (the block left at once)
        session = self.client.session
        action: SessionAction | None = session.start(trio.current_time())
        while self._ended is None:
            if self._undelivered and not await self._deliver():
                return
            if isinstance(action, GiveUp):
                self._end(SessionClosed(action.reason, code=action.code, status=action.status))
                return
            if isinstance(action, Wait) or action is None:
                if action is not None:
                    logger.info(
                        "%s: %s; reconnecting in %.3f s", self.url, action.reason, action.delay
                    )
                deadline = session.next_deadline()
                assert deadline is not None
                await trio.sleep_until(deadline)
                action = session.timer(trio.current_time())  # None: not quite due yet
                continue
            assert isinstance(action, Connect)
            action = await self._connection()

    async def _open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        stream = await trio.open_tcp_stream(self._host, self._port)
        if not self._secure:
            return stream
        context = self._ssl if self._ssl is not None else ssl.create_default_context()
        tls = trio.SSLStream(stream, context, server_hostname=self._host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls

    async def _connection(self) -> SessionAction:
        self.attempts += 1
        holder: list[trio.abc.Stream] = []
        try:
            return await self._attempt(holder)
        finally:
            # trio-websocket leaves a client's socket open after a close handshake
            # the server ended; the stream is ours, so close it ourselves.
            for stream in holder:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _attempt(self, holder: list[trio.abc.Stream]) -> SessionAction:
        # trio-websocket raises a refused handshake (and some failures) from its
        # reader task, so they arrive wrapped by the connection's nursery.  Its reader
        # also fails (wsproto LocalProtocolError) when it answers a ping that was read
        # after our close frame went out: the connection is over either way.
        rejected: list[ConnectionRejected] = []
        failed: list[BaseException] = []
        try:
            return await self._connect_and_follow(holder)
        except* ConnectionRejected as group:
            rejected += [e for e in group.exceptions if isinstance(e, ConnectionRejected)]
        except* (
            OSError,
            HandshakeError,
            trio.BrokenResourceError,
            ConnectionClosed,
            WsprotoLocalProtocolError,
        ) as group:
            failed += group.exceptions
        if self._finished() or self._closed_by_us:
            return GiveUp("closed")
        if rejected:
            return self._rejected(rejected[0])
        logger.debug("%s: connection failed: %r", self.url, failed[0] if failed else None)
        return self.client.session.network_error(trio.current_time(), _describe(failed[0]))

    def _rejected(self, exc: ConnectionRejected) -> SessionAction:
        retry_after = retry_after_from_headers(exc.headers or [], wall_time=time.time())
        logger.debug("%s: handshake refused: HTTP %s", self.url, exc.status_code)
        if self._finished():
            return GiveUp("closed")
        return self.client.session.http_failure(exc.status_code, retry_after, trio.current_time())

    async def _connect_and_follow(self, holder: list[trio.abc.Stream]) -> SessionAction:
        session = self.client.session
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await self._open_stream()
                    holder.append(stream)
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        self._host_header,
                        self._resource,
                        subprotocols=[SUBPROTOCOL],
                        extra_headers=self._headers,
                        message_queue_size=1,
                        max_message_size=self.client.max_message_size,
                        receive_buffer_size=self._receive_buffer_size,
                    )
            except ConnectionRejected as exc:
                nursery.cancel_scope.cancel()
                return self._rejected(exc)
            except (OSError, HandshakeError, trio.TooSlowError, ConnectionClosed) as exc:
                nursery.cancel_scope.cancel()
                logger.debug("%s: connection failed: %r", self.url, exc)
                if self._finished():
                    return GiveUp("closed")
                return session.network_error(trio.current_time(), _describe(exc))
            now = trio.current_time()
            if self._finished():
                nursery.cancel_scope.cancel()
                return GiveUp("closed")
            session.connected(now)
            self.connections += 1
            logger.info("%s: connected", self.url)
            if ws.subprotocol != SUBPROTOCOL:
                nursery.cancel_scope.cancel()
                self.client.connection_lost()
                return session.closed(
                    1002, "server did not select tidings.v1", by_peer=False, now=now
                )
            self._ws = ws
            local: list[tuple[int, str]] = []
            code: int | None = 1000
            reason = ""
            try:
                with trio.CancelScope() as scope:
                    self._conn_scope = scope
                    if self._closed_by_us:
                        scope.cancel()
                    for message in self.client.connection_made():
                        await ws.send_message(message.encode())
                    heartbeat = HeartbeatPolicy(
                        interval=self._ping_interval, timeout=self._pong_timeout
                    )
                    heartbeat.start(now)
                    nursery.start_soon(self._heartbeat, ws, heartbeat, local, scope)
                    await self._receive_loop(ws, local)
            except ConnectionClosed as exc:
                if exc.reason is not None:
                    code, reason = int(exc.reason.code), exc.reason.reason or ""
                else:
                    code, reason = None, "connection lost"
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                code, reason = None, "connection lost"
            finally:
                self._ws = None
                self._conn_scope = None
                if self._closed_by_us and not local:
                    with trio.move_on_after(self._close_timeout):
                        await ws.aclose(1000, "bye")
                self.client.connection_lost()
                nursery.cancel_scope.cancel()
            if local:
                code, reason = local[0]
            elif code == 1006:
                code = None  # no close frame: a network error
            if self._finished() or self._closed_by_us:
                return GiveUp("closed by the application", code=1000)
            return session.closed(code, reason, by_peer=not local, now=trio.current_time())

    async def _deliver(self) -> bool:
        """Hand the undelivered messages to the consumer, oldest first.

        A message leaves the queue only once the channel took it, so one whose
        hand-over was cancelled is still there for the next call.  False once the
        session has ended or is being closed (nobody will take them).
        """
        while self._undelivered:
            if self._closed_by_us:
                self._undelivered.clear()
                return False
            message = self._undelivered[0]
            try:
                try:
                    self._send.send_nowait(message)
                except trio.WouldBlock:
                    busy = self._consumer_busy = trio.Event()
                    try:
                        await self._send.send(message)
                    finally:
                        self._consumer_busy = None
                        self._consumer_caught_up = trio.current_time()
                        busy.set()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return False
            self._undelivered.popleft()
        return True

    async def _receive_loop(self, ws: WebSocketConnection, local: list[tuple[int, str]]) -> None:
        while True:
            if not await self._deliver():
                return
            text = await ws.get_message()
            if isinstance(text, bytes):
                outputs = self.client.receive_binary()
            else:
                outputs = self.client.receive_text(text)
            for output in outputs:
                if isinstance(output, EventMessage):
                    event = output.event or DEFAULT_EVENT_TYPE
                    self._undelivered.append(Event(output.topic, output.id, event, output.data))
                    if not await self._deliver():
                        return
                elif isinstance(output, ResetMessage):
                    self._undelivered.append(
                        ResetNotice(output.topic, output.cursor, output.reason)
                    )
                    if not await self._deliver():
                        return
                elif isinstance(output, PublishAcknowledged):
                    self._settle(output.msg_id, output.id)
                elif isinstance(output, PublishFailed):
                    self._settle(output.msg_id, PublishRejected(output.code, output.message))
                elif isinstance(output, CloseConnection):
                    local.append((output.code, output.reason))
                    with trio.move_on_after(1):
                        await ws.aclose(output.code, output.reason)
                    return
                elif isinstance(output, ErrorMessage):
                    logger.warning("server error %s: %s", output.code, output.message)
                else:
                    assert isinstance(output, SubscribedMessage)

    def _settle(self, msg_id: str, result: str | BaseException) -> None:
        pending = self._pending.get(msg_id)
        if pending is not None and not pending.done.is_set():
            pending.result = result
            pending.done.set()

    async def _heartbeat(
        self,
        ws: WebSocketConnection,
        heartbeat: HeartbeatPolicy,
        local: list[tuple[int, str]],
        scope: trio.CancelScope,
    ) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                deadline = heartbeat.next_deadline()
                if deadline is not None and heartbeat.awaiting_pong:
                    # The pong may wait behind messages a busy consumer held up: give
                    # the peer the whole timeout after the reading resumed.
                    deadline = max(deadline, self._consumer_caught_up + self._pong_timeout)
                await trio.sleep_until(deadline if deadline is not None else math.inf)
                if heartbeat.awaiting_pong:
                    busy = self._consumer_busy
                    if busy is not None:
                        await busy.wait()
                        continue
                    if trio.current_time() < self._consumer_caught_up + self._pong_timeout:
                        continue
                for action in heartbeat.handle_timer(trio.current_time()):
                    if isinstance(action, ClosePeer):
                        logger.info("%s: no pong for %.0f s", self.url, self._pong_timeout)
                        local.append((action.code, action.reason))
                        with trio.move_on_after(1):
                            await ws.aclose(action.code, action.reason)
                        scope.cancel()  # the peer is dead: do not wait for its answer
                        return
                    nursery.start_soon(self._ping, ws, heartbeat, action.payload)

    async def _ping(
        self, ws: WebSocketConnection, heartbeat: HeartbeatPolicy, payload: bytes
    ) -> None:
        try:
            await ws.ping(payload)
        except (ConnectionClosed, ValueError):
            return
        heartbeat.pong_received(payload, trio.current_time())


def _describe(exc: BaseException) -> str:
    """A one-line description of a connection failure."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc)
    if isinstance(exc, OSError):
        return f"connection failed: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        else:
            out.append(exc)
    return out


_MANAGED = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)


@asynccontextmanager
async def open_session(
    url: str,
    topics: Iterable[str] | Mapping[str, str | None] = (),
    *,
    rng: Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
    max_retries: int | None = None,
    connect_timeout: float = DEFAULT_SESSION_CONNECT_TIMEOUT,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    pong_timeout: float = DEFAULT_PONG_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
    buffer: int = DEFAULT_SESSION_BUFFER,
    receive_buffer_size: int = 64 * 1024,
) -> AsyncIterator[WebSocketSession]:
    """Open a ``tidings.v1`` session at *url* (``ws://host/ws`` or ``wss://``).

    ::

        async with open_session("ws://localhost:8000/ws", ["news"]) as session:
            async for item in session:
                if isinstance(item, ResetNotice):
                    ...  # resynchronise item.topic: events before item.cursor were skipped
                else:
                    print(item.topic, item.id, item.event, item.data)

    It yields :class:`~tidings.events.Event` and :class:`~tidings.events.ResetNotice`,
    as the SSE and long-poll clients do.  *topics* are followed from the start: names
    (live from now) or a mapping of name to cursor (``"earliest"``, or a saved id to
    resume after).  The session reconnects, resuming every topic from its last id and
    resending unacknowledged publishes, until the one retry decision of every tidings
    client (:class:`~tidings.retry.Retrier`: the close code or handshake status and who
    closed) says stop or *max_retries* consecutive retries failed; the delays come from
    *backoff* (default :func:`~tidings.backoff.default_backoff`), and a connection that
    delivered a new event or acknowledged a publish is not a failure.  *headers* (a
    mapping of names to values, for example ``{"Authorization": ...}``) go with every
    handshake.  *rng* draws jitter and message ids (default ``random.SystemRandom()``).

    Errors are raised bare, not wrapped in an exception group: :class:`SessionClosed`
    when the session gives up (a refused handshake, a final close code),
    :class:`~tidings.errors.LocalProtocolError` for a bad argument, and whatever the
    body of the ``async with`` raises.
    """
    if not url.startswith(("ws://", "wss://")):
        raise LocalProtocolError(f"a session URL starts with ws:// or wss://, not {url!r}")
    if buffer < 0 or not connect_timeout > 0:
        raise LocalProtocolError("buffer must be >= 0 and connect_timeout > 0")
    extra = check_headers(headers, _MANAGED, "WebSocket session client")
    rng = random.SystemRandom() if rng is None else rng
    reconnecting = ReconnectingSession(rng, backoff=backoff, max_retries=max_retries)
    client = SessionClient(
        rng, session=reconnecting, max_outbox=max_outbox, max_message_size=max_message_size
    )
    if isinstance(topics, str):
        topics = [topics]
    if isinstance(topics, Mapping):
        for topic, cursor in topics.items():
            client.subscribe(topic, cursor)
    else:
        for topic in topics:
            client.subscribe(topic)
    session = WebSocketSession(
        url,
        client,
        ssl_context=ssl_context,
        headers=extra,
        connect_timeout=connect_timeout,
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        buffer=buffer,
        receive_buffer_size=receive_buffer_size,
    )
    try:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    with session._run_scope:
                        await session._run()
                finally:
                    session._end(SessionClosed("session ended"))

            nursery.start_soon(run)
            try:
                yield session
            finally:
                with trio.CancelScope(shield=True):
                    await session.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the body raised (SessionClosed from the iteration,
        # the application's own errors).  The run task never raises, so a group of one
        # is the body's exception: hand it back as it was raised.
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise
