"""``tidings tail`` keeps up on a link that drops every few kilobytes, and waits for a busy
server instead of abandoning it -- run as a real subprocess over real sockets.

The cutting proxy (tests/trio/_proxy.py) closes *every* connection after a random
2-20 KB of the server's answer.  Each connection delivers events, so each counts as
progress and the tail reconnects at once instead of backing off: the whole history
arrives, in order, each event once.  The time is printed (``pytest -s``), never
asserted.
"""

from __future__ import annotations

import json
import random
import signal
import time
from functools import partial

import pytest
import trio
import trio.testing

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub, Server, serve

try:
    from tests.trio._cli import Lines, start_cli
    from tests.trio._fake_http import FakeServer, Reply, Seen, sse_reply
    from tests.trio._proxy import ChaosProxy
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _cli import Lines, start_cli  # type: ignore[no-redef]
    from _fake_http import FakeServer, Reply, Seen, sse_reply  # type: ignore[no-redef]
    from _proxy import ChaosProxy  # type: ignore[no-redef]

EVENTS = 3000
PAYLOAD = "x" * 48
#: A bound against hangs only: the tail normally needs a fraction of it.
HANG = 110

pytestmark = pytest.mark.deadline(HANG + 10)


def data(i: int) -> str:
    return f"{i:05d}:{PAYLOAD}"


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_tail_keeps_up_through_a_proxy_that_cuts_every_connection(
    nursery: trio.Nursery, transport: str
) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(8)), max_events=EVENTS + 10))
    ids = [(await hub.publish("news", data(i))).format() for i in range(EVENTS)]
    server: Server = await nursery.start(partial(serve, hub, 0))
    proxy = await ChaosProxy(
        server.port, random.Random(2), max_cuts=None, min_bytes=2048, max_bytes=20 * 1024
    ).start(nursery)
    if transport == "sse":
        args = [proxy.url("/topics/news/events")]
    else:
        args = [f"ws://127.0.0.1:{proxy.port}/ws", "--transport", "ws", "--topic", "news"]
    started = time.monotonic()
    process = await start_cli(nursery, "tail", *args, "--last-event-id", "earliest")
    assert process.stdout is not None
    lines = Lines(process.stdout)
    got = []
    with trio.fail_after(HANG):
        while len(got) < EVENTS:
            got.append(json.loads(await lines.next()))
        elapsed = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert got == [{"id": ids[i], "event": "message", "data": data(i)} for i in range(EVENTS)]
    assert proxy.cuts >= 10  # the link really was cut, many times
    print(
        f"\n{transport}: {EVENTS} events through the cutting proxy in {elapsed:.1f} s "
        f"({proxy.connections} connections, {proxy.cuts} cut)"
    )
    server.drain()


# -- a busy server is waited for, not abandoned ---------------------------------------------


def _poll_answer(cursor: str, events: list[dict[str, object]]) -> Reply:
    body = json.dumps({"events": events, "cursor": cursor, "reset": False}).encode()
    return Reply(headers=[("content-type", "application/json")], chunks=[body])


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_tail_waits_for_a_503_with_retry_after_then_prints_the_event(
    nursery: trio.Nursery, transport: str
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return Reply(
                status=503,
                headers=[("retry-after", "1"), ("content-type", "text/html")],
                chunks=[b"<h1>Busy</h1>"],
            )
        if transport == "sse":
            return sse_reply(b"id: e.1\ndata: finally\n\n", hold=True)
        if index == 1:
            return _poll_answer("e.1", [{"id": "e.1", "event": None, "data": "finally"}])
        return Reply(hold=True, headers=[("content-type", "application/json")])

    server = await FakeServer(respond).start(nursery)
    path = "/topics/t/events" if transport == "sse" else "/topics/t/poll"
    process = await start_cli(nursery, "tail", server.url(path), "--transport", transport)
    assert process.stdout is not None
    with trio.fail_after(30):
        line = json.loads(await Lines(process.stdout).next())
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert line == {"id": "e.1", "event": "message", "data": "finally"}
    assert server.requests[1].at - server.requests[0].at >= 1.0


class RefuseFirstHandshake:
    """A TCP front that answers the first connection ``503 Retry-After: 1`` and relays
    every later one to *target_port* (a real tidings server)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections: list[float] = []

    async def start(self, nursery: trio.Nursery) -> RefuseFirstHandshake:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections.append(trio.current_time())
        try:
            if len(self.connections) == 1:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await client.receive_some(4096)
                await client.send_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
                    b"content-length: 0\r\nconnection: close\r\n\r\n"
                )
                return
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(client)

    @staticmethod
    async def _pump(
        source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()


async def test_tail_over_ws_waits_for_a_refused_handshake_then_prints_the_event(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    stored = await hub.publish("t", "finally")
    front = await RefuseFirstHandshake(server.port).start(nursery)
    process = await start_cli(
        nursery,
        "tail",
        f"ws://127.0.0.1:{front.port}/ws",
        "--transport",
        "ws",
        "--topic",
        "t",
        "--last-event-id",
        "earliest",
    )
    assert process.stdout is not None
    with trio.fail_after(30):
        line = json.loads(await Lines(process.stdout).next())
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert line == {"id": stored.format(), "event": "message", "data": "finally"}
    assert front.connections[1] - front.connections[0] >= 1.0
