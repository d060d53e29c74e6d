"""The hub: fan-out, bounded buffers, subscribe-then-replay without gaps or duplicates."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.lowlevel
import trio.testing

from tidings.cursor import EARLIEST, Position, new_epoch
from tidings.errors import LocalProtocolError
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent
from tidings.trio import Batch, CloseReason, Hub, LiveEvent, LocalHistory, Subscription, Waiter
from tidings.trio.history import Feed, HistoryUnavailable
from tidings.trio.hub import PUBLISH_BATCH


def make_hub(**kwargs: int) -> Hub:
    history_kwargs = {k: kwargs.pop(k) for k in ("max_events", "max_topics") if k in kwargs}
    history = MemoryHistory(new_epoch(random.Random(7)), **history_kwargs)
    return Hub(history, **kwargs)


def memory(hub: Hub) -> MemoryHistory:
    """The hub's history, read synchronously."""
    assert isinstance(hub.history, LocalHistory)
    return hub.history.memory


def data_of(batch: Batch | None) -> list[str]:
    assert batch is not None
    return [item.stored.data for item in batch.events]


def drain_batches(subscription: Subscription) -> tuple[list[str], list[ResetReason]]:
    datas: list[str] = []
    resets: list[ResetReason] = []
    while (batch := subscription.next_batch()) is not None:
        if batch.reset is not None:
            resets.append(batch.reset.reason)
        datas += [item.stored.data for item in batch.events]
    return datas, resets


async def test_publish_returns_the_position_and_append_the_stored_event() -> None:
    hub = make_hub()
    first = await hub.publish("t", "a")
    second = hub.publish_nowait("t", "b", event="kind")
    third = hub.append("t", "c")
    assert isinstance(first, Position)
    assert second == first.next()
    assert isinstance(third, StoredEvent)
    assert third.position == second.next()
    assert [e.event for e in memory(hub).read("t", first).events] == ["kind", None]  # type: ignore[union-attr]


async def test_publish_rejects_event_types_with_line_breaks_and_non_str_data() -> None:
    hub = make_hub()
    with pytest.raises(LocalProtocolError):
        await hub.publish("t", "x", event="a\nb")
    with pytest.raises(LocalProtocolError):
        hub.publish_nowait("t", b"bytes")  # type: ignore[arg-type]
    assert memory(hub).head("t").offset == 0
    with pytest.raises(LocalProtocolError):
        await hub.publish("a/b", "x")  # not a topic name (tidings.names)


