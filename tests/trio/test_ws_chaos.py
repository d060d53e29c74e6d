"""Chaos: WebSocket sessions through a connection-cutting proxy and a server restart
while the server and the clients each publish 5 000 messages.

Every client must see every event exactly once and in order (or an explicit reset),
and every client publish must be stored exactly once although the outbox resends
whatever was not acknowledged when a connection died.
"""

from __future__ import annotations

import functools
import random
from collections import Counter

import pytest
import trio
import trio.lowlevel

from tidings.backoff import Backoff, FullJitter
from tidings.cursor import EARLIEST, Position, new_epoch
from tidings.events import Event
from tidings.history import MemoryHistory, Replay
from tidings.trio import Hub, Server, ServerConfig, WebSocketSession, open_session, serve

from ._proxy import ChaosProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.deadline(240)]

TOPIC = "chaos"
CLIENTS = 2
CLIENT_MESSAGES = 5000  # in total, split between the clients
SERVER_MESSAGES = 5000
TOTAL = CLIENT_MESSAGES + SERVER_MESSAGES


async def follow(session: WebSocketSession, out: list[Event], resets: list[str]) -> None:
    async for item in session:
        if isinstance(item, Event):
            out.append(item)
            if len(out) + len(resets) >= TOTAL:
                return
        else:
            resets.append(item.cursor)


async def publish_many(session: WebSocketSession, prefix: str, count: int, lanes: int) -> None:
    async def lane(k: int) -> None:
        for i in range(k, count, lanes):
            await session.publish(TOPIC, f"{prefix}-{i}")

    async with trio.open_nursery() as nursery:
        for k in range(lanes):
            nursery.start_soon(lane, k)


async def test_every_event_once_in_order_and_every_publish_stored_once(
    nursery: trio.Nursery,
) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(4)), max_events=2 * TOTAL))
    config = ServerConfig(drain_timeout=2)
    first: Server = await nursery.start(functools.partial(serve, hub, 0, config=config))
    proxy = await ChaosProxy(first.port, random.Random(9), max_cuts=40, max_bytes=48_000).start(
        nursery
    )
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    received: list[list[Event]] = [[] for _ in range(CLIENTS)]
    resets: list[list[str]] = [[] for _ in range(CLIENTS)]
    sessions: list[WebSocketSession] = []
    restarted = trio.Event()

    async def client(index: int) -> None:
        async with open_session(
            url,
            {TOPIC: EARLIEST},
            rng=random.Random(100 + index),
            backoff=Backoff(FullJitter(base=0.01, cap=0.1), stable_period=1.0),
            max_outbox=5000,
        ) as session:
            sessions.append(session)
            async with trio.open_nursery() as inner:
                inner.start_soon(publish_many, session, f"c{index}", CLIENT_MESSAGES // CLIENTS, 16)
                await follow(session, received[index], resets[index])

    async def server_publisher() -> None:
        for i in range(SERVER_MESSAGES):
            await hub.publish(TOPIC, f"s-{i}")
            if i == SERVER_MESSAGES // 2:
                # Restart: a new server on the same hub takes over, the old one drains
                # (its sessions are closed with 1001 and reconnect through the proxy).
                second: Server = await nursery.start(
                    functools.partial(serve, hub, 0, config=config)
                )
                proxy.target_port = second.port
                first.drain()
                restarted.set()
            elif i % 25 == 0:
                await trio.lowlevel.checkpoint()  # let the clients interleave

    async with trio.open_nursery() as run:
        run.start_soon(server_publisher)
        for index in range(CLIENTS):
            run.start_soon(client, index)

    assert restarted.is_set()
    assert proxy.cuts > 0
    assert all(s.connections > 1 for s in sessions)

    # The history holds every publish exactly once.
    stored = hub.history.memory.read(TOPIC, EARLIEST, 2 * TOTAL)
    assert isinstance(stored, Replay)
    counts = Counter(e.data for e in stored.events)
    expected = {f"s-{i}" for i in range(SERVER_MESSAGES)} | {
        f"c{k}-{i}" for k in range(CLIENTS) for i in range(CLIENT_MESSAGES // CLIENTS)
    }
    assert set(counts) == expected
    assert max(counts.values()) == 1

    # Each client saw each event once, in order, with no gap (no reset was needed).
    for events, client_resets in zip(received, resets, strict=True):
        assert client_resets == []
        offsets = [Position.parse(e.id).offset for e in events]
        assert offsets == list(range(1, TOTAL + 1))
        assert [e.data for e in events] == [e.data for e in stored.events]
