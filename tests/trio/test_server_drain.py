"""Graceful drain: readiness, SSE clients told to reconnect, listeners closed, exit."""

from __future__ import annotations

import os
import signal
from functools import partial
from typing import TYPE_CHECKING

import h11
import pytest
import trio
import trio.testing

from tidings.trio import Hub, Server, ServerConfig, serve

if TYPE_CHECKING:
    from conftest import HTTP1, Connect, MemoryClient

pytestmark = pytest.mark.timeout(30)

SSE = "/topics/t/events"


async def open_sse(client: HTTP1, target: str = SSE) -> None:
    await client.send("GET", target)
    assert (await client.response()).status_code == 200
    retry = await client.next_event()
    assert isinstance(retry, h11.Data)
    assert bytes(retry.data) == b"retry: 3000\n\n"


async def read_to_end(client: HTTP1) -> bytes:
    """The rest of the response body; asserts that it ended cleanly."""
    chunks: list[bytes] = []
    while True:
        event = await client.next_event()
        if isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        assert isinstance(event, h11.Data), event
        chunks.append(bytes(event.data))


async def test_drain_ends_event_streams_with_a_short_retry_then_serve_returns(
    hub: Hub, connect: Connect
) -> None:
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[Server]) -> None:
        await serve(hub, 0, task_status=task_status)
        returned.set()

    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(run)
        clients = [await connect(server) for _ in range(3)]
        for client in clients:
            await open_sse(client)
        await hub.publish("t", "before")
        server.drain()
        for client in clients:
            rest = await read_to_end(client)
            assert rest == b"id: " + hub.history.memory.head("t").format().encode() + (
                b"\ndata: before\n\nretry: 500\n\n"
            )
            assert await client.raw_until_closed() == b""
    assert returned.is_set()
    assert hub.subscriber_count() == 0


async def test_drain_stops_accepting(server: Server, connect: Connect) -> None:
    port = server.port
    server.drain()
    await server.wait_drained()
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_readyz_answers_503_while_draining(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    # A request already under way when the drain starts is still answered.
    await client.stream.send_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n")
    await trio.testing.wait_all_tasks_blocked()
    server.drain()
    assert server.draining
    await client.stream.send_all(b"\r\n")
    answer = await client.raw_until_closed()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nconnection: close\r\n" in answer


async def test_idle_keep_alive_connections_close_at_once_on_drain(
    server: Server, connect: Connect
) -> None:
    client = await connect(server)
    assert (await client.request("GET", "/healthz"))[0] == 200
    server.drain()
    assert await client.raw_until_closed() == b""


async def test_event_stream_requested_during_a_drain_gets_retry_and_ends(
    hub: Hub, memory_client: MemoryClient
) -> None:
    server = Server(hub)
    client = await memory_client(server)
    server.drain()
    await client.send("GET", SSE)
    assert (await client.response()).status_code == 200
    assert await read_to_end(client) == b"retry: 500\n\n"


async def test_cancelling_serve_drains_gracefully(hub: Hub, connect: Connect) -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, hub, 0)
        client = await connect(server)
        await open_sse(client)
        nursery.cancel_scope.cancel()
        assert await read_to_end(client) == b"retry: 500\n\n"
    assert server.draining
    assert hub.subscriber_count() == 0


async def test_drain_timeout_cuts_connections_that_do_not_finish(
    autojump_clock: trio.testing.MockClock, hub: Hub, connect: Connect
) -> None:
    config = ServerConfig(drain_timeout=0.2, header_timeout=60)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, hub, 0, config=config))
        client = await connect(server)
        await client.stream.send_all(b"GET /healthz HTTP/1.1\r\n")  # never finished
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        server.drain()
        await server.wait_drained()
        assert trio.current_time() - start == pytest.approx(0.2)  # the drain timeout, not 60
        assert await client.raw_until_closed() == b""


async def test_http2_drain_ends_streams_then_sends_goaway(hub: Hub, server: Server) -> None:
    import h2.config
    import h2.connection
    import h2.events

    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "GET"), (":path", SSE), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    await stream.send_all(conn.data_to_send())
    body = b""
    seen: list[type[h2.events.Event]] = []
    drained = False
    try:
        while True:
            data = await stream.receive_some()
            if not data:
                break
            for event in conn.receive_data(bytes(data)):
                seen.append(type(event))
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
            await stream.send_all(conn.data_to_send())
            if b"retry: 3000" in body and not drained:
                drained = True
                server.drain()
    finally:
        await trio.aclose_forcefully(stream)
    assert body == b"retry: 3000\n\nretry: 500\n\n"
    assert h2.events.StreamEnded in seen
    assert h2.events.ConnectionTerminated in seen
    # GOAWAY comes after the streams ended: h2-based clients reject data after it.
    assert seen.index(h2.events.StreamEnded) < seen.index(h2.events.ConnectionTerminated)


async def test_sigterm_starts_a_drain_and_serve_returns(hub: Hub, connect: Connect) -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, hub, 0, handle_signals=True))
        client = await connect(server)
        await open_sse(client)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await read_to_end(client) == b"retry: 500\n\n"
    assert server.draining
