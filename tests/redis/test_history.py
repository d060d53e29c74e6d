"""The Redis history against a real ``redis-server``: the memory history's answers, two
processes ("nodes") sharing topics, the live feed, resets, idempotency and expiry."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tidings.cursor import EARLIEST, Position, new_epoch
from tidings.errors import LocalProtocolError
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent
from tidings.redis import RedisHistory, open_redis_history
from tidings.trio.history import History, LocalHistory

try:
    from tests.redis._redis import RecordingFeed, RedisServer
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _redis import RecordingFeed, RedisServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60), pytest.mark.deadline(50)]


@asynccontextmanager
async def node(server: RedisServer, prefix: str, **options: Any) -> AsyncIterator[RedisHistory]:
    """One "server process": a Redis history of its own, bound to a recording feed."""
    async with open_redis_history(server.url, prefix=prefix, **options) as history:
        history.bind(RecordingFeed())
        yield history


def feed_of(history: RedisHistory) -> RecordingFeed:
    feed = history._feed
    assert isinstance(feed, RecordingFeed)
    return feed


async def stream_length(history: RedisHistory, topic: str) -> int:
    return await history.client.xlen(f"{history.prefix}{{{topic}}}:events")


# -- the basics --------------------------------------------------------------------------


async def test_is_a_history_and_reads_back_what_it_stored(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as history:
        assert isinstance(history, History)
        assert history.healthy
        assert history.connected
        assert await history.ping()
        first = await history.append("t", "one")
        second = await history.append("t", "two", "kind")
        assert first.position.offset == 1
        assert second.position == first.position.next()
        assert second == StoredEvent(second.position, "two", "kind")
        answer = await history.read("t", EARLIEST, 10)
        assert answer == Replay((first, second), second.position, False)
        assert await history.read("t", first.position.format(), 10) == Replay(
            (second,), second.position, False
        )
        assert await history.head("t") == second.position


async def test_any_text_round_trips(redis_server: RedisServer, prefix: str) -> None:
    async with node(redis_server, prefix) as history:
        await history.watch("t")
        texts = ["", "line\nline\r\n", "\x00nul", "é 漢字 🎉", "\ud800 lone surrogate"]
        stored = [await history.append("t", text, text or None) for text in texts]
        answer = await history.read("t", EARLIEST, 10)
        assert isinstance(answer, Replay)
        assert answer.events == tuple(stored)
        assert [(s.data, s.event) for s in stored] == [(t, t or None) for t in texts]
        feed = feed_of(history)
        await feed.wait_until(lambda: len(feed.events) == len(texts))
        assert feed.of("t") == stored


async def test_refuses_oversized_events_and_invalid_topics(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix, max_event_size=10) as history:
        await history.append("t", "1234567890")
        with pytest.raises(LocalProtocolError) as info:
            await history.append("t", "é" * 6)  # 12 bytes of UTF-8
        assert info.value.error_status_hint == 413
        with pytest.raises(LocalProtocolError):
            await history.append("t", "12345", "678901")
        assert (await history.head("t")).offset == 1
        for topic in ["", "{t}", "a b", "..", "x" * 129]:
            with pytest.raises(LocalProtocolError):
                await history.append(topic, "data")
            with pytest.raises(LocalProtocolError):
                await history.read(topic, EARLIEST, 1)
        with pytest.raises(LocalProtocolError):
            await history.read("t", EARLIEST, 0)


def test_refuses_bad_options() -> None:
    import coredis

    def client() -> coredis.Redis[bytes]:
        return coredis.Redis.from_url("redis://127.0.0.1:1/0")

    for options in [
        {"max_events": 0},
        {"max_event_size": 0},
        {"ttl": 0},
        {"operation_timeout": float("inf")},
        {"dedup_window": -1},
        {"prefix": "a{b"},
        {"max_calls": 0},
        {"max_calls": 1.5},
    ]:
        with pytest.raises(LocalProtocolError):
            RedisHistory(client, **options)
    with pytest.raises(LocalProtocolError):
        RedisHistory(lambda: coredis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True))


# -- the memory history's answers, side by side --------------------------------------------

TOPICS = ["a", "b"]
MAX_EVENTS = 3

# Weights by repetition (sampled_from is uniform): one topic busier than the other,
# appends more frequent than reads, most without an idempotency key, most cursors in
# the topic read -- so that topics overflow and old cursors meet evicted events.
_CURSORS = {
    "earliest": st.just(("earliest",)),
    "malformed": st.just(("malformed",)),
    "own": st.tuples(st.just("own"), st.integers(0, 9)),
    "topic": st.tuples(st.just("topic"), st.sampled_from(TOPICS), st.integers(0, 9)),
    # A topic's head before it exists: offset 0 of whatever the history says.
    "fresh": st.just(("fresh", 0)),
    "foreign": st.tuples(st.just("foreign"), st.integers(0, 3)),
}
cursors = st.sampled_from(
    ["earliest", "malformed", "own", "own", "own", "own", "topic", "fresh", "foreign"]
).flatmap(_CURSORS.__getitem__)
topics = st.sampled_from(["a", "a", "b"])
_OPERATIONS = {
    "append": st.tuples(
        st.just("append"),
        topics,
        st.text(max_size=5),
        st.sampled_from([None, "x"]),
        st.sampled_from([None, None, None, "k1", "k2"]),
    ),
    "read": st.tuples(st.just("read"), topics, cursors, st.integers(1, 4)),
    "head": st.tuples(st.just("head"), topics),
}
operations = st.lists(
    st.sampled_from(["append", "append", "append", "read", "read", "head"]).flatmap(
        _OPERATIONS.__getitem__
    ),
    min_size=8,
    max_size=30,
)


class _Normaliser:
    """Names positions by what they mean (a topic's epoch, a fresh one, a foreign one),
    so that answers of two histories with different epochs compare.

    The histories differ in how they name "nothing yet" (the head of a topic not
    stored yet): the memory history answers offset 0 of the epoch the topic will
    get, Redis offset 0 of a shared fresh epoch.  Both replay the topic from its
    first event after it, so both count as "fresh" here until the topic exists.
    """

    def __init__(self, history: LocalHistory | RedisHistory) -> None:
        self.history = history
        self.epochs: dict[str, str] = {}  # epoch -> topic
        self.fresh: dict[str, Position] = {}  # topic -> its head before it existed

    def is_fresh(self, epoch: str) -> bool:
        if isinstance(self.history, LocalHistory):
            return epoch not in self.epochs and epoch.startswith(self.history.memory.epoch + "_")
        return epoch.startswith("f_")

    def position(self, position: Position) -> tuple[str, int]:
        if self.is_fresh(position.epoch):
            return ("fresh", position.offset)
        return (self.epochs.get(position.epoch, "foreign"), position.offset)

    def answer(self, answer: Replay | Reset) -> tuple[object, ...]:
        if isinstance(answer, Reset):
            return ("reset", self.position(answer.cursor), answer.reason)
        events = tuple((self.position(e.position), e.data, e.event) for e in answer.events)
        return ("replay", events, self.position(answer.cursor), answer.more)

    async def cursor(self, topic: str, spec: tuple[Any, ...]) -> Position | str:
        kind = spec[0]
        if kind == "own":
            spec = ("topic", topic, spec[1])
            kind = "topic"
        if kind == "topic" and spec[1] != topic:
            named = [epoch for epoch, name in self.epochs.items() if name == spec[1]]
            return Position(named[0], spec[2]) if named else Position("foreign", spec[2])
        if kind == "earliest":
            return EARLIEST
        if kind == "malformed":
            return "not a cursor"
        if kind == "foreign":
            return Position("foreign", spec[1])
        if kind == "fresh":
            return Position(self.fresh[topic].epoch, spec[1])
        topic, offset = spec[1], spec[2]
        for epoch, name in self.epochs.items():
            if name == topic:
                return Position(epoch, offset)
        if topic not in self.fresh:
            return Position("foreign", offset)
        # Another topic's "nothing yet" is foreign to this one for the memory history
        # (each topic its own epoch) and not for Redis (one shared fresh epoch):
        # use only this topic's own.
        return Position(self.fresh[topic].epoch, offset)


async def _run(history: LocalHistory | RedisHistory, ops: list[tuple[Any, ...]]) -> list[object]:
    names = _Normaliser(history)
    for topic in TOPICS:
        names.fresh[topic] = await history.head(topic)
    out: list[object] = []
    for op in ops:
        if op[0] == "append":
            _, topic, data, event, key = op
            stored = await history.append(topic, data, event, key=key)
            names.epochs.setdefault(stored.position.epoch, topic)
            out.append(("stored", names.position(stored.position), stored.data, stored.event))
        elif op[0] == "read":
            _, topic, spec, limit = op
            answer = await history.read(topic, await names.cursor(topic, spec), limit)
            out.append(names.answer(answer))
        else:
            out.append(("head", names.position(await history.head(op[1]))))
    return out


async def _side_by_side(url: str, prefix: str, ops: list[tuple[Any, ...]]) -> None:
    memory = LocalHistory(
        MemoryHistory(new_epoch(random.Random(0)), max_events=MAX_EVENTS, max_bytes=2**22)
    )
    expected = await _run(memory, ops)
    async with open_redis_history(url, prefix=prefix, max_events=MAX_EVENTS) as redis:
        assert await _run(redis, ops) == expected


_examples = iter(range(10**9))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # Each example opens a connection to Redis: no explain phase, which reruns many.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(ops=operations)
def test_answers_like_the_memory_history(redis_server: RedisServer, ops: list[Any]) -> None:
    trio.run(_side_by_side, redis_server.url, f"sbs{next(_examples)}:", ops)


@pytest.mark.parametrize(
    "ops",
    [
        # eviction, then reads before, at and after the earliest retained event
        [("append", "a", str(i), None, None) for i in range(6)]
        + [("read", "a", ("topic", "a", k), 2) for k in range(8)],
        # a fresh position handed out before the topic exists, read after it exists
        [
            ("read", "a", ("fresh", 0), 3),
            ("append", "a", "x", None, None),
            ("read", "a", ("fresh", 0), 3),
            ("read", "b", ("fresh", 0), 3),
        ],
        # idempotency keys: a repeat returns the first position
        [
            ("append", "a", "x", None, "k1"),
            ("append", "a", "y", "x", "k1"),
            ("append", "b", "z", None, "k1"),
            ("read", "a", ("earliest",), 5),
        ],
    ],
    ids=["eviction", "fresh", "keys"],
)
def test_answers_like_the_memory_history_in_known_cases(
    redis_server: RedisServer, ops: list[Any]
) -> None:
    trio.run(_side_by_side, redis_server.url, f"known{next(_examples)}:", ops)


# -- two nodes on one Redis ------------------------------------------------------------


async def test_two_nodes_append_at_once_and_both_feeds_get_every_event_in_order(
    redis_server: RedisServer, prefix: str
) -> None:
    per_writer = 50
    async with node(redis_server, prefix) as a, node(redis_server, prefix) as b:
        await a.watch("t")
        await b.watch("t")
        stored: list[StoredEvent] = []

        async def write(history: RedisHistory, name: str) -> None:
            stored.extend([await history.append("t", f"{name}{i}") for i in range(per_writer)])

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for name, history in [("a", a), ("b", b), ("c", a), ("d", b)]:
                    nursery.start_soon(write, history, name)
        total = 4 * per_writer
        assert sorted(s.position.offset for s in stored) == list(range(1, total + 1))
        assert len({s.position.epoch for s in stored}) == 1
        by_position = sorted(stored, key=lambda s: s.position.offset)
        for history in (a, b):
            feed = feed_of(history)
            await feed.wait_until(lambda feed=feed: len(feed.events) >= total)
            assert feed.of("t") == by_position
        answer = await b.read("t", EARLIEST, total)
        assert isinstance(answer, Replay)
        assert list(answer.events) == by_position[-1000:]


async def test_watch_feeds_events_appended_by_another_node_and_unwatch_stops_it(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as a, node(redis_server, prefix) as b:
        feed = feed_of(a)
        await b.append("t", "before watch")
        await a.watch("t")
        await a.watch("u")
        assert a.watched == {"t", "u"}
        first = await b.append("t", "after watch")
        await feed.wait_until(lambda: len(feed.events) == 1)
        assert feed.events == [("t", first)]
        a.unwatch("t")
        assert a.watched == {"u"}
        await b.append("t", "after unwatch")
        marker = await b.append("u", "marker")
        # Both were published in this order on one connection: once the marker is
        # fed, the event of the unwatched topic would have been too.
        await feed.wait_until(lambda: len(feed.events) == 2)
        assert feed.events == [("t", first), ("u", marker)]
        # And again: the topic can be watched once more.
        await a.watch("t")
        again = await b.append("t", "watched again")
        await feed.wait_until(lambda: len(feed.events) == 3)
        assert feed.events[-1] == ("t", again)


async def test_a_feed_that_raises_does_not_stop_the_reader(
    redis_server: RedisServer, prefix: str
) -> None:
    class Grumpy(RecordingFeed):
        def on_event(self, topic: str, stored: StoredEvent) -> None:
            super().on_event(topic, stored)
            raise RuntimeError("feed bug")

    async with open_redis_history(redis_server.url, prefix=prefix) as a:
        grumpy = Grumpy()
        a.bind(grumpy)
        a.bind(grumpy)  # binding the same feed again is harmless
        await a.watch("t")
        for data in "xyz":
            await a.append("t", data)
        await grumpy.wait_until(lambda: len(grumpy.events) == 3)
        with pytest.raises(RuntimeError):
            a.bind(RecordingFeed())


async def test_idempotent_appends_are_stored_once_across_nodes(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as a, node(redis_server, prefix) as b:
        await a.watch("t")
        first = await a.append("t", "x", key="msg-1")
        repeat = await b.append("t", "x", key="msg-1")
        assert repeat.position == first.position
        # At once from both nodes: one of them stores it.
        results: list[StoredEvent] = []

        async def send(history: RedisHistory) -> None:
            results.append(await history.append("t", "y", key="msg-2"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, a)
            nursery.start_soon(send, b)
        assert results[0].position == results[1].position == first.position.next()
        # Keys are per topic.
        other = await b.append("u", "x", key="msg-1")
        assert other.position.offset == 1
        assert await stream_length(a, "t") == 2
        feed = feed_of(a)
        await feed.wait_until(lambda: len(feed.events) == 2)
        assert [s.data for s in feed.of("t")] == ["x", "y"]


# -- resets --------------------------------------------------------------------------------


async def test_flushall_starts_a_new_epoch_and_old_cursors_reset_without_loss(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as a:
        await a.watch("t")
        old = [await a.append("t", str(i)) for i in range(3)]
        await a.client.flushall()
        new = [await a.append("t", f"new{i}") for i in range(2)]
        assert new[0].position.epoch != old[0].position.epoch
        assert new[0].position.offset == 1
        answer = await a.read("t", old[-1].position, 10)
        assert answer == Reset(Position(new[0].position.epoch, 0), ResetReason.UNKNOWN_EPOCH)
        assert await a.read("t", answer.cursor, 10) == Replay(tuple(new), new[-1].position)
        feed = feed_of(a)
        await feed.wait_until(lambda: len(feed.events) == 5)
        assert feed.of("t") == old + new


async def test_maxlen_evicts_and_reads_before_the_earliest_retained_event_reset(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix, max_events=3) as a:
        stored = [await a.append("t", str(i)) for i in range(5)]
        assert await stream_length(a, "t") == 3
        epoch = stored[0].position.epoch
        assert await a.read("t", stored[0].position, 10) == Reset(
            Position(epoch, 2), ResetReason.EVICTED
        )
        assert await a.read("t", Position(epoch, 2), 2) == Replay(
            tuple(stored[2:4]), stored[3].position, True
        )
        assert await a.read("t", EARLIEST, 10) == Replay(tuple(stored[2:]), stored[4].position)
        assert await a.read("t", Position(epoch, 6), 10) == Reset(
            stored[4].position, ResetReason.UNKNOWN_POSITION
        )


# -- expiry -------------------------------------------------------------------------------


async def _until_gone(history: RedisHistory, topic: str) -> None:
    """Wait (at most 5 s) until *topic* has expired.  Expiry is Redis's clock at work:
    there is no event to wait on, so this polls, briefly."""
    with trio.fail_after(5):
        while (await history.head(topic)).offset:  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.02)


async def test_an_idle_topic_expires_and_comes_back_with_a_new_epoch(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix, ttl=0.2) as a:
        old = await a.append("t", "old")
        await _until_gone(a, "t")
        assert await a.client.exists([f"{prefix}{{t}}:meta", f"{prefix}{{t}}:events"]) == 0
        fresh = await a.head("t")
        new = await a.append("t", "new")
        assert new.position.epoch != old.position.epoch
        assert new.position.offset == 1
        assert await a.read("t", old.position, 10) == Reset(
            Position(new.position.epoch, 0), ResetReason.UNKNOWN_EPOCH
        )
        # A position handed out while the topic did not exist replays it from the start.
        assert await a.read("t", fresh, 10) == Replay((new,), new.position)


async def test_appends_keep_a_topic_alive(redis_server: RedisServer, prefix: str) -> None:
    async with node(redis_server, prefix, ttl=0.3) as a:
        first = await a.append("t", "0")
        for index in range(1, 6):
            await trio.sleep(0.1)  # the point is time passing: less than the ttl each
            await a.append("t", str(index))
        assert (await a.head("t")) == Position(first.position.epoch, 6)


async def test_a_fresh_position_older_than_the_ttl_resets(
    redis_server: RedisServer, prefix: str
) -> None:
    """A topic may have lived and expired between a fresh position and now: the
    history cannot tell, so it resets (losing nothing) instead of replaying."""
    async with node(redis_server, prefix, ttl=0.1) as a:
        fresh = await a.head("t")
        await trio.sleep(0.2)  # longer than the ttl: the point is time passing
        stored = await a.append("t", "x")
        assert await a.read("t", fresh, 10) == Reset(
            Position(stored.position.epoch, 0), ResetReason.UNKNOWN_EPOCH
        )


# -- a connection cut in the middle of an append ----------------------------------------


class _ReplyCutter:
    """A TCP proxy to Redis that, when armed, lets the next ``EVALSHA`` through to Redis
    and then cuts that connection instead of passing the answer back."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.armed = False
        self.cuts = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        swallow = False

        async def up(scope: trio.CancelScope) -> None:
            nonlocal swallow
            while data := await client.receive_some():
                if self.armed and b"EVALSHA" in data:
                    self.armed = False
                    swallow = True
                await server.send_all(data)
            scope.cancel()

        async def down(scope: trio.CancelScope) -> None:
            while data := await server.receive_some():
                if swallow:
                    self.cuts += 1
                    break  # Redis has answered, so it ran the script: lose the answer
                await client.send_all(data)
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up, nursery.cancel_scope)
                nursery.start_soon(down, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(server)


@pytest.mark.parametrize("key", [None, "client-key"])
async def test_an_append_whose_answer_is_lost_is_retried_and_stored_once(
    redis_server: RedisServer, prefix: str, key: str | None
) -> None:
    async with trio.open_nursery() as nursery:
        proxy = _ReplyCutter(redis_server.port)
        await proxy.start(nursery)
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with open_redis_history(url, prefix=prefix) as history:
            warm = await history.append("t", "warm-up")  # loads the script
            proxy.armed = True
            with trio.fail_after(5):
                stored = await history.append("t", "once", key=key)
            assert proxy.cuts == 1
            assert stored.position == warm.position.next()
            assert await history.read("t", EARLIEST, 10) == Replay((warm, stored), stored.position)
        nursery.cancel_scope.cancel()
