"""The shared heartbeat ticker: one task for all streams, gone when they are."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub
from tidings.trio.server._heartbeat import Beat, Heartbeats


def ticker_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        own = task.name == "tidings heartbeats"
        return own + sum(walk(c) for n in task.child_nurseries for c in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


@pytest.fixture
def hub() -> Hub:
    return Hub(MemoryHistory(new_epoch(random.Random(3))))


async def test_a_quiet_stream_is_woken_once_per_interval(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    heartbeats = Heartbeats(20)
    with hub.subscribe("t") as subscription:
        beat = Beat(subscription, trio.current_time())
        heartbeats.add(beat)
        start = trio.current_time()
        for n in (1, 2, 3):
            assert await subscription.wait() is True
            assert beat.due
            assert trio.current_time() == pytest.approx(start + 20 * n)
            beat.due = False
            beat.last_activity = trio.current_time()
        heartbeats.discard(beat)


async def test_delivered_events_count_as_activity(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    heartbeats = Heartbeats(20)
    with hub.subscribe("t") as subscription:
        beat = Beat(subscription, trio.current_time())
        heartbeats.add(beat)
        start = trio.current_time()
        await trio.sleep(12)
        await hub.publish("t", "x")
        assert subscription.next_batch() is not None  # delivered at t=12
        await subscription.wait()
        # Seen at the tick after 12 (t=15), so due between 35 and 40.
        assert start + 35 <= trio.current_time() <= start + 40
        heartbeats.discard(beat)


async def test_one_ticker_serves_every_stream_and_stops_with_the_last(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    heartbeats = Heartbeats(10)
    subscriptions = [hub.subscribe("t") for _ in range(50)]
    beats = [Beat(s, trio.current_time()) for s in subscriptions]
    for beat in beats:
        heartbeats.add(beat)
    await trio.testing.wait_all_tasks_blocked()
    assert ticker_tasks() == 1
    await trio.sleep(10)
    await trio.testing.wait_all_tasks_blocked()  # the tick due at the same instant
    assert all(beat.due for beat in beats)
    for beat in beats:
        heartbeats.discard(beat)
    await trio.testing.wait_all_tasks_blocked()
    assert ticker_tasks() == 0
    assert len(heartbeats) == 0
    # And it comes back when needed.
    heartbeats.add(beats[0])
    await trio.testing.wait_all_tasks_blocked()
    assert ticker_tasks() == 1
    heartbeats.discard(beats[0])
    for subscription in subscriptions:
        subscription.close()
