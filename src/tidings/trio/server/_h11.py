"""HTTP/1.1 connections: one task per connection, h11 for the protocol.

Requests are handled one after another (keep-alive).  Timeouts protect the
connection: the idle timeout between requests, the header timeout from the first
byte of a request head to its end (slowloris: ``408``), a deadline and a minimum
rate for the request body (``408``), a write timeout for clients that stop
reading.  A request whose framing is ambiguous (``Content-Length`` and
``Transfer-Encoding`` both) or broken (a malformed chunk) gets ``400``, and the
connection closes: it could not be trusted to find the next request.  While a
streaming response is open a second task reads the socket only to notice that the
client went away.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING

import h11
import trio

from tidings.history import StoredEvent
from tidings.trio.hub import LiveEvent, Subscription
from tidings.trio.server._http import (
    BodyTooLarge,
    ConnectionInfo,
    Headers,
    Request,
    Responder,
    StreamWriter,
    UpgradeNotSupported,
    content_length,
)
from tidings.trio.server._socket_sink import SocketSink, write_some

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["H11Connection", "H11Responder"]

log = logging.getLogger("tidings.server")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# Bytes queued in a direct sink before it writes without waiting for the publisher
# to yield.
# Bytes a client may send while a streaming response runs (a pipelined request)
# before it counts as abuse and the connection closes.
_MAX_EXTRA_BYTES = 64 * 1024
# After an error answer, read and discard what the client still sends for this long
# (and at most this much) so that closing does not reset the answer away.
_LINGER_TIME = 1.0
_LINGER_BYTES = 1024 * 1024
# Wire bytes of recent answers made by h11 (see H11Responder.respond_nowait), keyed
# by (status, headers, body); only answers up to this size are kept, and the cache
# starts over beyond this many entries.
_WIRE_CACHE_MAX_SIZE = 16 * 1024
_WIRE_CACHE_MAX_ENTRIES = 64

_WireKey = tuple[int, tuple[tuple[bytes, bytes], ...], bytes]


class H11Caches:
    """What every HTTP/1.1 connection of one server (:class:`App`) shares: the wire
    bytes of recent answers (see :meth:`H11Responder.respond_nowait`) and the
    chunk-framed versions of event encoders (so that an event's chunk is built once
    for every stream)."""

    __slots__ = ("chunked_encoders", "wire")

    def __init__(self) -> None:
        self.wire: dict[_WireKey, bytes] = {}
        self.chunked_encoders: dict[
            Callable[[StoredEvent], bytes], Callable[[StoredEvent], bytes]
        ] = {}

    def chunked(self, encoder: Callable[[StoredEvent], bytes]) -> Callable[[StoredEvent], bytes]:
        """*encoder*, framing what it gives as one HTTP/1.1 chunk."""
        framed = self.chunked_encoders.get(encoder)
        if framed is None:

            def framed(stored: StoredEvent) -> bytes:
                data = encoder(stored)
                return b"%x\r\n%b\r\n" % (len(data), data)

            self.chunked_encoders[encoder] = framed
        return framed


class _Gone(trio.BrokenResourceError):
    """The client went away or broke the protocol in the middle of a request."""


class H11Connection:
    """Serve HTTP/1.1 on one stream until it closes."""

    __slots__ = (
        "_aborted",
        "_body_error",
        "_body_received",
        "_body_start",
        "_broken",
        "_close_after",
        "_extra",
        "_fd",
        "_gone",
        "_idle_scope",
        "_send_scope",
        "_watching",
        "app",
        "config",
        "conn",
        "info",
        "stream",
    )

    def __init__(
        self, stream: trio.abc.Stream, app: App, info: ConnectionInfo, initial: bytes = b""
    ) -> None:
        self.stream = stream
        self.app = app
        self.config = app.config
        self.info = info
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_header_size
        )
        if initial:
            self.conn.receive_data(initial)
        self._broken = False
        self._gone = False
        self._close_after = info.rejecting
        self._idle_scope: trio.CancelScope | None = None
        self._watching = False
        self._send_scope: trio.CancelScope | None = None
        self._aborted = False
        self._extra = 0
        # When the current request's head ended, the bytes received since (for the
        # body's deadline and rate), and the status to answer when its body failed.
        self._body_start = 0.0
        self._body_received = 0
        self._body_error: int | None = None
        # The file descriptor of a plain TCP stream, for send_bytes' fast path.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    # -- lifecycle -----------------------------------------------------------------

    def drain(self) -> None:
        """Finish the current request (if any), then close; close at once if idle."""
        self._close_after = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self) -> None:
        """Serve requests until the connection closes."""
        self.app.connections.add(self)
        try:
            while True:
                event = await self._read_head()
                if event is None:
                    return
                self._body_start = trio.current_time()
                self._body_received = len(self.conn.trailing_data[0])
                request = self._make_request(event)
                responder = H11Responder(self, request)
                if request is None:
                    # h11 frames the answer by the request's method: none for a HEAD.
                    responder.is_head = event.method == b"HEAD"
                    self.app.metrics.reject(400)
                    await responder.respond(400, [], b"Bad request target\n")
                else:
                    await self.app.handle(request, responder)
                if not await self._end_cycle(responder):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.app.connections.discard(self)

    async def _end_cycle(self, responder: H11Responder) -> bool:
        """After a response: start the next request, or close (lingering if needed)."""
        status = self._body_error
        if status is not None:
            # The body was refused (late, or malformed) while a handler read it.
            if not responder.started and not self._broken and not self._gone:
                await self._send_error(status)
            return False
        if self._broken or self._gone:
            return False
        conn = self.conn
        if not responder.started:
            await responder.respond(500, [], b"Internal server error\n")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            if not self._close_after:
                conn.start_next_cycle()
                return True
            # The answer went out promising keep-alive (say, written by a publisher
            # just before a drain began): end cleanly, so the client's next request
            # meets an end of stream it retries rather than a reset.
            await self._linger()
            return False
        if conn.our_state in (h11.DONE, h11.MUST_CLOSE) and conn.their_state not in (
            h11.DONE,
            h11.MUST_CLOSE,
            h11.CLOSED,
        ):
            await self._linger()
        return False

    async def _linger(self) -> None:
        # The client may still be sending a body we refused; closing now would make
        # the kernel reset the connection and possibly destroy our answer.  Signal
        # the end of our side first, so the client sees the answer is complete.
        with trio.move_on_after(_LINGER_TIME):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            received = 0
            while received < _LINGER_BYTES:
                data = await self.stream.receive_some(self.config.receive_size)
                if not data:
                    break
                received += len(data)

    # -- reading -------------------------------------------------------------------

    async def _read_head(self) -> h11.Request | None:
        config = self.config
        partial = bool(self.conn.trailing_data[0])
        now = trio.current_time()
        idle_deadline = now + config.idle_timeout
        head_deadline = now + config.header_timeout if partial else math.inf
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("bad request from %s: %s", self.info.client, exc)
                await self._send_error(exc.error_status_hint)
                return None
            if event is h11.NEED_DATA:
                if self._close_after and not partial:
                    return None
                with trio.CancelScope(
                    deadline=head_deadline if partial else idle_deadline
                ) as scope:
                    if not partial:
                        self._idle_scope = scope
                    data = await self.stream.receive_some(config.receive_size)
                self._idle_scope = None
                if scope.cancelled_caught:
                    if partial:
                        await self._send_error(408)
                    return None
                self.conn.receive_data(bytes(data))
                if data and not partial:
                    partial = True
                    head_deadline = trio.current_time() + config.header_timeout
                continue
            if isinstance(event, h11.Request):
                # h11 only bounds heads that arrive incomplete; bound complete ones too.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > config.max_header_size:
                    await self._send_error(431)
                    return None
                names = {name for name, _ in event.headers}
                if b"transfer-encoding" in names and b"content-length" in names:
                    # h11 would go by Transfer-Encoding; a proxy in front may have
                    # gone by Content-Length.  RFC 9112 §6.1: close after answering.
                    log.debug(
                        "request from %s with both Content-Length and Transfer-Encoding",
                        self.info.client,
                    )
                    await self._send_error(400)
                    return None
                return event
            return None  # ConnectionClosed (or PAUSED, which cannot happen here)

    def skip_unread_body(self) -> bool:
        """Discard the request body already received; whether it was complete."""
        conn = self.conn
        while conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or not isinstance(event, h11.Data | h11.EndOfMessage):
                return False
        return True

    def _body_deadline(self) -> float:
        """When the current request's body must have arrived (see ServerConfig)."""
        config = self.config
        deadline = self._body_start + config.body_timeout
        if config.body_min_rate:
            earned = config.header_timeout + self._body_received / config.body_min_rate
            deadline = min(deadline, self._body_start + earned)
        return deadline

    async def _next_body_event(self) -> h11.Data | h11.EndOfMessage:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                # A malformed body (a bad chunk): answered 400 after the handler.
                log.debug("bad request body from %s: %s", self.info.client, exc)
                self._body_error = exc.error_status_hint
                raise _Gone(str(exc)) from None
            if event is h11.NEED_DATA:
                with trio.move_on_at(self._body_deadline()) as scope:
                    data = await self.stream.receive_some(self.config.receive_size)
                if scope.cancelled_caught:
                    log.debug("request body from %s not received in time", self.info.client)
                    self._body_error = 408
                    raise _Gone("request body not received in time")
                if not data:
                    self._gone = True
                    raise _Gone("connection closed while reading the body")
                self._body_received += len(data)
                self.conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Data | h11.EndOfMessage):
                return event
            self._gone = True
            raise _Gone("connection closed while reading the body")

    def _make_request(self, event: h11.Request) -> Request | None:
        target = event.target
        if not target.startswith(b"/"):
            if target == b"*":
                target = b"*"
            else:
                scheme_end = target.find(b"://")
                if scheme_end < 0:
                    return None
                slash = target.find(b"/", scheme_end + 3)
                target = target[slash:] if slash >= 0 else b"/"
        path, _, query = target.partition(b"?")
        return Request(
            method=event.method.decode("ascii"),
            path=path.decode("ascii"),
            query=query.decode("ascii"),
            headers=event.headers,
            http_version=event.http_version.decode("ascii"),
            connection=self.info,
        )

    # -- writing -------------------------------------------------------------------

    async def send_events(self, *events: h11.Event) -> None:
        """Serialise *events* with h11 and write them in one go."""
        parts = []
        try:
            for event in events:
                data = self.conn.send(event)
                if data:
                    parts.append(data)
        except h11.LocalProtocolError:
            self._broken = True
            raise
        await self.send_bytes(b"".join(parts))

    async def send_bytes(self, data: bytes) -> None:
        """Write raw bytes within the write timeout; a failure breaks the connection.

        On a plain socket the bytes are first offered to the kernel directly, which
        is all it takes when the socket buffer has room (the common case for event
        streams); only the rest goes through :meth:`trio.abc.SendStream.send_all`.
        """
        if self._broken or self._aborted:
            raise trio.BrokenResourceError("connection broken or response aborted")
        view: bytes | memoryview = data
        if self._fd >= 0:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = write_some(self._fd, data)
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"write failed: {exc}") from exc
            if sent == len(data):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            view = memoryview(data)[sent:]
        try:
            with trio.move_on_after(self.config.write_timeout) as scope:
                self._send_scope = scope
                await self.stream.send_all(view)
        except BaseException:
            self._broken = True
            raise
        finally:
            self._send_scope = None
        if scope.cancelled_caught:
            self._broken = True
            raise trio.BrokenResourceError(
                "response aborted" if self._aborted else "write timed out"
            )

    def abort_sending(self) -> None:
        """Fail the current and every later write (callable from any task)."""
        self._aborted = True
        if self._send_scope is not None:
            self._send_scope.cancel()

    async def _send_error(self, status: int) -> None:
        """Answer a request we could not parse (or did not get in time), then close."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        self.app.metrics.reject(status)
        body = _REASONS.get(status, b"Error") + b"\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await self.send_events(
                h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await self._linger()

    # -- disconnect watching -------------------------------------------------------

    @asynccontextmanager
    async def watch_disconnect(self) -> AsyncIterator[None]:
        """Cancel the block when the client closes (or misbehaves) meanwhile.

        A second task reads the stream for as long as the block runs; the nursery
        is local to the block, and an exception of the block comes out as itself,
        not wrapped in an exception group.
        """
        if self._watching:
            yield
            return
        self._watching = True
        try:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as body_scope:
                    nursery.start_soon(self._watch, body_scope)
                    try:
                        yield
                    finally:
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _only(group) from None
        finally:
            self._watching = False

    async def _watch(self, body_scope: trio.CancelScope) -> None:
        await self.read_until_gone()
        body_scope.cancel()

    async def wait_gone(self) -> None:
        """Like :meth:`read_until_gone` on a plain socket, with fewer layers.

        This is what an idle event stream waits in, so its stack is kept short
        (:meth:`_H11Writer.idle` inlines this loop around :meth:`absorb_readable`).
        """
        socket = self.stream.socket  # type: ignore[attr-defined]
        try:
            while not self._gone:
                await trio.lowlevel.wait_readable(socket)
                self.absorb_readable()
        except OSError:
            self._gone = True

    def absorb_readable(self) -> None:
        """Read what a readable idle socket holds; mark the peer gone at its end.

        Bytes after the request are kept for h11 (a pipelined request) up to
        ``_MAX_EXTRA_BYTES``; more, an end of stream or an error means gone.
        """
        try:
            data = os.read(self._fd, self.config.receive_size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._extra += len(data)
        if not data or self._extra > _MAX_EXTRA_BYTES:
            self._gone = True
            return
        self.conn.receive_data(data)

    async def read_until_gone(self) -> None:
        """Read until the client closes (or misbehaves); then mark it gone.

        Bytes it sends meanwhile are a pipelined next request: kept for later,
        within reason.
        """
        try:
            while not self._gone:
                data = await self.stream.receive_some(self.config.receive_size)
                if not data:
                    break
                self._extra += len(data)
                if self._extra > _MAX_EXTRA_BYTES:
                    break
                self.conn.receive_data(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._gone = True


class _DirectSink(SocketSink):
    """Writes live events straight to an idle event stream's socket (see DirectSink).

    Used by the publisher's task (or the hub's flusher) while the connection's own
    task waits for the client to close; an interruption cancels that wait.
    """

    __slots__ = ("_encoder", "scope")

    def __init__(self, fd: int, encoder: Callable[[StoredEvent], bytes]) -> None:
        super().__init__(fd)
        self._encoder = encoder
        self.scope: trio.CancelScope | None = None

    def deliver(self, item: LiveEvent) -> bool:
        return self.queue(item.encoded(self._encoder))

    def _wake(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class _H11Writer(StreamWriter, AbstractAsyncContextManager["_H11Writer"]):
    """The body of a streaming response, and the block it is written in.

    A plain class rather than a generator-based context manager: one of these
    lives as long as each event stream, so it is kept small.
    """

    __slots__ = ("_chunked", "_head", "_responder", "_watch", "aborted")

    def __init__(self, responder: H11Responder, head: h11.Response) -> None:
        self._responder = responder
        self._head: h11.Response | None = head
        self._watch: AbstractAsyncContextManager[None] | None = None
        # h11 frames a body of unknown length with chunked encoding for HTTP/1.1
        # clients (else it is delimited by closing); after the head, the writer
        # frames chunks itself, which h11 allows (it does not count them).
        version = responder.connection.conn.their_http_version
        self._chunked = version is not None and version >= b"1.1"
        self.aborted = False

    async def send(self, data: bytes) -> None:
        connection = self._responder.connection
        if connection._gone:
            raise trio.BrokenResourceError("client went away")
        head = self._head
        if self._responder.is_head:
            if head is not None:
                self._head = None
                await connection.send_events(head)
            return
        if head is not None:
            self._head = None
            await connection.send_events(head, h11.Data(data=data))
        elif data:
            if self._chunked:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            await connection.send_bytes(data)

    def abort(self) -> None:
        self.aborted = True
        self._responder.connection.abort_sending()

    async def idle(
        self, subscription: Subscription, encoder: Callable[[StoredEvent], bytes]
    ) -> None:
        connection = self._responder.connection
        if connection._fd < 0 or connection._watching or self._head is not None:
            await subscription.wait()
            return
        # One task per connection: while idle it reads the socket (to notice the
        # client leaving) and the publisher writes events to it directly.
        caches = connection.app.h11_caches
        sink = _DirectSink(connection._fd, caches.chunked(encoder) if self._chunked else encoder)
        subscription.sink = sink
        try:
            with trio.CancelScope() as scope:
                sink.scope = scope
                # connection.wait_gone(), inlined: thousands of idle streams wait
                # here, and one coroutine frame less is ~2 % of each one's memory.
                socket = connection.stream.socket  # type: ignore[attr-defined]
                try:
                    while not connection._gone:
                        await trio.lowlevel.wait_readable(socket)
                        connection.absorb_readable()
                except OSError:
                    connection._gone = True
        finally:
            subscription.detach(sink)
            sink.scope = None
            # Even when cancelled: the hub's flusher may still hold the sink, and
            # must not write to this fd once the connection closed (it may be reused).
            unsent = sink.take()
        if unsent and not sink.broken:
            await connection.send_bytes(unsent)
        if sink.broken or connection._gone:
            connection._broken = True
            raise trio.BrokenResourceError("client went away")

    async def __aenter__(self) -> _H11Writer:
        connection = self._responder.connection
        if connection._fd < 0:
            # Plain sockets notice a disconnect in idle(); others need a watcher.
            self._watch = connection.watch_disconnect()
            await self._watch.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        connection = self._responder.connection
        suppress = False
        if self._watch is not None:
            watch, self._watch = self._watch, None
            suppress = bool(await watch.__aexit__(exc_type, exc, tb))
        if exc is not None and not suppress:
            connection._broken = True
            return False
        if self.aborted or connection._gone or connection._broken:
            connection._broken = True
        else:
            await self.finish()
        return suppress

    async def finish(self) -> None:
        events: list[h11.Event] = []
        if self._head is not None:
            events.append(self._head)
            self._head = None
        events.append(h11.EndOfMessage())
        await self._responder.connection.send_events(*events)


class H11Responder(Responder):
    """How a handler answers a request on an :class:`H11Connection`."""

    __slots__ = (
        "_nowait",
        "_nowait_ok",
        "_nowait_rest",
        "_nowait_told",
        "_started",
        "connection",
        "is_head",
        "request",
    )

    def __init__(self, connection: H11Connection, request: Request | None) -> None:
        self.connection = connection
        self.request = request
        self.is_head = request is not None and request.method == "HEAD"
        self._started = False
        # Whether respond_nowait sent a response (that finish_nowait must complete),
        # whether h11 has seen it already, and the bytes the socket did not take.
        self._nowait = False
        self._nowait_told = False
        self._nowait_rest = b""
        self._nowait_ok: bool | None = None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def client_gone(self) -> bool:
        return self.connection._gone

    def _head(self, status: int, headers: Headers) -> h11.Response:
        connection = self.connection
        if not connection.skip_unread_body():
            # The body was not (fully) read: this connection cannot be reused.
            connection._close_after = True
        if connection.app.draining:
            connection._close_after = True
        if connection._close_after and all(name != b"connection" for name, _ in headers):
            headers = [*headers, (b"connection", b"close")]
        self._started = True
        return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))

    def _events(self, status: int, headers: Headers, body: bytes) -> list[h11.Event]:
        """What :meth:`respond` hands h11 (*headers* with the length already in)."""
        head = self._head(status, headers)
        if body and not self.is_head:
            return [head, h11.Data(data=body), h11.EndOfMessage()]
        return [head, h11.EndOfMessage()]

    def can_respond_nowait(self) -> bool:
        """Whether this request is of the kind :meth:`respond_nowait` may answer.

        Worked out once (in the connection's task, ideally: it reads the request's
        headers and the rest of its body), so that the publisher need not.
        """
        ok = self._nowait_ok
        if ok is None:
            request = self.request
            connection = self.connection
            ok = (
                request is not None
                and request.method == "GET"
                and request.http_version == "1.1"
                and request.header(b"connection") is None
                and connection._fd >= 0
                and connection.skip_unread_body()
                and connection.conn.their_state is h11.DONE
            )
            self._nowait_ok = ok
        return ok

    def respond_nowait(self, status: int, headers: Headers, body: bytes = b"") -> bool:
        """:meth:`respond` without waiting, from any task; whether it was done.

        For a held request answered by the publisher's task while the connection's
        own task is parked: the common case only (a plain socket, ``GET`` over
        HTTP/1.1 without a ``Connection`` header, the request fully read, the
        connection staying open).  Then h11 turns identical answers into identical
        bytes, so the bytes it made for an identical answer on any connection are
        written again, and this connection's h11 is told later, by
        :meth:`finish_nowait`, which the connection's task must await before
        anything else.  The bytes go to the socket at once; what it does not take is
        written by :meth:`finish_nowait`.
        """
        connection = self.connection
        conn = connection.conn
        if (
            not self.can_respond_nowait()
            or self._started
            or connection._broken
            or connection._aborted
            or connection._gone
            or connection._close_after
            or connection._watching
            or connection.app.draining
            or conn.our_state is not h11.SEND_RESPONSE
            or conn.their_state is not h11.DONE
        ):
            return False
        # Few objects made here outlive the call: thousands of calls in a row should
        # not make the garbage collector run a full collection in the middle.
        key = (status, tuple(headers), body)
        wire = connection.app.h11_caches.wire
        data = wire.get(key)
        told = data is None
        if data is None:
            # h11 makes these bytes (and moves this connection along) itself.
            parts: list[bytes] = []
            try:
                for event in self._events(status, [*headers, *content_length(status, body)], body):
                    part = conn.send(event)
                    if part:
                        parts.append(part)
            except h11.LocalProtocolError:
                connection._broken = True
                return False
            data = b"".join(parts)
            if len(data) <= _WIRE_CACHE_MAX_SIZE:
                if len(wire) >= _WIRE_CACHE_MAX_ENTRIES:
                    wire.clear()
                wire[key] = data
        self._started = True
        try:
            sent = write_some(connection._fd, data)
        except OSError:
            connection._broken = True
            sent = len(data)
        self._nowait = True
        self._nowait_told = told
        self._nowait_rest = data[sent:] if sent < len(data) else b""
        return True

    @property
    def nowait_pending(self) -> bool:
        """Whether :meth:`respond_nowait` sent a response :meth:`finish_nowait` must end."""
        return self._nowait

    async def finish_nowait(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """In the connection's task: complete what :meth:`respond_nowait` started.

        Takes the same arguments again (keeping them would keep thousands of
        objects alive through a wake-up).
        """
        if not self._nowait:
            raise RuntimeError("no response sent by respond_nowait")
        self._nowait = False
        told, rest = self._nowait_told, self._nowait_rest
        self._nowait_rest = b""
        connection = self.connection
        if connection._broken:
            raise trio.BrokenResourceError("write failed")
        if not told:
            # The events respond_nowait() made those bytes from (as respond() would;
            # no decision is taken again: the bytes are on the wire already).
            reason = _REASONS.get(status, b"")
            headers = [*headers, *content_length(status, body)]
            events: list[h11.Event] = [
                h11.Response(status_code=status, headers=headers, reason=reason)
            ]
            if body:
                events.append(h11.Data(data=body))
            events.append(h11.EndOfMessage())
            try:
                for event in events:
                    connection.conn.send(event)
            except h11.LocalProtocolError:
                connection._broken = True
                raise
        if rest:
            await connection.send_bytes(rest)
        else:
            await trio.lowlevel.checkpoint()

    async def read_body(self, max_size: int) -> bytes:
        conn = self.connection.conn
        length = self.request.header(b"content-length") if self.request is not None else None
        if length is not None and length.isdigit() and int(length) > max_size:
            raise BodyTooLarge(f"body of {int(length)} bytes exceeds {max_size}")
        if conn.they_are_waiting_for_100_continue:
            await self.connection.send_events(
                h11.InformationalResponse(status_code=100, headers=[])
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.connection._next_body_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            size += len(event.data)
            if size > max_size:
                raise BodyTooLarge(f"body exceeds {max_size} bytes")
            chunks.append(bytes(event.data))

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        await self.connection.send_events(
            *self._events(status, [*headers, *content_length(status, body)], body)
        )

    def open_stream(
        self, status: int, headers: Headers
    ) -> AbstractAsyncContextManager[StreamWriter]:
        return _H11Writer(self, self._head(status, headers))

    def watch_disconnect(self) -> AbstractAsyncContextManager[None]:
        return self.connection.watch_disconnect()

    @property
    def can_upgrade(self) -> bool:
        return self.request is not None and self.request.header(b"upgrade") is not None

    async def upgrade(self, headers: Headers) -> tuple[trio.abc.Stream, bytes]:
        if not self.can_upgrade:
            raise UpgradeNotSupported("the request did not ask to upgrade")
        self._started = True
        connection = self.connection
        await connection.send_events(h11.InformationalResponse(status_code=101, headers=headers))
        connection._broken = True  # never reused for HTTP after the handler returns
        return connection.stream, connection.conn.trailing_data[0]


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a nursery wrapped (an exception group only if there were several)."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group