async def test_publish_wakes_a_waiting_subscriber_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub()
    got: list[str] = []
    with hub.subscribe("t") as subscription:

        async def consume() -> None:
            while not got:
                batch = subscription.next_batch()
                if batch is None:
                    await subscription.wait()
                else:
                    got.extend(data_of(batch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await hub.publish("t", "now")
        assert got == ["now"]
        assert trio.current_time() == start  # no polling interval involved


async def test_wait_times_out_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        start = trio.current_time()
        assert await subscription.wait(start + 15) is False
        assert trio.current_time() == start + 15


async def test_one_live_event_object_is_shared_by_all_subscribers() -> None:
    hub = make_hub()
    subscriptions = [hub.subscribe("t") for _ in range(3)]
    await hub.publish("t", "x")
    items = []
    for subscription in subscriptions:
        batch = subscription.next_batch()
        assert batch is not None
        items.append(batch.events[0])
    assert items[0] is items[1] is items[2]
    calls: list[StoredEvent] = []

    def encoder(stored: StoredEvent) -> bytes:
        calls.append(stored)
        return stored.data.encode()

    assert [item.encoded(encoder) for item in items] == [b"x"] * 3
    assert len(calls) == 1  # encoded once for everybody


def test_live_event_caches_several_encoders() -> None:
    stored = StoredEvent(Position("e", 1), "x")
    item = LiveEvent(stored)

    def upper(s: StoredEvent) -> bytes:
        return s.data.upper().encode()

    def plain(s: StoredEvent) -> bytes:
        return s.data.encode()

    assert item.encoded(plain) == b"x"
    assert item.encoded(upper) == b"X"
    assert item.encoded(upper) is item.encoded(upper)
    assert item.encoded(plain) == b"x"


async def test_live_from_now_without_a_cursor() -> None:
    hub = make_hub()
    head = await hub.publish("t", "old")
    with hub.subscribe("t") as subscription:
        assert subscription.caught_up == head
        assert subscription.next_batch() is None
        await hub.publish("t", "new")
        assert data_of(subscription.next_batch()) == ["new"]


async def test_the_end_of_the_replay_is_reported_once_after_the_replayed_events() -> None:
    hub = make_hub(replay_page=2)
    for n in range(3):
        await hub.publish("t", str(n))
    with hub.subscribe("t", after=EARLIEST) as subscription:
        first = subscription.next_batch()
        assert first is not None
        assert data_of(first) == ["0", "1"]
        assert first.caught_up is None
        # Published during the replay: the next page reads it.
        during = await hub.publish("t", "during")
        second = subscription.next_batch()
        assert second is not None
        assert data_of(second) == ["2", "during"]
        assert second.caught_up == during
        assert subscription.caught_up == during
        await hub.publish("t", "after")
        third = subscription.next_batch()
        assert third is not None
        assert data_of(third) == ["after"]
        assert third.caught_up is None


async def test_replay_after_a_position_then_live() -> None:
    hub = make_hub()
    stored = [await hub.publish("t", str(n)) for n in range(1, 6)]
    with hub.subscribe("t", after=stored[1].format()) as subscription:
        assert data_of(subscription.next_batch()) == ["3", "4", "5"]
        assert subscription.next_batch() is None
        await hub.publish("t", "6")
        assert data_of(subscription.next_batch()) == ["6"]
        assert subscription.last == stored[-1].next()
        assert subscription.caught_up == stored[-1]


async def test_earliest_replays_everything_retained() -> None:
    hub = make_hub(max_events=3)
    for n in range(5):
        await hub.publish("t", str(n))
    with hub.subscribe("t", after=EARLIEST) as subscription:
        assert drain_batches(subscription) == (["2", "3", "4"], [])


@pytest.mark.parametrize(
    "cursor", ["garbage", b"\xff\xfe\x00", "x" * 10_000, "e.00", "e.-1", "e. 1"]
)
async def test_a_malformed_cursor_resets_to_the_head_then_live(cursor: str | bytes) -> None:
    hub = make_hub()
    last = None
    for n in range(3):
        last = await hub.publish("t", str(n))
    assert last is not None
    with hub.subscribe("t", after=cursor) as subscription:
        batch = subscription.next_batch()
        assert batch is not None
        assert batch.reset is not None
        assert batch.reset.reason is ResetReason.MALFORMED
        assert batch.reset.cursor == last
        assert batch.events == []
        await hub.publish("t", "live")
        assert drain_batches(subscription) == (["live"], [])


async def test_a_cursor_of_another_epoch_resets_then_replays_everything_retained() -> None:
    # A restarted server (a new epoch): nothing retained is skipped.
    hub = make_hub(max_events=3)
    for n in range(5):
        await hub.publish("t", str(n))
    with hub.subscribe("t", after="otherepoch.3") as subscription:
        batch = subscription.next_batch()
        assert batch is not None
        assert batch.reset is not None
        assert batch.reset.reason is ResetReason.UNKNOWN_EPOCH
        assert batch.reset.cursor.offset == 2  # just before the earliest retained
        assert data_of(batch) == ["2", "3", "4"]
        await hub.publish("t", "live")
        assert drain_batches(subscription) == (["live"], [])


async def test_an_evicted_cursor_resets_then_replays_from_the_earliest_retained() -> None:
    hub = make_hub(max_events=2)
    first = await hub.publish("t", "0")
    for n in range(1, 5):
        await hub.publish("t", str(n))
    with hub.subscribe("t", after=first) as subscription:
        assert drain_batches(subscription) == (["3", "4"], [ResetReason.EVICTED])


async def test_events_published_during_a_paged_replay_are_neither_lost_nor_repeated() -> None:
    hub = make_hub(max_events=100, replay_page=4)
    for n in range(10):
        await hub.publish("t", str(n))
    seen: list[str] = []
    with hub.subscribe("t", after=EARLIEST) as subscription:
        counter = 10
        while True:
            batch = subscription.next_batch()
            if batch is None:
                break
            seen += data_of(batch)
            # Publishing between pages, as happens while a page is being sent.
            for _ in range(3):
                if counter < 25:
                    await hub.publish("t", str(counter))
                    counter += 1
        assert seen == [str(n) for n in range(counter)]


async def test_live_events_already_replayed_are_dropped() -> None:
    hub = make_hub()
    subscription = hub.subscribe("t", after=EARLIEST)
    # Events published before the first read are both in the buffer and in the
    # history: they must come out once.
    await hub.publish("t", "a")
    await hub.publish("t", "b")
    assert subscription.pending == 2
    assert subscription.follower.last is None  # nothing read yet
    assert drain_batches(subscription) == (["a", "b"], [])
    await hub.publish("t", "c")
    assert drain_batches(subscription) == (["c"], [])
    subscription.close()


async def test_a_new_epoch_in_the_live_stream_gives_a_reset_not_a_silent_jump() -> None:
    hub = make_hub(max_topics=1)
    await hub.publish("t", "a")
    with hub.subscribe("t") as subscription:
        # Touching another topic evicts "t" from the history; it comes back with a
        # new epoch.
        await hub.publish("other", "x")
        await hub.publish("t", "b")
        datas, resets = drain_batches(subscription)
        assert resets == [ResetReason.UNKNOWN_EPOCH]
        assert datas == ["b"]  # retained after the loss: not skipped
        await hub.publish("t", "c")
        assert drain_batches(subscription) == (["c"], [])


async def test_a_hole_in_the_live_stream_is_filled_from_the_history() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        # Stored without the feed; only the first and third reach the subscription.
        first, second, third = (memory(hub).append("t", data) for data in "abc")
        subscription._push(LiveEvent(first))
        subscription._push(LiveEvent(third))
        assert second.position.offset == first.position.offset + 1
        datas, resets = drain_batches(subscription)
        assert (datas, resets) == (["a", "b", "c"], [])


async def test_a_slow_subscriber_catches_up_from_the_history_when_its_buffer_overflows() -> None:
    hub = make_hub(max_pending_events=3)
    fast = hub.subscribe("t")
    slow = hub.subscribe("t")
    drain_batches(slow)
    for n in range(3):
        await hub.publish("t", str(n))
    assert drain_batches(fast) == (["0", "1", "2"], [])
    await hub.publish("t", "3")  # slow now has 4 > 3 buffered
    await hub.publish("t", "4")
    assert slow.overflows >= 1
    assert slow.pending <= 3  # memory stays bounded ...
    assert slow.closed is None  # ... and the subscriber keeps its place
    assert drain_batches(slow) == (["0", "1", "2", "3", "4"], [])
    assert fast.overflows == 0
    assert drain_batches(fast) == (["3", "4"], [])
    assert hub.subscriber_count("t") == 2


async def test_a_subscriber_too_slow_for_the_history_gets_a_reset_where_events_were_lost() -> None:
    hub = make_hub(max_pending_events=2, max_events=3)
    with hub.subscribe("t") as slow:
        drain_batches(slow)
        for n in range(8):
            await hub.publish("t", str(n))
        assert drain_batches(slow) == (["0", "1", "5", "6", "7"], [ResetReason.EVICTED])


async def test_the_byte_limit_of_the_buffer_also_applies() -> None:
    hub = make_hub(max_pending_bytes=1000)
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        await hub.publish("t", "x" * 600)
        await hub.publish("t", "y" * 600)
        assert subscription.overflows == 1
        assert [len(d) for d in drain_batches(subscription)[0]] == [600, 600]


async def test_per_subscription_limits_override_the_hub_defaults() -> None:
    hub = make_hub(max_pending_events=100)
    with hub.subscribe("t", max_pending_events=1) as subscription:
        drain_batches(subscription)
        await hub.publish("t", "1")
        await hub.publish("t", "2")
        assert subscription.overflows == 1
        assert drain_batches(subscription) == (["1", "2"], [])


async def test_close_wakes_the_waiter_and_keeps_buffered_events() -> None:
    hub = make_hub()
    subscription = hub.subscribe("t")
    await hub.publish("t", "a")
    subscription.close(CloseReason.DRAIN)
    assert await subscription.wait() is True
    assert subscription.closed is CloseReason.DRAIN
    assert data_of(subscription.next_batch()) == ["a"]
    await hub.publish("t", "b")
    assert subscription.next_batch() is None


async def test_leaving_the_block_unsubscribes() -> None:
    hub = make_hub()
    for _ in range(1000):
        with hub.subscribe("t"):
            pass
    with hub.subscribe("t"), hub.subscribe("u"):
        assert hub.subscriber_count() == 2
        assert sorted(hub.topics_with_subscribers()) == ["t", "u"]
    assert hub.subscriber_count() == 0
    assert hub.topics_with_subscribers() == []


async def test_a_shared_waiter_is_woken_by_any_of_its_subscriptions() -> None:
    hub = make_hub()
    waiter = Waiter()
    first = hub.subscribe("a", waiter=waiter)
    second = hub.subscribe("b", waiter=waiter)
    await hub.publish("b", "x")
    assert waiter.is_set
    assert await waiter.wait() is True
    assert first.next_batch() is None
    assert data_of(second.next_batch()) == ["x"]


async def test_only_one_task_may_wait_on_a_waiter() -> None:
    waiter = Waiter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError):
            await waiter.wait()
        waiter.wake()


async def test_wake_says_whether_it_woke_a_waiting_task() -> None:
    waiter = Waiter()
    assert waiter.wake() is False  # nobody waits: the flag is set
    assert await waiter.wait() is True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.wake() is True
        assert waiter.wake() is False  # rescheduled already


def test_hub_rejects_bad_limits_and_topics() -> None:
    with pytest.raises(LocalProtocolError):
        Hub(max_pending_events=0)
    hub = Hub()
    with pytest.raises(LocalProtocolError):
        hub.subscribe("")
    with pytest.raises(LocalProtocolError):
        hub.subscribe("t", after=12)  # type: ignore[arg-type]


async def test_concurrent_publishers_and_resuming_subscribers_see_every_event_once() -> None:
    hub = make_hub(max_events=10_000, replay_page=7)
    total = 500
    done = trio.Event()

    async def publisher() -> None:
        for n in range(total):
            await hub.publish("t", str(n))
        done.set()

    async def reader(start_after: str | None) -> list[str]:
        seen: list[str] = []
        with hub.subscribe("t", after=start_after) as subscription:
            while len(seen) < total:
                batch = subscription.next_batch()
                if batch is None:
                    await subscription.wait()
                    continue
                assert batch.reset is None
                seen += data_of(batch)
                await trio.lowlevel.checkpoint()
        return seen

    results: list[list[str]] = []

    async def run_reader() -> None:
        results.append(await reader(EARLIEST))

    first = await hub.publish("t", "-1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        for _ in range(3):
            nursery.start_soon(run_reader)
    del first
    assert done.is_set()
    for seen in results:
        assert seen[:total] == ["-1", *map(str, range(total - 1))]


class FakeSink:
    """A DirectSink that records what it is given."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.queued: list[str] = []
        self.written: list[str] = []
        self.interrupted = False

    def deliver(self, item: LiveEvent) -> bool:
        if not self.accept or self.interrupted:
            return False
        self.queued.append(item.stored.data)
        return True

    def flush(self) -> None:
        self.written += self.queued
        self.queued = []

    def interrupt(self) -> None:
        self.interrupted = True


async def test_an_idle_sink_takes_events_without_buffering_and_is_flushed_on_yield() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        sink = FakeSink()
        subscription.sink = sink
        await hub.publish("t", "a")
        assert sink.queued == ["a"]
        assert subscription.pending == 0
        assert subscription.delivered == 1
        assert subscription.next_batch() is None
        await hub.publish("t", "b")
        assert subscription.last == memory(hub).head("t")
        assert sink.written == []
        await trio.testing.wait_all_tasks_blocked()  # the publisher yields: the flusher writes
        assert sink.written == ["a", "b"]
        assert sink.queued == []


async def _rounds_during(publishes: object) -> int:
    """Scheduling rounds a spinning task saw while *publishes* (a coroutine) ran."""
    rounds = 0

    async def spin() -> None:
        nonlocal rounds
        while True:
            await trio.lowlevel.checkpoint()
            rounds += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        before = rounds
        await publishes  # type: ignore[misc]
        after = rounds
        nursery.cancel_scope.cancel()
    return after - before


async def test_publish_into_idle_sinks_yields_once_per_batch_and_flushes_then() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        sink = FakeSink()
        subscription.sink = sink

        half = PUBLISH_BATCH // 2

        async def publish_all() -> None:
            # A publish and a delivery each: the last of them completes the batch.
            for n in range(half + 3):
                await hub.publish("t", str(n))
            # Written by the publish that completed the batch, the rest only queued...
            assert sink.written == [str(n) for n in range(half)]
            assert sink.queued == [str(n) for n in range(half, half + 3)]

        assert await _rounds_during(publish_all()) <= 2  # one yield, counted 0-2 times
        # ... until the publisher yields (the flusher writes them).
        await trio.testing.wait_all_tasks_blocked()
        assert sink.written == [str(n) for n in range(half + 3)]


async def test_a_publish_that_wakes_a_waiting_consumer_is_a_scheduling_point() -> None:
    hub = make_hub()
    got: list[str] = []
    with hub.subscribe("t") as subscription:

        async def consume() -> None:
            while True:
                got.extend(drain_batches(subscription)[0])
                await subscription.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            for n in range(3):
                await trio.testing.wait_all_tasks_blocked()  # it waits
                with trio.testing.assert_checkpoints():
                    await hub.publish("t", str(n))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert got == ["0", "1", "2"]


async def test_events_for_a_busy_consumer_are_buffered_without_a_round_each() -> None:
    hub = make_hub(max_pending_events=32)
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)  # nobody waits: its consumer is busy elsewhere

        async def publish_all() -> None:
            for n in range(10):
                await hub.publish("t", str(n))

        assert await _rounds_during(publish_all()) <= 2
        # Taken in one batch (one write) once the consumer looks.
        assert data_of(subscription.next_batch()) == [str(n) for n in range(10)]
        # Half its buffer: from then on each publish yields, so that a busy
        # consumer overflows only when it is slow, not because of a batch.
        for n in range(16):
            await hub.publish("t", str(n))
        with trio.testing.assert_checkpoints():
            await hub.publish("t", "16")
        assert subscription.pending == 17
        assert subscription.overflows == 0


async def test_publish_is_a_cancellation_point_even_without_a_scheduling_round() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        subscription.sink = FakeSink()
        with trio.CancelScope() as scope:
            scope.cancel()
            await hub.publish("t", "x")
        assert scope.cancelled_caught
        assert memory(hub).head("t").offset == 0


async def test_publish_nowait_bursts_are_flushed_once_the_publisher_yields() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        sink = FakeSink()
        subscription.sink = sink
        for n in range(5):
            hub.publish_nowait("t", str(n))
        assert sink.queued == ["0", "1", "2", "3", "4"]
        assert sink.written == []
        await trio.testing.wait_all_tasks_blocked()
        assert sink.written == ["0", "1", "2", "3", "4"]


async def test_a_refusing_sink_is_detached_and_the_event_buffered_in_order() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        sink = FakeSink()
        subscription.sink = sink
        await hub.publish("t", "a")
        sink.accept = False
        await hub.publish("t", "b")
        await hub.publish("t", "c")
        assert sink.interrupted
        assert subscription.sink is not sink
        assert sink.written == ["a"]
        assert drain_batches(subscription) == (["b", "c"], [])


async def test_a_sink_is_not_used_while_events_wait_in_the_buffer() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        await hub.publish("t", "a")
        sink = FakeSink()
        subscription.sink = sink
        await hub.publish("t", "b")
        assert sink.written == []
        assert sink.interrupted
        assert drain_batches(subscription) == (["a", "b"], [])


async def test_closing_or_waking_interrupts_the_sink() -> None:
    hub = make_hub()
    with hub.subscribe("t") as subscription:
        drain_batches(subscription)
        sink = FakeSink()
        subscription.sink = sink
        subscription.wake()
        assert sink.interrupted
        assert subscription.sink is not sink
        sink = FakeSink()
        subscription.sink = sink
        subscription.close(CloseReason.DRAIN)
        assert sink.interrupted


# -- what mutation testing found unchecked ----------------------------------------------


async def test_every_way_to_publish_keeps_the_event_type_and_the_key() -> None:
    hub = make_hub()
    first = await hub.publish("t", "a", "tick", key="k1")
    assert await hub.publish("t", "a", "tick", key="k1") == first  # a resend
    second = hub.publish_nowait("t", "b", "tock", key="k2")
    assert hub.publish_nowait("t", "b", "tock", key="k2") == second
    third = hub.append("t", "c", "tack", key="k3")
    assert hub.append("t", "c", "tack", key="k3") == third
    answer = memory(hub).read("t", EARLIEST, 10)
    assert [(e.data, e.event) for e in answer.events] == [  # type: ignore[union-attr]
        ("a", "tick"),
        ("b", "tock"),
        ("c", "tack"),
    ]
    for publish in (hub.publish_nowait, hub.append):
        with pytest.raises(LocalProtocolError):
            publish("t", "x", "bad\ntype")
    with pytest.raises(LocalProtocolError):
        await hub.publish("t", "x", "bad\ntype")


def test_a_live_event_is_encoded_once_per_encoder() -> None:
    calls: list[str] = []

    def upper(stored: StoredEvent) -> str:
        calls.append("upper")
        return stored.data.upper()

    def twice(stored: StoredEvent) -> str:
        calls.append("twice")
        return stored.data * 2

    def third(stored: StoredEvent) -> str:
        calls.append("third")
        return "3" + stored.data

    item = LiveEvent(StoredEvent(Position("e", 1), "ab"))
    for _ in range(3):
        assert item.encoded(upper) == "AB"
        assert item.encoded(twice) == "abab"
        assert item.encoded(third) == "3ab"
    assert calls == ["upper", "twice", "third"]


def test_hub_limits_of_one_are_valid_and_of_zero_are_not() -> None:
    Hub(max_pending_events=1, max_pending_bytes=1, replay_page=1)
    for name in ("max_pending_events", "max_pending_bytes", "replay_page"):
        with pytest.raises(LocalProtocolError):
            Hub(**{name: 0})  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Hub(object())  # type: ignore[arg-type]


class _FlakyHistory:
    """A LocalHistory behind the awaited History interface; reads (and heads) fail
    while ``failing`` is above zero, counting it down."""

    def __init__(self) -> None:
        self.local = LocalHistory(MemoryHistory(new_epoch(random.Random(12))))
        self.failing = 0
        self.failed_at: list[float] = []

    def _maybe_fail(self) -> None:
        if self.failing:
            self.failing -= 1
            self.failed_at.append(trio.current_time())
            raise HistoryUnavailable("away")

    def bind(self, feed: Feed) -> None:
        self.local.bind(feed)

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        return await self.local.append(topic, data, event, key=key)

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        self._maybe_fail()
        return await self.local.read(topic, after, limit)

    async def head(self, topic: str) -> Position:
        self._maybe_fail()
        return await self.local.head(topic)

    async def watch(self, topic: str) -> None:
        await self.local.watch(topic)

    def unwatch(self, topic: str) -> None:
        self.local.unwatch(topic)


async def next_batch(subscription: Subscription) -> Batch:
    while (batch := subscription.next_batch()) is None:
        assert await subscription.wait()
    return batch


async def test_reads_of_an_unreachable_history_are_retried_ever_more_slowly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = _FlakyHistory()
    hub = Hub(history)
    stored = [await hub.publish("t", str(n)) for n in range(3)]
    history.failing = 8
    start = trio.current_time()
    with hub.subscribe("t", after=EARLIEST) as subscription:
        batch = await next_batch(subscription)
        assert [e.position for e in batch.events] == stored
        assert subscription.delivered == 3
        # 0.25 s after the first failure, then twice as long each time, at most 5 s.
        assert history.failed_at[0] == start
        waits = [b - a for a, b in itertools.pairwise(history.failed_at)]
        assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
        assert trio.current_time() == start + 22.75  # and 5 s after the last one
        # Recovered: the next outage starts again from 0.25 s.
        history.failing = 2
        history.failed_at.clear()
        hub.on_lost("t")  # the feed may have missed events: the follower reads again
        again = trio.current_time()
        assert subscription.next_batch() is None
        assert subscription.needs_read  # from the last event delivered
        while subscription.needs_read:
            await subscription.wait()
        assert history.failed_at == [again, again + 0.25]
        assert trio.current_time() == again + 0.75


async def test_live_from_now_on_an_awaited_history_reads_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = _FlakyHistory()
    hub = Hub(history)
    head = await hub.publish("t", "before")
    history.failing = 1
    with hub.subscribe("t") as subscription:
        batch = await next_batch(subscription)
        assert batch.caught_up == head
        assert list(batch.events) == []
        assert batch.reset is None
        live = await hub.publish("t", "after")
        batch = await next_batch(subscription)
        assert [e.position for e in batch.events] == [live]
        assert subscription.delivered == 1
