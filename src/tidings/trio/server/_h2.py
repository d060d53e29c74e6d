"""HTTP/2 connections: h2 for the protocol, one task per stream.

The connection task reads frames and dispatches them; a writer task is the only
one that writes to the socket, so a handler cancelled mid-write can never corrupt
the connection.  Each stream sends only what its flow-control window allows and
waits otherwise, so a client that stops reading one stream stalls that stream
alone; its subscriber then overflows and the stream is reset, which keeps memory
bounded.  Handlers' ``send`` returns once the writer handed the bytes to the
socket, which gives every stream TCP back-pressure too.

Request bodies get the same treatment in the other direction: a stream's window
is handed back only as ``read_body`` takes the data, so what a handler does not
read (an SSE ``GET`` that carries a body) is capped by the initial window, and
once the response has started further data is dropped unbuffered.  The
connection window is handed back at once so that one such stream cannot starve
the others.  A request body that does not arrive in time (``body_timeout``,
``body_min_rate``) gets ``408`` and its stream is reset.

No frame sequence from a client raises out of here: a protocol error gets
``GOAWAY`` with h2's error code, an error of one stream stays on that stream,
and floods (stream resets as in CVE-2023-44487, SETTINGS, PINGs beyond their
budget per ``flood_interval``) get ``GOAWAY`` ``ENHANCE_YOUR_CALM``.  What the
client did wrong is logged at most ``_LOG_LINES`` times per connection.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from h2.utilities import HeaderValidationFlags, validate_headers

from tidings.errors import LocalProtocolError
from tidings.history import StoredEvent
from tidings.trio._sync import Waiter
from tidings.trio.hub import LiveEvent, Subscription
from tidings.trio.server._http import (
    BodyTooLarge,
    ConnectionInfo,
    Headers,
    Request,
    Responder,
    StreamWriter,
    content_length,
)
from tidings.trio.server._socket_sink import SocketSink, write_some

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["PREFACE", "H2Connection"]

log = logging.getLogger("tidings.server")

# How h2 checks the header block of a request received by a server.
_REQUEST_HEADERS = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)

_TEXT = (b"content-type", b"text/plain; charset=utf-8")

#: The client connection preface that starts every HTTP/2 connection.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Stream data queued for the writer beyond which a sending stream waits until it
# was written (below it, streams go on and their frames share one write).
_FLUSH_HIGH_WATER = 64 * 1024
# Log lines about a client's misbehaviour per connection; further ones are dropped.
_LOG_LINES = 5
# After a GOAWAY for an error, read and discard what the client still sends for
# this long (and at most this much) so that closing does not reset the GOAWAY away.
_LINGER_TIME = 1.0
_LINGER_BYTES = 1024 * 1024
# The kinds of frames counted against flooding (ServerConfig.max_stream_resets...).
_RESETS, _SETTINGS, _PINGS = 0, 1, 2
_FLOOD_NAMES = ("stream resets", "SETTINGS frames", "PING frames")
# Connection-specific header fields are forbidden in HTTP/2 (RFC 9113 §8.2.2).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    }
)


class H2Connection:
    """Serve HTTP/2 on one stream until it closes."""

    def __init__(
        self, stream: trio.abc.Stream, app: App, info: ConnectionInfo, initial: bytes = b""
    ) -> None:
        self.stream = stream
        self.app = app
        self.config = config = app.config
        self.info = info
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Checked per request in _open_stream instead: h2 would treat a
                # malformed header block as an error of the whole connection.
                validate_inbound_headers=False,
                normalize_inbound_headers=True,
            )
        )
        # MAX_CONCURRENT_STREAMS goes in a second SETTINGS frame (see run()): a
        # value set here would be enforced by h2 before the client could know it,
        # as a connection error; until acknowledged we refuse extra streams ourselves.
        self.h2.local_settings = Settings(
            client=False,
            initial_values={SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_size},
        )
        self._initial = initial
        # The file descriptor of a plain TCP stream, for the writer's fast path.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.streams: dict[int, H2Stream] = {}
        # How many of them are pushed streams (ours, even ids: not the client's to count).
        self._pushed = 0
        self._nursery: trio.Nursery | None = None
        self._writer_waiter = Waiter()
        self._flushed = trio.lowlevel.ParkingLot()
        self._queued = 0  # bumped whenever something may have been queued in h2
        self._sent = 0  # the value of _queued when the writer last emptied h2
        #: Stream data queued in h2 since the writer last took its output.
        self.unsent = 0
        # Whether the writer waits for work, and bytes a direct write left over
        # (they go out before anything else; see write_now).
        self._writer_idle = False
        self._leftover = b""
        self._read_scope: trio.CancelScope | None = None
        # When a connection without open streams gets closed.  Only the end of its
        # last stream moves it: PINGs and SETTINGS do not keep a connection alive.
        self._idle_deadline = math.inf
        self._goaway_sent = False
        self._draining = False
        self._broken = False
        self._closing = False
        self._peer_done = False
        # Connection window to hand back for data buffered by streams (see _receive).
        self._credit = 0
        # Whether we sent GOAWAY for the client's fault (then we linger on closing,
        # as we do whenever we close first).
        self._linger = False
        # Frames counted against flooding in the current interval, and its end.
        self._flood_counts = [0, 0, 0]
        self._flood_end = -math.inf
        self._flood_limits = (
            config.max_stream_resets,
            config.max_settings_frames,
            config.max_ping_frames,
        )
        self._log_lines = _LOG_LINES
        # The highest stream the client opened that we looked at (for GOAWAY).
        self._last_stream = 0

    # -- lifecycle -----------------------------------------------------------------

    def drain(self) -> None:
        """Refuse new streams, and close (with GOAWAY) once the open ones ended.

        The GOAWAY is not sent first: h2-based clients (httpx, ...) treat any frame
        after a GOAWAY as a protocol error, which would lose the streams' last data.
        """
        if self._draining or self._broken:
            return
        self._draining = True
        self._maybe_stop_reading()

    async def run(self) -> None:
        """Serve streams until the connection closes."""
        self.app.connections.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                try:
                    await self._serve()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.app.connections.discard(self)

    async def _serve(self) -> None:
        # A connection beyond the limit gets one request (a health probe, or a
        # 503), which must come as soon as a request head would; it drains after.
        wait = self.config.header_timeout if self.info.rejecting else self.config.idle_timeout
        self._idle_deadline = trio.current_time() + wait
        self.h2.initiate_connection()
        self.h2.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.config.max_concurrent_streams}
        )
        if self._initial:
            data, self._initial = self._initial, b""
            self._receive(data)
        self.wake_writer()
        if not self._peer_done:
            await self._read_loop()
        await self._close_gracefully()

    async def _close_gracefully(self) -> None:
        # From here on h2 refuses stream frames: streams still running must fail.
        self._closing = True
        self._cancel_all_streams()
        if self._broken:
            return
        if not self._goaway_sent:
            with suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
        self.wake_writer()
        with trio.move_on_after(self.config.write_timeout):
            await self.wait_flushed()
        if self._linger or not self._peer_done:
            await self._linger_a_while()

    async def _linger_a_while(self) -> None:
        # The client may still be sending (frames crossing our GOAWAY, or the rest of
        # a flood); closing with unread data would make the kernel reset the
        # connection, and the GOAWAY and the last answers could be lost.
        with trio.move_on_after(_LINGER_TIME):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            received = 0
            while received < _LINGER_BYTES:
                data = await self.stream.receive_some(self.config.receive_size)
                if not data:
                    break
                received += len(data)

    def _note(self, level: int, message: str, *args: object) -> None:
        """Log something the client did wrong, at most ``_LOG_LINES`` times."""
        if self._log_lines <= 0:
            return
        self._log_lines -= 1
        if not self._log_lines:
            message += " (no more messages about this connection)"
        log.log(level, message, *args)

    def _maybe_stop_reading(self) -> None:
        if not self.streams:
            self._idle_deadline = trio.current_time() + self.config.idle_timeout
        scope = self._read_scope
        if scope is None:
            return
        if self.streams:
            scope.deadline = math.inf
        elif self._draining:
            scope.cancel()
        else:
            scope.deadline = self._idle_deadline

    # -- reading -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        config = self.config
        while not self._peer_done and not self._broken:
            if not self.streams and self._draining:
                return
            deadline = math.inf if self.streams else self._idle_deadline
            with trio.CancelScope(deadline=deadline) as scope:
                self._read_scope = scope
                data = await self.stream.receive_some(config.receive_size)
            self._read_scope = None
            if scope.cancelled_caught:
                if self.streams:
                    continue  # a stream opened meanwhile: the idle timeout is off
                return  # idle timeout, or drained
            if not data:
                self._peer_done = True
                self._cancel_all_streams()
                return
            self._receive(bytes(data))
            self.wake_writer()
            if self._sent != self._queued:
                # Back-pressure: do not read (and queue answers to pings, settings...)
                # faster than the client takes our output.
                await self.wait_flushed()

    def _receive(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the right error code.
            self._note(logging.DEBUG, "HTTP/2 protocol error from %s: %s", self.info.client, exc)
            self._stop_for_error()
            return
        except Exception as exc:
            # h2 should raise ProtocolError for anything a client sends; should it
            # fail otherwise, this connection ends, not the server.
            self._note(logging.INFO, "HTTP/2 failure on data from %s: %r", self.info.client, exc)
            with suppress(Exception):
                self.h2.close_connection(
                    ErrorCodes.INTERNAL_ERROR, last_stream_id=self._last_stream
                )
            self._stop_for_error()
            return
        for event in events:
            self._dispatch(event)
            if self._peer_done:
                break  # GOAWAY received, or sent for a flood: the rest is moot
        credit, self._credit = self._credit, 0
        if credit:
            with suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(credit)

    def increment_stream_window(self, stream_id: int, size: int) -> None:
        """Let the client send *size* more bytes on a stream (its data was consumed)."""
        with suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.increment_flow_control_window(size, stream_id)
        self.wake_writer()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id
            size = event.flow_controlled_length
            stream = self.streams.get(stream_id)
            if stream is not None and stream._feed(event.data, size):
                # Buffered: the stream's window waits for read_body; the
                # connection's is handed back (in one go, after the batch).
                self._credit += size
            elif size:
                # Dropped, or nobody is left to read it: hand both windows back.
                self.h2.acknowledge_received_data(size, stream_id)
        elif isinstance(event, h2.events.RequestReceived):
            self._open_stream(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._end_body()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                # Rapid reset: the stream cost a task, but not an answer.  Resets
                # of streams answered (or refused: counted then) are not counted.
                # A pushed stream the client declines (it has the resource) is not
                # counted either: the stream was our idea.
                if (
                    event.remote_reset
                    and not stream._started
                    and not stream._gone
                    and stream.stream_id % 2
                ):
                    self._count(_RESETS)
                stream._peer_reset()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._window.wake()
            else:
                self._wake_windows()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_windows()
            self._count(_SETTINGS)
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self._count(_SETTINGS)
        elif isinstance(event, h2.events.PingReceived):
            self._count(_PINGS)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._peer_done = True
            self._cancel_all_streams()

    def _count(self, kind: int) -> None:
        """Count one frame of *kind*; answer a flood with GOAWAY ENHANCE_YOUR_CALM.

        Counts start over every ``flood_interval`` (fixed windows: a burst across
        a window boundary may reach twice the limit, which still bounds the rate).
        """
        counts = self._flood_counts
        now = trio.current_time()
        if now >= self._flood_end:
            self._flood_end = now + self.config.flood_interval
            counts[:] = [0, 0, 0]
        counts[kind] += 1
        if counts[kind] <= self._flood_limits[kind] or self._peer_done:
            return
        self._note(
            logging.INFO,
            "HTTP/2 flood from %s: more than %d %s within %g s; GOAWAY ENHANCE_YOUR_CALM",
            self.info.client,
            self._flood_limits[kind],
            _FLOOD_NAMES[kind],
            self.config.flood_interval,
        )
        with suppress(h2.exceptions.ProtocolError):
            # The frames after this one were not looked at: the streams they
            # opened were not processed, which last_stream_id tells the client.
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._last_stream)
        self._stop_for_error()

    def _stop_for_error(self) -> None:
        """After a GOAWAY for the client's fault: stop reading, end every stream."""
        self._goaway_sent = True
        self._peer_done = True
        self._linger = True
        self._cancel_all_streams()

    def _wake_windows(self) -> None:
        for stream in self.streams.values():
            stream._window.wake()

    def _cancel_all_streams(self) -> None:
        for stream in self.streams.values():
            stream._peer_reset()

    def _open_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        self._last_stream = max(self._last_stream, stream_id)
        if (
            self._draining
            or self._nursery is None
            or len(self.streams) - self._pushed >= self.config.max_concurrent_streams
        ):
            # The client may have reset it already (later in this batch of frames):
            # then h2 has closed it, and there is nothing left to refuse.
            with suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._count(_RESETS)
            self.app.metrics.rejected["limit"] += 1
            return
        raw = event.headers or []
        complete = event.stream_ended is not None
        try:
            raw = list(validate_headers(raw, _REQUEST_HEADERS))
        except h2.exceptions.ProtocolError as exc:
            # A malformed request is an error of its stream alone (RFC 9113 §8.1.1).
            self._refuse(stream_id, 400, f"Bad request: {exc}\n".encode(), complete)
            return
        if sum(len(name) + len(value) + 32 for name, value in raw) > self.config.max_header_size:
            # RFC 9113 §8.2.3 sizes a field as name + value + 32 octets (the limit
            # was advertised in SETTINGS_MAX_HEADER_LIST_SIZE).
            self._refuse(stream_id, 431, b"Request Header Fields Too Large\n", complete)
            return
        request = self._make_request(raw)
        stream = H2Stream(self, stream_id, request, trio.current_time())
        if event.stream_ended is not None:
            stream._body_done = True
        self.streams[stream_id] = stream
        self._nursery.start_soon(self._run_stream, stream)

    def _refuse(self, stream_id: int, status: int, body: bytes, request_complete: bool) -> None:
        """Answer a request refused before any handler saw it, on its stream alone."""
        self.app.metrics.reject(status)
        head = [
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        with suppress(h2.exceptions.ProtocolError):
            self.h2.send_headers(stream_id, head)
            self.h2.send_data(stream_id, body, end_stream=True)
            if not request_complete:
                # A complete answer before the request ended: stop its body.
                self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _make_request(self, raw: Iterable[tuple[bytes, bytes]]) -> Request | None:
        method = path = authority = None
        headers: Headers = []
        has_host = False
        for name, value in raw:
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            else:
                has_host = has_host or name == b"host"
                headers.append((name, value))
        if method is None or path is None:
            return None
        if authority is not None and not has_host:
            # Handlers see the target host as "host" on every protocol (RFC 9113 §8.3.1).
            headers.append((b"host", authority))
        target, _, query = path.partition(b"?")
        try:
            return Request(
                method=method.decode("ascii"),
                path=target.decode("ascii"),
                query=query.decode("ascii"),
                headers=headers,
                http_version="2",
                connection=self.info,
            )
        except UnicodeDecodeError:
            return None

    async def _run_stream(self, stream: H2Stream) -> None:
        try:
            with stream.scope:
                if stream.request is None:
                    self.app.metrics.reject(400)
                    await stream.respond(400, [], b"Bad request\n")
                else:
                    await self.app.handle(stream.request, stream)
                    if not stream.started:
                        if stream._body_late:
                            self.app.metrics.reject(408)
                            await stream.respond(408, [_TEXT], b"Request Timeout\n")
                        else:
                            await stream.respond(500, [], b"Internal server error\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream._finish()
            del self.streams[stream.stream_id]
            if not stream.stream_id % 2:
                self._pushed -= 1
            if self.info.rejecting:
                self.drain()
            self.wake_writer()
            self._maybe_stop_reading()

    def push(self, stream: H2Stream, path: str) -> bool:
        """Promise ``GET path`` on *stream* (a client's request) and serve it on the
        promised stream; see :meth:`H2Stream.push`."""
        conn = self.h2
        request = stream.request
        if (
            request is None
            or self._nursery is None
            or self._draining
            or self._closing
            or self._broken
            or self._peer_done
            or self.info.rejecting
            or not conn.remote_settings.enable_push
            or conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams
        ):
            return False
        authority = request.header(b"host")
        if authority is None:
            return False
        target = path.encode("ascii")
        try:
            promised = conn.get_next_available_stream_id()
            conn.push_stream(
                stream.stream_id,
                promised,
                [
                    (b":method", b"GET"),
                    (b":scheme", self.info.scheme.encode("ascii")),
                    (b":authority", authority),
                    (b":path", target),
                ],
            )
        except h2.exceptions.ProtocolError:
            return False  # the client's stream ended meanwhile, no stream ids left...
        path_part, _, query = path.partition("?")
        pushed = H2Stream(
            self,
            promised,
            Request(
                method="GET",
                path=path_part,
                query=query,
                headers=[(b"host", authority)],
                http_version="2",
                connection=self.info,
            ),
            trio.current_time(),
        )
        pushed._body_done = True  # a promised request has no body
        self.streams[promised] = pushed
        self._pushed += 1
        self._nursery.start_soon(self._run_stream, pushed)
        self.wake_writer()
        return True

    # -- writing -------------------------------------------------------------------

    def wake_writer(self) -> None:
        """Note that h2 may hold bytes to send and wake the writer."""
        self._queued += 1
        self._writer_waiter.wake()

    def write_now(self) -> None:
        """Write what h2 holds from the calling task when the writer is idle.

        For the publisher's flush of idle event streams (see :class:`_H2Sink`) on a
        plain socket: one system call and no task woken.  Over TLS, while the
        writer is busy, or for what the socket did not take, the writer does it.
        """
        if self._fd < 0 or not self._writer_idle or self._leftover or self._broken:
            self.wake_writer()
            return
        data = self.h2.data_to_send()
        self.unsent = 0
        if not data:
            return
        try:
            sent = write_some(self._fd, data)
        except OSError:
            sent = 0  # the writer tries again and reports the error
        if sent < len(data):
            self._leftover = data[sent:]
            self.wake_writer()

    async def wait_flushed(self) -> None:
        """Wait until everything queued so far was handed to the socket."""
        target = self._queued
        while self._sent < target:
            if self._broken:
                raise trio.BrokenResourceError("connection lost")
            await self._flushed.park()
        if self._broken:
            raise trio.BrokenResourceError("connection lost")

    async def _writer(self) -> None:
        timeout = self.config.write_timeout
        try:
            while True:
                generation = self._queued
                data = self.h2.data_to_send()
                self.unsent = 0
                if self._leftover:
                    data = self._leftover + data
                    self._leftover = b""
                if data and self._fd >= 0:
                    # Plain socket: offer the bytes to the kernel directly first.
                    try:
                        sent = write_some(self._fd, data)
                    except OSError as exc:
                        raise trio.BrokenResourceError(f"write failed: {exc}") from exc
                    data = data[sent:]
                if data:
                    with trio.move_on_after(timeout) as scope:
                        await self.stream.send_all(data)
                    if scope.cancelled_caught:
                        raise trio.BrokenResourceError("write timed out")
                self._sent = generation
                self._flushed.unpark_all()
                if self._queued == generation:
                    self._writer_idle = True
                    try:
                        await self._writer_waiter.wait()
                    finally:
                        self._writer_idle = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            self._flushed.unpark_all()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()


class _H2Sink(SocketSink):
    """Hands live events straight to an idle HTTP/2 event stream (a hub ``DirectSink``).

    The publisher (or the hub's flusher) queues each event's bytes here; a flush
    frames the burst as DATA on the stream, as far as flow control allows, and
    writes it (:meth:`H2Connection.write_now`), so the stream's own task is not
    woken at all.
    Whatever the stream window, or the writer's back-pressure, does not let
    through interrupts: the stream's task takes it and sends it the usual way.
    """

    __slots__ = ("_encoder", "_stream", "_waiter")

    def __init__(
        self, stream: H2Stream, encoder: Callable[[StoredEvent], bytes], waiter: Waiter
    ) -> None:
        super().__init__(-1)
        self._stream = stream
        self._encoder = encoder
        self._waiter = waiter

    def deliver(self, item: LiveEvent) -> bool:
        return self.queue(item.encoded(self._encoder))

    def _write(self, data: bytes) -> int:
        stream = self._stream
        connection = stream.connection
        if stream._gone or stream._aborted or connection._broken or connection._closing:
            raise OSError("stream reset, aborted, or connection lost")
        if connection.unsent >= _FLUSH_HIGH_WATER:
            return 0  # the writer is behind: the stream's task waits for it
        conn = connection.h2
        stream_id = stream.stream_id
        try:
            size = min(conn.local_flow_control_window(stream_id), len(data))
            frame = conn.max_outbound_frame_size
            view = memoryview(data)
            for start in range(0, size, frame):
                conn.send_data(stream_id, view[start : min(start + frame, size)])
        except h2.exceptions.ProtocolError as exc:
            stream._gone = True
            raise OSError(f"cannot send data: {exc}") from exc
        if size > 0:
            connection.unsent += size
            connection.write_now()
        return max(size, 0)

    def _wake(self) -> None:
        self._waiter.wake()


class _H2Writer(StreamWriter):
    __slots__ = ("aborted", "stream")

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.aborted = False

    async def idle(
        self, subscription: Subscription, encoder: Callable[[StoredEvent], bytes]
    ) -> None:
        stream = self.stream
        if stream._head is not None or stream.is_head:
            await subscription.wait()
            return
        # While the stream has nothing of its own to send, the publisher hands its
        # events to h2 directly (see _H2Sink); this task sleeps until interrupted.
        sink = _H2Sink(stream, encoder, subscription.waiter)
        subscription.sink = sink
        try:
            await subscription.wait()
        finally:
            subscription.detach(sink)
            # Even when cancelled: the hub's flusher may still hold the sink, and
            # must not frame data on a stream that ended.
            unsent = sink.take()
        if sink.broken:
            raise trio.BrokenResourceError("stream reset, aborted, or connection lost")
        if unsent:
            await stream._send_data(unsent, end_stream=False)

    async def send(self, data: bytes) -> None:
        stream = self.stream
        stream._send_head(end_stream=False)
        if data and not stream.is_head:
            await stream._send_data(data, end_stream=False)
        else:
            stream.connection.wake_writer()
            await stream.connection.wait_flushed()

    def abort(self) -> None:
        self.aborted = True
        stream = self.stream
        stream._aborted = True
        stream._window.wake()


class H2Stream(Responder):
    """One request/response exchange on an HTTP/2 connection (its :class:`Responder`)."""

    __slots__ = (
        "_aborted",
        "_body",
        "_body_done",
        "_body_late",
        "_body_received",
        "_body_too_large",
        "_body_waiter",
        "_ended",
        "_gone",
        "_head",
        "_opened",
        "_owed",
        "_started",
        "_watch_scope",
        "_window",
        "connection",
        "is_head",
        "request",
        "scope",
        "stream_id",
    )

    def __init__(
        self,
        connection: H2Connection,
        stream_id: int,
        request: Request | None,
        opened: float,
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.request = request
        self.is_head = request is not None and request.method == "HEAD"
        #: Cancelled when the client resets the stream or the connection dies.
        self.scope = trio.CancelScope()
        self._watch_scope: trio.CancelScope | None = None
        self._window = Waiter()
        self._body = bytearray()
        self._body_done = False
        self._body_too_large = False
        self._body_waiter = Waiter()
        # When the request's HEADERS came, the body bytes received since (for the
        # body's deadline and rate), and whether the body came too late.
        self._opened = opened
        self._body_received = 0
        self._body_late = False
        # Flow-controlled bytes buffered whose stream window was not handed back.
        self._owed = 0
        self._head: list[tuple[bytes, bytes]] | None = None
        self._started = False
        self._ended = False
        self._gone = False
        self._aborted = False

    # -- from the connection -------------------------------------------------------

    def _feed(self, data: bytes, size: int) -> bool:
        """Buffer *data* (``True``: its *size* is owed to the client), or drop it.

        Data is dropped once the body is too large or the response has started
        (nobody reads it any more); until then the client can only send what the
        stream window allows, which read_body widens as it goes.
        """
        self._body_received += size
        if self._body_too_large or self._started:
            return False
        if len(self._body) + len(data) > self.connection.config.max_body_size:
            self._body_too_large = True
            self._drop_body()
            self._body_waiter.wake()
            return False
        self._body += data
        self._owed += size
        self._body_waiter.wake()
        return True

    def _release(self) -> None:
        """Hand back the stream window of the data buffered so far."""
        owed, self._owed = self._owed, 0
        if owed and not self._body_done and not self._ended:
            self.connection.increment_stream_window(self.stream_id, owed)

    def _drop_body(self) -> None:
        self._body = bytearray()
        self._release()

    def _end_body(self) -> None:
        self._body_done = True
        self._body_waiter.wake()

    def _peer_reset(self) -> None:
        self._gone = True
        self._ended = True
        self._body_waiter.wake()
        self._window.wake()
        (self._watch_scope or self.scope).cancel()

    def _finish(self) -> None:
        """After the handler: make sure the stream is closed on our side."""
        if self.connection._broken:
            return
        if not self._ended:
            self._ended = True
            code = ErrorCodes.CANCEL
        elif self._body_late and not self._body_done and not self._gone:
            # Answered 408 before the body came: stop it (RFC 9113 §8.1).
            code = ErrorCodes.NO_ERROR
        else:
            return
        with suppress(h2.exceptions.ProtocolError):
            self.connection.h2.reset_stream(self.stream_id, code)

    # -- Responder -----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    def push(self, path: str) -> bool:
        # Only on a client's stream (no push from a pushed one, RFC 9113 §8.4) that
        # is still open, before the response: the promise must precede what refers
        # to the promised resource.
        if not self.stream_id % 2 or self._started or self._gone or self._aborted:
            return False
        return self.connection.push(self, path)

    @property
    def client_gone(self) -> bool:
        return self._gone

    def _check(self) -> None:
        connection = self.connection
        if self._gone or self._aborted or connection._broken or connection._closing:
            raise trio.BrokenResourceError("stream reset, aborted, or connection lost")

    async def read_body(self, max_size: int) -> bytes:
        length = self.request.header(b"content-length") if self.request is not None else None
        if self._started:
            raise LocalProtocolError("the request body cannot be read after the response started")
        if length is not None and length.isdigit() and int(length) > max_size:
            raise BodyTooLarge(f"body of {int(length)} bytes exceeds {max_size}")
        while not self._body_done:
            self._check()
            if self._body_too_large or len(self._body) > max_size:
                raise BodyTooLarge(f"body exceeds {max_size} bytes")
            self._release()  # consumed: let the client send the next part
            deadline = self._body_deadline()
            if not await self._body_waiter.wait(deadline) and trio.current_time() >= deadline:
                self._body_late = True
                connection = self.connection
                connection._note(
                    logging.DEBUG,
                    "request body on stream %d from %s not received in time",
                    self.stream_id,
                    connection.info.client,
                )
                raise trio.BrokenResourceError("request body not received in time")
        if self._body_too_large or len(self._body) > max_size:
            raise BodyTooLarge(f"body exceeds {max_size} bytes")
        return bytes(self._body)

    def _body_deadline(self) -> float:
        """When the request body must have arrived (see ServerConfig.body_timeout)."""
        config = self.connection.config
        deadline = self._opened + config.body_timeout
        if config.body_min_rate:
            earned = config.header_timeout + self._body_received / config.body_min_rate
            deadline = min(deadline, self._opened + earned)
        return deadline

    def _prepare_head(self, status: int, headers: Headers) -> None:
        head = [(b":status", str(status).encode())]
        head += [(name, value) for name, value in headers if name not in _HOP_BY_HOP]
        self._head = head
        self._started = True
        self._drop_body()  # no one will read it now

    def _send_head(self, end_stream: bool) -> None:
        head = self._head
        if head is None:
            return
        self._head = None
        self._check()
        try:
            self.connection.h2.send_headers(self.stream_id, head, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            self._gone = True
            raise trio.BrokenResourceError(f"cannot send headers: {exc}") from exc
        if end_stream:
            self._ended = True

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self._check()
        self._prepare_head(status, [*headers, *content_length(status, body)])
        if self.is_head or not body:
            self._send_head(end_stream=True)
            self.connection.wake_writer()
            await self.connection.wait_flushed()
        else:
            self._send_head(end_stream=False)
            await self._send_data(body, end_stream=True)

    async def _send_data(self, data: bytes, end_stream: bool) -> None:
        connection = self.connection
        conn = connection.h2
        view = memoryview(data)
        while True:
            self._check()
            try:
                window = min(
                    conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size
                )
            except h2.exceptions.StreamClosedError:
                self._gone = True
                raise trio.BrokenResourceError("stream closed") from None
            if window <= 0 and view:
                deadline = trio.current_time() + connection.config.write_timeout
                if not await self._window.wait(deadline):
                    # No window handed back for write_timeout: the client stopped
                    # reading this stream.  Cut it (RST_STREAM), not the connection.
                    self._aborted = True
                    raise trio.BrokenResourceError("no flow-control window within write_timeout")
                continue
            chunk = view[:window]
            view = view[window:]
            last = not view
            try:
                conn.send_data(self.stream_id, chunk, end_stream=end_stream and last)
            except h2.exceptions.ProtocolError as exc:
                self._gone = True
                raise trio.BrokenResourceError(f"cannot send data: {exc}") from exc
            connection.unsent += len(chunk)
            connection.wake_writer()
            if last:
                break
        if end_stream:
            self._ended = True
        if connection.unsent >= _FLUSH_HIGH_WATER:
            # Back-pressure: wait until the socket took what is queued.
            await connection.wait_flushed()
        else:
            # Let the writer (and the other streams) run: their data shares writes.
            await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def open_stream(self, status: int, headers: Headers) -> AsyncIterator[StreamWriter]:
        self._check()
        self._prepare_head(status, headers)
        writer = _H2Writer(self)
        async with self.watch_disconnect():
            yield writer
        if self._gone or self.connection._broken:
            return
        if writer.aborted:
            self._finish()  # RST_STREAM(CANCEL)
            self.connection.wake_writer()
            return
        if self._head is not None:
            self._send_head(end_stream=True)
        else:
            self._end()
        self.connection.wake_writer()
        await self.connection.wait_flushed()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self.connection.h2.end_stream(self.stream_id)
        except h2.exceptions.ProtocolError as exc:
            self._gone = True
            raise trio.BrokenResourceError(f"cannot end the stream: {exc}") from exc

    def watch_disconnect(self) -> AbstractAsyncContextManager[None]:
        return self._watch()

    @asynccontextmanager
    async def _watch(self) -> AsyncIterator[None]:
        if self._watch_scope is not None:
            yield
            return
        with trio.CancelScope() as scope:
            self._watch_scope = scope
            try:
                if self._gone:
                    scope.cancel()
                yield
            finally:
                self._watch_scope = None
