"""Several tidings servers sharing topics through Redis, as one service.

Nodes run in this process (a hub on a RedisHistory each, served on a port of its
own) or as separate ``python -m tidings serve --redis`` processes; the clients are
tidings' own, over real sockets.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.lowlevel

from tidings.backoff import Backoff, NoJitter
from tidings.events import Event, ResetNotice
from tidings.redis import open_redis_history
from tidings.trio import (
    Hub,
    Server,
    ServerConfig,
    open_event_stream,
    open_long_poll,
    open_session,
    serve,
)
from tidings.trio.client._http import open_request

from ..trio._cli import TIMEOUT, Lines, start_cli
from ..trio._proxy import ChaosProxy
from ._redis import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.deadline(2 * TIMEOUT)]

Node = tuple[Hub, Server]
StartNode = Callable[[], Awaitable[Node]]


async def _run_node(
    url: str, prefix: str, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_redis_history(url, prefix=prefix, max_events=5000) as history:
        hub = Hub(history)
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                partial(serve, hub, 0, config=ServerConfig(sse_retry=50))
            )
            task_status.started((hub, server))


@pytest.fixture
def start_node(redis_server: RedisServer, prefix: str, nursery: trio.Nursery) -> StartNode:
    """``await start_node()``: another server on the same Redis (and key prefix), each
    in a task of its own (ended with the test)."""

    async def start() -> Node:
        node: Node = await nursery.start(_run_node, redis_server.url, prefix)
        return node

    return start


async def post(url: str, topic: str, data: str) -> tuple[int, dict[bytes, bytes], str]:
    async with open_request("POST", f"{url}/topics/{topic}", body=data.encode()) as response:
        return response.status, dict(response.headers), (await response.read()).decode()


async def test_an_event_published_on_one_node_reaches_every_transport_on_another(
    start_node: StartNode,
) -> None:
    (_, a), (_, b) = await start_node(), await start_node()
    ws = b.url.replace("http://", "ws://") + "/ws"
    with trio.fail_after(TIMEOUT):
        async with (
            open_event_stream(f"{b.url}/topics/news/events", last_event_id="earliest") as sse,
            open_session(ws, {"news": "earliest"}) as session,
            open_long_poll(f"{b.url}/topics/news/poll", cursor="earliest", hold=20) as poll,
        ):
            clients = (sse, session, poll)
            first = json.loads((await post(a.url, "news", "first"))[2])["id"]
            assert [(await c.__anext__()).id for c in clients] == [first] * 3  # type: ignore[union-attr]
            # Every client follows B live now: the next event from A reaches them so.
            status, _, body = await post(a.url, "news", "from A")
            assert status == 201
            ident = json.loads(body)["id"]
            got = [await client.__anext__() for client in clients]
    for event in got:
        assert isinstance(event, Event), event
        assert (event.id, event.data, event.topic) == (ident, "from A", "news")


async def test_a_long_poll_cursor_from_one_node_works_on_another(start_node: StartNode) -> None:
    (hub_a, _a), (_, b) = await start_node(), await start_node()
    first = await hub_a.publish("t", "1")
    second = await hub_a.publish("t", "2")
    with trio.fail_after(TIMEOUT):
        async with open_request(
            "GET", f"{b.url}/topics/t/poll?cursor={first}&timeout=0"
        ) as response:
            answer = json.loads(await response.read())
    assert answer["reset"] is False
    assert [(e["id"], e["data"]) for e in answer["events"]] == [(second.format(), "2")]


async def test_a_follower_bounced_between_nodes_through_cuts_loses_and_repeats_nothing(
    start_node: StartNode, nursery: trio.Nursery
) -> None:
    (hub_a, a), (hub_b, b) = await start_node(), await start_node()
    proxy = ChaosProxy(
        a.port,
        random.Random(11),
        max_cuts=40,
        min_bytes=500,
        max_bytes=6000,
        more_targets=[b.port],
    )
    await proxy.start(nursery)
    start = await hub_a.publish("t", "start")
    total = 2000
    seen: list[str] = []
    with trio.fail_after(3 * TIMEOUT):
        async with open_event_stream(
            proxy.url("/topics/t/events"),
            last_event_id=start.format(),
            backoff=Backoff(NoJitter(base=0.01, cap=0.05)),
        ) as stream:

            async def publish_alternately() -> None:
                for i in range(total):
                    await (hub_a if i % 2 else hub_b).publish("t", str(i))
                    if i % 50 == 0:
                        await trio.lowlevel.checkpoint()

            nursery.start_soon(publish_alternately)
            async for item in stream:
                assert isinstance(item, Event), item
                seen.append(item.data)
                if len(seen) == total:
                    break
    assert seen == [str(i) for i in range(total)]
    assert proxy.cuts >= 5
    assert proxy.connections > 5  # reconnections landed on both nodes in turn


async def test_a_flushed_redis_gives_followers_an_explicit_reset(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    (hub_a, _a), (_, b) = await start_node(), await start_node()
    await hub_a.publish("t", "before")
    with trio.fail_after(TIMEOUT):
        async with open_event_stream(f"{b.url}/topics/t/events", last_event_id="earliest") as sse:
            assert (await sse.__anext__()).data == "before"  # type: ignore[union-attr]
            redis_server.command("FLUSHALL")
            after = await hub_a.publish("t", "after")  # a new epoch
            reset = await sse.__anext__()
            event = await sse.__anext__()
    assert isinstance(reset, ResetNotice)
    assert reset.reason == "unknown-epoch"
    assert isinstance(event, Event)
    assert (event.id, event.data) == (after.format(), "after")


async def test_separate_server_processes_survive_a_redis_restart(
    redis_server: RedisServer, nursery: trio.Nursery, prefix: str
) -> None:
    """Two ``serve --redis`` processes: cross-node delivery; while Redis is down
    publishing answers 503 with Retry-After at once, /readyz 503 and /healthz 200,
    streams stay open; when it is back the nodes recover by themselves and the
    follower gets a reset (Redis came back empty) and the new events."""
    nodes = []
    for _ in range(2):
        process = await start_cli(nursery, "serve", "--port", "0", "--redis", redis_server.url)
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            nodes.append((process, await Lines(process.stdout).next()))
    (_proc_a, a), (_proc_b, b) = nodes
    with trio.fail_after(3 * TIMEOUT):
        async with open_event_stream(
            f"{b}/topics/t/events",
            last_event_id="earliest",
            backoff=Backoff(NoJitter(base=0.05, cap=0.2)),
        ) as sse:
            status, _, _ = await post(a, "t", "before")
            assert status == 201
            assert (await sse.__anext__()).data == "before"  # type: ignore[union-attr]

            redis_server.kill()
            with trio.fail_after(5):  # never hangs
                status, headers, _ = await post(a, "t", "during")
            assert status == 503
            assert headers[b"retry-after"].isdigit()
            async with open_request("GET", f"{a}/readyz") as response:
                assert response.status == 503
            async with open_request("GET", f"{a}/healthz") as response:
                assert response.status == 200

            redis_server.start()
            while True:  # the nodes reconnect by themselves
                async with open_request("GET", f"{a}/readyz") as response:
                    if response.status == 200:
                        break
                await trio.sleep(0.1)
            status, _, body = await post(a, "t", "after")
            assert status == 201
            reset = await sse.__anext__()
            event = await sse.__anext__()
    assert isinstance(reset, ResetNotice)
    assert isinstance(event, Event)
    assert event.data == "after"
    assert event.id == json.loads(body)["id"]
    for process, _ in nodes:
        process.terminate()
    for process, _ in nodes:
        with trio.fail_after(TIMEOUT):
            await process.wait()
