"""Shared fixtures for the server tests: a hub, a running server, a raw HTTP/1.1 client."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import h11
import pytest
import trio
import trio.testing
import trustme

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.sse.parser import EventStreamParser, MessageEvent
from tidings.trio import Hub, Server, ServerConfig, serve


class HTTP1:
    """A small HTTP/1.1 test client (h11 over any Trio stream)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.parser = EventStreamParser()

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        """Send one request (``Content-Length`` added when there is a body)."""
        all_headers = [("host", "test"), *headers]
        if body:
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        """The next h11 event from the server (reading as needed)."""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some()))
                continue
            assert not isinstance(event, type)
            return event

    async def response(self) -> h11.Response:
        """The next response head (skipping informational ones)."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event
            assert isinstance(event, h11.InformationalResponse), event

    async def body(self) -> bytes:
        """The rest of the current response body."""
        chunks: list[bytes] = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            assert isinstance(event, h11.Data), event
            chunks.append(bytes(event.data))

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send a request and return ``(status, headers, body)``; ready for the next."""
        await self.send(method, target, headers, body)
        response = await self.response()
        data = await self.body()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return response.status_code, dict(response.headers), data

    async def events(self, count: int) -> list[MessageEvent]:
        """Read SSE events from the current (streaming) response: exactly *count*."""
        out = await self.some_events(count)
        assert len(out) == count, out
        return out

    async def some_events(self, at_least: int = 1) -> list[MessageEvent]:
        """Read SSE events until at least *at_least* arrived (maybe more)."""
        out: list[MessageEvent] = []
        while len(out) < at_least:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise AssertionError(f"stream ended after {out}")
            assert isinstance(event, h11.Data), event
            out += self.parser.receive_data(bytes(event.data))
        return out

    async def raw_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        chunks: list[bytes] = []
        while True:
            data = await self.stream.receive_some()
            if not data:
                return b"".join(chunks)
            chunks.append(bytes(data))


@pytest.fixture
def hub() -> Hub:
    """A hub with a small, deterministic in-memory history."""
    return Hub(MemoryHistory(new_epoch(random.Random(1)), max_events=100))


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(nursery: trio.Nursery, hub: Hub) -> AsyncIterator[StartServer]:
    """``await start_server(config=..., ssl_context=...)``: a server on 127.0.0.1:0."""
    servers: list[Server] = []

    async def start(**kwargs: object) -> Server:
        server: Server = await nursery.start(partial(serve, hub, 0, **kwargs))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.drain()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A server with the default configuration on 127.0.0.1 (random port)."""
    return await start_server(config=ServerConfig())


Connect = Callable[[Server], Awaitable[HTTP1]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(server)``: a fresh HTTP/1.1 client connection to *server*."""
    clients: list[HTTP1] = []

    async def open_client(server: Server) -> HTTP1:
        client = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await trio.aclose_forcefully(client.stream)


MemoryClient = Callable[[Server], Awaitable[HTTP1]]


@pytest.fixture
def memory_client(nursery: trio.Nursery) -> MemoryClient:
    """``await memory_client(server)``: a client wired to *server* by in-memory streams.

    Deterministic under the autojump clock (no real sockets involved).
    """

    async def open_client(server: Server) -> HTTP1:
        client, remote = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, remote)
        return HTTP1(client)

    return open_client


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throw-away certificate authority."""
    return trustme.CA()
