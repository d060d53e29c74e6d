"""Clients that come and go leave no task, subscription, connection or buffer behind."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from h2.errors import ErrorCodes

from tidings.trio import Hub, Server

pytestmark = pytest.mark.timeout(60)

CYCLES = 1000
REQUEST = b"GET /topics/t/events HTTP/1.1\r\nhost: x\r\n\r\n"


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def settle(check: object) -> None:
    """Let the server notice closed sockets: wait until everything is blocked."""
    for _ in range(100):
        await trio.testing.wait_all_tasks_blocked()
        if callable(check) and check():
            return


def assert_nothing_left(hub: Hub, server: Server, tasks_before: int) -> None:
    assert hub.subscriber_count() == 0
    assert server.app.subscriptions == set()
    assert server.app.connections == set()
    assert server.connection_count == 0
    assert count_tasks() == tasks_before


async def test_a_thousand_http11_stream_cycles_leave_nothing_behind(
    hub: Hub, server: Server
) -> None:
    await trio.testing.wait_all_tasks_blocked()
    tasks_before = count_tasks()
    for n in range(CYCLES):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        try:
            await stream.send_all(REQUEST)
            received = b""
            while b"retry: 3000" not in received:
                received += await stream.receive_some()
            if n % 100 == 0:
                await hub.publish("t", str(n))
        finally:
            await stream.aclose()
    await settle(lambda: server.connection_count == 0 and hub.subscriber_count() == 0)
    assert_nothing_left(hub, server, tasks_before)


async def test_a_thousand_http2_stream_resets_leave_nothing_behind(
    hub: Hub, server: Server
) -> None:
    await trio.testing.wait_all_tasks_blocked()
    tasks_before = count_tasks()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    try:
        for _ in range(CYCLES):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(
                stream_id,
                [
                    (":method", "GET"),
                    (":path", "/topics/t/events"),
                    (":scheme", "http"),
                    (":authority", "x"),
                ],
                end_stream=True,
            )
            await stream.send_all(conn.data_to_send())
            opened = False
            while not opened:
                for event in conn.receive_data(bytes(await stream.receive_some())):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                        opened = True
            conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            await stream.send_all(conn.data_to_send())
        await settle(lambda: hub.subscriber_count() == 0)
        assert hub.subscriber_count() == 0
        assert server.app.subscriptions == set()
        (connection,) = server.app.connections
        assert connection.streams == {}  # type: ignore[attr-defined]
    finally:
        await stream.aclose()
    await settle(lambda: server.connection_count == 0)
    assert_nothing_left(hub, server, tasks_before)
