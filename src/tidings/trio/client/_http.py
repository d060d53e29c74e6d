"""A minimal streaming HTTP client: one request per connection, HTTP/1.1 or HTTP/2.

Only what tidings' own clients need: a ``GET`` whose body is streamed as it arrives
(an SSE stream, a long poll) and a ``POST`` with a small body (publishing).  One
connection carries exactly one request and is closed afterwards; there is no pool,
no redirect following, no decompression, no proxy support.

Version choice (the *http2* argument of :func:`open_request`):

* ``None`` (default): HTTP/1.1 on ``http://``; on ``https://`` ALPN offers ``h2``
  and ``http/1.1`` and the server picks.
* ``True``: HTTP/2 only: prior knowledge on ``http://``, ALPN ``h2`` alone on
  ``https://`` (a server that does not agree is a transport error).
* ``False``: HTTP/1.1 only.

Timeouts are the caller's business (``trio.fail_after`` / ``trio.move_on_after``
around the call), as is retrying.  Every failure of the network or of the peer's
framing surfaces as one exception type, :class:`HTTPTransportError`, so that a
reconnecting client has exactly one thing to catch.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from tidings.errors import LocalProtocolError

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_RECEIVE_SIZE",
    "HTTPResponse",
    "HTTPTransportError",
    "URL",
    "open_request",
]

#: Largest response head (status line and headers) accepted, in bytes.
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
#: How many bytes one read from the network asks for.
DEFAULT_RECEIVE_SIZE = 64 * 1024
# HTTP/2 receive window per stream and for the connection: large enough that a fast
# stream is not throttled by round trips, small enough to bound what a peer may send
# ahead of the reader.
_H2_WINDOW = 1024 * 1024
# Request headers that are about one HTTP/1.1 hop and are forbidden on HTTP/2.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
# Header names the client sets itself.
_MANAGED = frozenset({b"host", b"content-length"})


class HTTPTransportError(Exception):
    """The connection failed or the peer broke HTTP framing: retrying may help.

    Covers refused or dropped connections, DNS and TLS failures (certificate
    verification included), a peer that closes before the response is complete, and
    malformed HTTP/1.1 or HTTP/2 from the peer.  The original exception is chained as
    ``__cause__``.
    """


@dataclass(frozen=True, slots=True)
class URL:
    """An ``http``/``https`` URL split into what a request needs."""

    scheme: str
    host: str
    port: int
    target: str

    @classmethod
    def parse(cls, url: str) -> URL:
        """Split *url*; raises :class:`~tidings.errors.LocalProtocolError` if unusable.

        The fragment is dropped; user info (``user:pass@``) is refused rather than
        silently ignored.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise LocalProtocolError(f"invalid URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise LocalProtocolError(f"URL scheme must be http or https, got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise LocalProtocolError("credentials in the URL are not supported")
        host = parts.hostname
        if not host:
            raise LocalProtocolError(f"URL has no host: {url!r}")
        if port is None:
            port = 443 if scheme == "https" else 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if any(c in target for c in " \r\n\t\0"):
            raise LocalProtocolError(f"URL path contains whitespace or control characters: {url!r}")
        return cls(scheme, host, port, target)

    @property
    def authority(self) -> str:
        """``host[:port]`` as sent in ``Host`` / ``:authority`` (default ports omitted)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


@contextmanager
def _translate_errors() -> Iterator[None]:
    """Turn every network or peer-framing failure into :class:`HTTPTransportError`."""
    try:
        yield
    except HTTPTransportError:
        raise
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = f": {cause}" if cause is not None else ""
        raise HTTPTransportError(f"connection broken{detail}") from exc
    except OSError as exc:
        raise HTTPTransportError(f"connection failed: {exc}") from exc
    except (h11.RemoteProtocolError, h2.exceptions.ProtocolError) as exc:
        raise HTTPTransportError(f"invalid HTTP from peer: {exc}") from exc


class HTTPResponse:
    """A response head, and its body as a stream of byte chunks.

    ``headers`` has lower-cased names and excludes HTTP/2 pseudo-headers.  Read the
    body with :meth:`receive_some` (``b""`` at its end) or :meth:`read`.
    """

    def __init__(
        self,
        exchange: _H11Exchange | _H2Exchange,
        status: int,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
    ) -> None:
        self._exchange = exchange
        #: The status code.
        self.status = status
        #: Header fields in order, names lower-cased.
        self.headers = headers
        #: ``"1.1"`` or ``"2"`` (or ``"1.0"`` for an old server).
        self.http_version = http_version

    def get_header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower-case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def receive_some(self) -> bytes:
        """The next chunk of the body; ``b""`` once the body is complete.

        Raises :class:`HTTPTransportError` if the connection fails first, including a
        close before a ``Content-Length`` or chunked body is complete.
        """
        with _translate_errors():
            return await self._exchange.receive_body()

    async def read(self, max_size: int = 1024 * 1024) -> bytes:
        """The whole (remaining) body; :class:`HTTPTransportError` beyond *max_size*."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await self.receive_some():
            size += len(chunk)
            if size > max_size:
                raise HTTPTransportError(f"response body larger than {max_size} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _request_headers(
    url: URL, headers: Sequence[tuple[str | bytes, str | bytes]], body: bytes | None
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        raw_name = (name.encode("ascii") if isinstance(name, str) else name).lower()
        raw_value = value.encode("utf-8") if isinstance(value, str) else value
        if raw_name in _MANAGED:
            raise LocalProtocolError(f"header {raw_name!r} is set by the client itself")
        out.append((raw_name, raw_value))
    if body is not None:
        out.append((b"content-length", str(len(body)).encode("ascii")))
    return out


def _final_status(value: bytes) -> int:
    """The status code of a final HTTP/2 response, from its ``:status`` field.

    Exactly three ASCII digits (``int()`` alone would take ``+20``, `` 200`` or
    ``2_00``), 200 to 999: what h11 accepts on HTTP/1.1, so that both versions hand
    the same statuses to the callers (a status beyond 599 comes from a broken
    server; :mod:`tidings.retry` makes it final).
    """
    if len(value) != 3 or not value.isdigit() or not b"200" <= value <= b"999":
        raise HTTPTransportError(f"invalid HTTP from peer: :status {value[:20]!r}")
    return int(value)


class _H11Exchange:
    """One HTTP/1.1 request/response on a stream."""

    def __init__(self, stream: trio.abc.Stream, max_header_size: int, receive_size: int) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self._receive_size = receive_size
        self._done = False

    async def send_request(
        self, method: str, url: URL, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> None:
        head = [(b"host", url.authority.encode("ascii")), *headers]
        out = self._conn.send(h11.Request(method=method, target=url.target, headers=head))
        if body:
            out = (out or b"") + (self._conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (self._conn.send(h11.EndOfMessage()) or b"")
        await self._stream.send_all(out)

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._stream.receive_some(self._receive_size)
                if not data and self._conn.their_state is h11.SEND_RESPONSE:
                    raise HTTPTransportError("connection closed before a response")
                self._conn.receive_data(bytes(data))
                continue
            return event

    async def receive_response(self) -> HTTPResponse:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                headers = [(bytes(k), bytes(v)) for k, v in event.headers]
                version = event.http_version.decode("ascii")
                return HTTPResponse(self, event.status_code, headers, version)
            raise HTTPTransportError(f"connection closed before a response ({event!r})")

    async def receive_body(self) -> bytes:
        while not self._done:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            else:
                raise HTTPTransportError(f"unexpected {event!r} in response body")
        return b""


class _H2Exchange:
    """One HTTP/2 stream (always stream 1) on a fresh connection."""

    _STREAM = 1

    def __init__(self, stream: trio.abc.Stream, max_header_size: int, receive_size: int) -> None:
        self._stream = stream
        self._receive_size = receive_size
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _H2_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_size,
            },
        )
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._error: str | None = None
        self._send_broken = False

    async def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out:
            await self._stream.send_all(out)

    async def _flush_while_reading(self) -> None:
        # While reading, sending is a courtesy (window updates, ping and settings
        # acknowledgements): a peer that finished and closed its side must not make
        # us drop data that already arrived.  A connection that is really gone shows
        # up on the next read.
        if self._send_broken:
            self._conn.clear_outbound_data_buffer()
            return
        try:
            await self._flush()
        except (trio.BrokenResourceError, OSError):
            self._send_broken = True

    async def send_request(
        self, method: str, url: URL, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> None:
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(_H2_WINDOW - 65535)
        head = [
            (b":method", method.encode("ascii")),
            (b":scheme", url.scheme.encode("ascii")),
            (b":authority", url.authority.encode("ascii")),
            (b":path", url.target.encode("ascii")),
            *((k, v) for k, v in headers if k not in _HOP_BY_HOP),
        ]
        self._conn.send_headers(self._STREAM, head, end_stream=not body)
        await self._flush()
        view = memoryview(body or b"")
        while view:
            window = min(
                self._conn.local_flow_control_window(self._STREAM),
                self._conn.max_outbound_frame_size,
            )
            if window <= 0:
                await self._pump()
                self._raise_if_failed()
                continue
            self._conn.send_data(self._STREAM, bytes(view[:window]), end_stream=window >= len(view))
            view = view[window:]
            await self._flush()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise HTTPTransportError(self._error)

    async def _pump(self) -> None:
        """Read once from the network and take in what the peer said."""
        data = await self._stream.receive_some(self._receive_size)
        if not data:
            if not self._ended:
                self._error = self._error or "connection closed before the response ended"
            return
        for event in self._conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self._on_head(event.headers or [])
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id == self._STREAM:
                    self._chunks.append((event.data or b"", event.flow_controlled_length or 0))
            elif isinstance(event, h2.events.StreamEnded):
                self._ended = True
            elif isinstance(event, h2.events.StreamReset):
                self._error = f"stream reset by peer (error code {event.error_code})"
            elif isinstance(event, h2.events.ConnectionTerminated):
                last = event.last_stream_id
                refused = event.error_code or last is None or last < self._STREAM
                if refused and not self._ended:
                    self._error = f"connection closed by peer (GOAWAY {event.error_code})"
        await self._flush_while_reading()

    def _on_head(self, raw: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> None:
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in raw:
            key = name.encode("ascii") if isinstance(name, str) else name
            val = value.encode("utf-8") if isinstance(value, str) else value
            if key == b":status":
                if status is not None:
                    raise HTTPTransportError("invalid HTTP from peer: two :status fields")
                status = _final_status(val)
            elif not key.startswith(b":"):
                headers.append((key, val))
        if status is None:
            raise HTTPTransportError("invalid HTTP from peer: response without :status")
        self._head = (status, headers)

    async def receive_response(self) -> HTTPResponse:
        while self._head is None:
            self._raise_if_failed()
            await self._pump()
        status, headers = self._head
        return HTTPResponse(self, status, headers, "2")

    async def receive_body(self) -> bytes:
        while True:
            if self._chunks:
                data, flow = self._chunks.popleft()
                if flow and not self._ended:
                    # Handing data to the reader is what reopens the window: a reader
                    # that stops reading stops the sender, memory stays bounded.
                    self._conn.acknowledge_received_data(flow, self._STREAM)
                    await self._flush_while_reading()
                if data:
                    return data
                continue
            if self._ended:
                return b""
            self._raise_if_failed()
            await self._pump()


def _tls_context(ssl_context: ssl.SSLContext | None, http2: bool | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context() if ssl_context is None else ssl_context
    if http2 is None:
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    elif http2:
        ctx.set_alpn_protocols(["h2"])
    else:
        ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@asynccontextmanager
async def open_request(
    method: str,
    url: str | URL,
    *,
    headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    body: bytes | None = None,
    http2: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    receive_size: int = DEFAULT_RECEIVE_SIZE,
) -> AsyncIterator[HTTPResponse]:
    """Connect, send one request, and yield the response once its head arrived.

    The body is read inside the ``async with`` block; leaving the block closes the
    connection whether or not the body was read.  ``Host``/``:authority`` and
    ``Content-Length`` are set from *url* and *body*; passing them in *headers* is a
    :class:`~tidings.errors.LocalProtocolError`.  For ``https://`` the ALPN protocols
    of *ssl_context* (default: :func:`ssl.create_default_context`) are set according
    to *http2* (see the module documentation).
    """
    target = url if isinstance(url, URL) else URL.parse(url)
    if max_header_size < 1 or receive_size < 1:
        raise LocalProtocolError("max_header_size and receive_size must be >= 1")
    head = _request_headers(target, headers, body)
    stream: trio.abc.Stream
    with _translate_errors():
        stream = await trio.open_tcp_stream(target.host, target.port)
    try:
        use_h2 = bool(http2)
        if target.scheme == "https":
            tls = trio.SSLStream(
                stream,
                _tls_context(ssl_context, http2),
                server_hostname=target.host,
                https_compatible=True,
            )
            stream = tls
            with _translate_errors():
                await tls.do_handshake()
            alpn = tls.selected_alpn_protocol()
            if http2 and alpn != "h2":
                raise HTTPTransportError(f"server did not agree to HTTP/2 (ALPN: {alpn!r})")
            use_h2 = alpn == "h2"
        exchange: _H11Exchange | _H2Exchange
        if use_h2:
            exchange = _H2Exchange(stream, max_header_size, receive_size)
        else:
            exchange = _H11Exchange(stream, max_header_size, receive_size)
        with _translate_errors():
            await exchange.send_request(method, target, head, body)
            response = await exchange.receive_response()
        yield response
    finally:
        await trio.aclose_forcefully(stream)
