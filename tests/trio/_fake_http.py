"""A scriptable HTTP server for client tests: HTTP/1.1 (h11) and HTTP/2 (h2) on one port.

Each connection carries one request.  The test's ``respond(request, index)`` returns
a :class:`Reply` saying what to send; the server records every request it saw (with
the Trio time it arrived) in :attr:`FakeServer.requests`.  HTTP/2 is recognised by its
connection preface on cleartext, or by ALPN when a TLS context is given.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h11
import trio

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SSE = ("content-type", "text/event-stream")


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    at: float


@dataclass
class Reply:
    """What to answer.  ``raw`` (HTTP/1.1 only) replaces everything with exact bytes.

    ``hold`` keeps the response open after ``chunks`` until the client goes away;
    otherwise the response ends (and the connection closes) after them.
    ``length`` sends a Content-Length header of that value (HTTP/1.1).
    ``h2_head`` (HTTP/2 only) replaces the response's header block, pseudo-header
    fields included, and is sent unchecked: a hostile server's.
    """

    status: int = 200
    headers: Sequence[tuple[str, str]] = (SSE,)
    chunks: Sequence[bytes] = ()
    hold: bool = False
    raw: bytes | None = None
    length: int | None = None
    h2_head: Sequence[tuple[str, str]] | None = None


Respond = Callable[[Seen, int], Reply]


@dataclass
class FakeServer:
    respond: Respond
    tls: ssl.SSLContext | None = None
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    connections: int = 0

    def url(self, path: str = "/events") -> str:
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path}"

    async def start(self, nursery: trio.Nursery) -> FakeServer:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            if self.tls is not None:
                tls = trio.SSLStream(stream, self.tls, server_side=True)
                await tls.do_handshake()
                stream = tls
                use_h2 = tls.selected_alpn_protocol() == "h2"
                first = b""
            else:
                first = b""
                while len(first) < len(PREFACE) and PREFACE.startswith(first):
                    chunk = await stream.receive_some(len(PREFACE) - len(first))
                    if not chunk:
                        return
                    first += chunk
                use_h2 = first == PREFACE
            if use_h2:
                await self._serve_h2(stream, first)
            else:
                await self._serve_h11(stream, first)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _record(self, seen: Seen) -> Reply:
        self.requests.append(seen)
        return self.respond(seen, len(self.requests) - 1)

    async def _serve_h11(self, stream: trio.abc.Stream, first: bytes) -> None:
        conn = h11.Connection(h11.SERVER)
        if first:
            conn.receive_data(first)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        seen = Seen(
            request.method.decode(),
            request.target.decode(),
            {k.decode(): v.decode("latin-1") for k, v in request.headers},
            body,
            "1.1",
            trio.current_time(),
        )
        reply = self._record(seen)
        if reply.raw is not None:
            await stream.send_all(reply.raw)
            return
        headers = list(reply.headers)
        if reply.length is not None:
            headers.append(("content-length", str(reply.length)))
        out = conn.send(h11.Response(status_code=reply.status, headers=headers)) or b""
        await stream.send_all(out)
        for chunk in reply.chunks:
            await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        if reply.hold:
            await _drain(stream)
            return
        if reply.length is None:
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def _serve_h2(self, stream: trio.abc.Stream, first: bytes) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        pending = first
        head: list[tuple[str, str]] | None = None
        body = b""
        stream_id = 0
        done = False
        while not done:
            data = pending or await stream.receive_some(65536)
            pending = b""
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    head = [(str(k), str(v)) for k, v in event.headers or []]
                    stream_id = event.stream_id or 0
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            await stream.send_all(conn.data_to_send())
        assert head is not None
        pseudo = dict(head)
        seen = Seen(
            pseudo[":method"],
            pseudo[":path"],
            {k: v for k, v in head if not k.startswith(":")},
            body,
            "2",
            trio.current_time(),
        )
        reply = self._record(seen)
        if reply.h2_head is not None:
            conn.config.validate_outbound_headers = False
            conn.config.normalize_outbound_headers = False
            conn.send_headers(stream_id, list(reply.h2_head))
        else:
            conn.send_headers(stream_id, [(":status", str(reply.status)), *reply.headers])
        for chunk in reply.chunks:
            view = chunk
            while view:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if window == 0:
                    await stream.send_all(conn.data_to_send())
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                conn.send_data(stream_id, view[:window])
                view = view[window:]
            await stream.send_all(conn.data_to_send())
        if reply.hold:
            await stream.send_all(conn.data_to_send())
            await _drain(stream)
            return
        conn.end_stream(stream_id)
        conn.close_connection()
        await stream.send_all(conn.data_to_send())
        await _drain(stream)  # a lingering close: the client may still send WINDOW_UPDATEs


async def _drain(stream: trio.abc.Stream) -> None:
    """Wait until the client closes (reading and discarding what it sends)."""
    while await stream.receive_some(65536):
        pass


def sse_reply(*chunks: bytes, hold: bool = False) -> Reply:
    """A 200 ``text/event-stream`` answer with *chunks* as its body."""
    return Reply(chunks=chunks, hold=hold)
