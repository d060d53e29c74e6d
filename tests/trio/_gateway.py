"""An HTTP/1.1 reverse proxy for browser tests: the middleboxes tidings.js must get through.

* ``refuse_websocket``: a WebSocket handshake is answered ``403`` (a proxy or a
  firewall that does not let WebSocket through);
* ``buffer``: every response is held back until it is complete, then sent whole
  (a proxy that buffers: an event stream never gets through, a poll answer does);
* otherwise requests and responses stream through, and WebSocket upgrades become a
  byte relay.

For the tests of what survives a cut:

* :meth:`Gateway.cut` closes every connection at once, both sides;
* :meth:`Gateway.cut_at_next_publish_answer` watches for the next acknowledgement of a
  publish (a ``201`` to a ``POST``, a ``published`` WebSocket message), withholds it
  and cuts everything at that moment -- the worst time for exactly-once publishing:
  the event is stored, the client does not know;
* :meth:`Gateway.hold` keeps new connections waiting (accepted, not relayed) until
  :meth:`Gateway.release`, so that a test can publish while the client is away.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import h11
import trio

# Unmasked (server-to-client) WebSocket frames carry the JSON as is.
_PUBLISHED = b'"type":"published"'
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}


@dataclass
class Gateway:
    target_port: int
    refuse_websocket: bool = False
    buffer: bool = False
    port: int = 0
    #: Requests relayed, as ``(method, path)``, and WebSocket handshakes refused.
    requests: list[tuple[str, str]] = field(default_factory=list)
    refused_websockets: int = 0
    #: Event streams that were still held back when their client left (buffering).
    held_back_streams: int = 0
    cuts: int = 0
    _scopes: set[trio.CancelScope] = field(default_factory=set)
    _released: trio.Event = field(default_factory=trio.Event)
    _armed: trio.Event | None = None

    def __post_init__(self) -> None:
        self._released.set()

    async def start(self, nursery: trio.Nursery) -> Gateway:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests do ------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection now (client and server sides)."""
        self.cuts += 1
        for scope in list(self._scopes):
            scope.cancel()

    def hold(self) -> None:
        """New connections wait (accepted, nothing relayed) until :meth:`release`."""
        if self._released.is_set():
            self._released = trio.Event()

    def release(self) -> None:
        self._released.set()

    def cut_at_next_publish_answer(self) -> trio.Event:
        """Hold new connections, withhold the next publish acknowledgement and cut
        everything at that moment; the event is set then (call :meth:`release` after)."""
        self._armed = armed = trio.Event()
        return armed

    def _withhold(self) -> bool:
        """A publish acknowledgement is about to pass: cut instead, if armed."""
        armed, self._armed = self._armed, None
        if armed is None:
            return False
        self.hold()
        self.cut()
        armed.set()
        return True

    # -- relaying -------------------------------------------------------------------

    async def _serve(self, client: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        self._scopes.add(scope)
        upstream: trio.SocketStream | None = None
        try:
            with scope:
                await self._released.wait()
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                await self._relay_http(client, upstream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # one side went away: so does the other
        finally:
            self._scopes.discard(scope)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                if upstream is not None:
                    await trio.aclose_forcefully(upstream)

    async def _relay_http(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        front = h11.Connection(h11.SERVER)
        back = h11.Connection(h11.CLIENT)
        while True:
            request = await _next(front, client)
            if not isinstance(request, h11.Request):
                return  # the client closed between requests
            method = request.method.decode()
            target = request.target.decode()
            upgrade = dict(request.headers).get(b"upgrade", b"").lower() == b"websocket"
            if upgrade:
                if self.refuse_websocket:
                    self.refused_websockets += 1
                    await _refuse(front, client)
                    return
                self.requests.append((method, target))
                await self._relay_websocket(request, front, client, upstream)
                return
            self.requests.append((method, target))
            await upstream.send_all(back.send(request))
            while not isinstance(event := await _next(front, client), h11.EndOfMessage):
                assert isinstance(event, h11.Data), event
                await upstream.send_all(back.send(event))
            await upstream.send_all(back.send(event))
            async with trio.open_nursery() as nursery:
                # A client that leaves (an aborted fetch) takes its upstream request
                # with it, as with a real proxy.
                nursery.start_soon(_until_client_leaves, client, front, nursery.cancel_scope)
                await self._relay_response(method, target, front, back, client, upstream)
                nursery.cancel_scope.cancel()
            if front.our_state is not h11.DONE or back.their_state is not h11.DONE:
                return
            front.start_next_cycle()
            back.start_next_cycle()

    async def _relay_response(
        self,
        method: str,
        target: str,
        front: h11.Connection,
        back: h11.Connection,
        client: trio.SocketStream,
        upstream: trio.SocketStream,
    ) -> None:
        response = await _next(back, upstream)
        while isinstance(response, h11.InformationalResponse):
            response = await _next(back, upstream)
        assert isinstance(response, h11.Response), response
        if method == "POST" and response.status_code == 201 and self._withhold():
            return  # cut: this task is cancelled with every connection
        if not self.buffer:
            await client.send_all(front.send(response))
            while True:
                event = await _next(back, upstream)
                assert isinstance(event, h11.Data | h11.EndOfMessage), event
                await client.send_all(front.send(event) or b"")
                if isinstance(event, h11.EndOfMessage):
                    return
        chunks: list[bytes] = []
        try:
            while not isinstance(event := await _next(back, upstream), h11.EndOfMessage):
                assert isinstance(event, h11.Data), event
                chunks.append(bytes(event.data))
        except trio.Cancelled:
            if target.partition("?")[0].endswith("/events"):
                self.held_back_streams += 1
            raise
        body = b"".join(chunks)
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP]
        headers.append((b"content-length", str(len(body)).encode()))
        whole = h11.Response(
            status_code=response.status_code, headers=headers, reason=response.reason
        )
        await client.send_all(front.send(whole) + front.send(h11.Data(data=body)))
        await client.send_all(front.send(h11.EndOfMessage()))

    async def _relay_websocket(
        self,
        request: h11.Request,
        front: h11.Connection,
        client: trio.SocketStream,
        upstream: trio.SocketStream,
    ) -> None:
        head = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
        head += b"".join(
            b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw_items()
        )
        await upstream.send_all(head + b"\r\n" + front.trailing_data[0])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, None, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, client, self, nursery.cancel_scope)


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event | type[h11.PAUSED]:
    """The next h11 event of *conn*, reading *stream* as needed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if event is h11.PAUSED:
            return event
        assert not isinstance(event, type)
        return event


async def _until_client_leaves(
    client: trio.SocketStream, front: h11.Connection, scope: trio.CancelScope
) -> None:
    # Browsers do not pipeline: anything but the end of the connection is kept for
    # the next cycle.
    while data := await client.receive_some(65536):
        front.receive_data(data)
    scope.cancel()


async def _refuse(front: h11.Connection, client: trio.SocketStream) -> None:
    body = b"WebSocket is not allowed here\n"
    response = h11.Response(
        status_code=403,
        headers=[(b"content-length", str(len(body)).encode()), (b"connection", b"close")],
    )
    await client.send_all(front.send(response) + front.send(h11.Data(data=body)))
    await client.send_all(front.send(h11.EndOfMessage()))


async def _pump(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    watcher: Gateway | None,
    scope: trio.CancelScope,
) -> None:
    try:
        while data := await source.receive_some(65536):
            if watcher is not None and _PUBLISHED in data and watcher._withhold():
                return  # cut: withheld
            await sink.send_all(data)
    finally:
        scope.cancel()
