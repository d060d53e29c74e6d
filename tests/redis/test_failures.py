"""The Redis history when Redis fails: killed, restarted on the same port, stalled,
or never there.  Operations raise ``HistoryUnavailable`` within 5 s and never hang;
the live feed comes back by itself and says that events may have been missed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from tidings.cursor import EARLIEST
from tidings.history import Replay
from tidings.redis import DEFAULT_TIMEOUT, open_redis_history
from tidings.trio.history import HistoryUnavailable

try:
    from tests.redis._redis import RecordingFeed, RedisServer
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _redis import RecordingFeed, RedisServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60), pytest.mark.deadline(50)]

#: The bound the failure contract sets: a publish gets its 503 within this.
UNAVAILABLE_WITHIN = 5.0


@pytest.fixture
def running(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's server, running again after the test whatever the test did."""
    yield redis_server
    if redis_server.process is None:
        redis_server.start()


async def _unavailable(operation: object) -> float:
    """Await *operation*, which must raise ``HistoryUnavailable`` within 5 s; return
    how long that took."""
    start = trio.current_time()
    with trio.fail_after(UNAVAILABLE_WITHIN), pytest.raises(HistoryUnavailable):
        await operation  # type: ignore[misc]
    return trio.current_time() - start


def test_the_default_timeout_is_within_the_contract() -> None:
    assert DEFAULT_TIMEOUT < UNAVAILABLE_WITHIN


async def test_killed_redis_fails_fast_then_the_feed_comes_back_by_itself(
    running: RedisServer, prefix: str
) -> None:
    async with (
        open_redis_history(running.url, prefix=prefix) as a,
        open_redis_history(running.url, prefix=prefix) as b,
    ):
        feed = RecordingFeed()
        a.bind(feed)
        await a.watch("t")
        before = await b.append("t", "before")
        await feed.wait_until(lambda: len(feed.events) == 1)

        running.kill()
        for operation in (a.append("t", "lost"), a.read("t", EARLIEST, 10), a.head("t")):
            assert await _unavailable(operation) < 1.0  # refused at once: no waiting
        assert not a.healthy
        assert not await a.ping()
        with trio.fail_after(UNAVAILABLE_WITHIN):
            await a.watch("u")  # registered; subscribed once Redis is back
        assert a.watched == {"t", "u"}

        running.start()  # on the same port, empty: a new epoch
        await feed.wait_until(lambda: None in feed.lost, within=10)
        assert a.healthy
        after_t = await b.append("t", "after")
        after_u = await b.append("u", "after")
        await feed.wait_until(lambda: len(feed.events) == 3)
        assert feed.events == [("t", before), ("t", after_t), ("u", after_u)]
        assert after_t.position.epoch != before.position.epoch
        assert await a.read("t", EARLIEST, 10) == Replay((after_t,), after_t.position)


async def test_the_feed_survives_more_restarts_than_its_pool_has_connections(
    running: RedisServer, prefix: str
) -> None:
    """coredis 6.9 loses a pool slot for each held connection that breaks: the PUB/SUB
    connection must not come out of a pool that outlives it."""
    async with (
        open_redis_history(f"{running.url}?max_connections=2", prefix=prefix) as a,
        open_redis_history(running.url, prefix=prefix) as b,
    ):
        feed = RecordingFeed()
        a.bind(feed)
        await a.watch("t")
        for restart in range(1, 4):
            running.kill()
            running.start()
            await feed.wait_until(lambda restart=restart: len(feed.lost) == restart, within=10)
            stored = await b.append("t", str(restart))
            await feed.wait_until(lambda stored=stored: feed.of("t")[-1:] == [stored])
            assert (await a.append("t", "a")).position == stored.position.next()


async def test_stalled_redis_raises_within_the_timeout_and_recovers(
    running: RedisServer, prefix: str
) -> None:
    """A stopped process keeps its sockets open and answers nothing: the worst case,
    bounded by ``operation_timeout`` (the default)."""
    async with open_redis_history(running.url, prefix=prefix) as history:
        first = await history.append("t", "first")
        running.pause()
        try:
            elapsed: list[float] = []

            async def measure(operation: object) -> None:
                elapsed.append(await _unavailable(operation))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(measure, history.append("t", "stalled"))
                nursery.start_soon(measure, history.read("t", EARLIEST, 10))
            assert all(DEFAULT_TIMEOUT - 0.1 < t < UNAVAILABLE_WITHIN for t in elapsed)
            assert not history.healthy
        finally:
            running.resume()
        # The stalled append reached Redis before it stopped: it is stored after all
        # (once), although its caller was told otherwise.  See the append docstring.
        last = await history.append("t", "last")
        answer = await history.read("t", EARLIEST, 10)
        assert isinstance(answer, Replay)
        assert [e.data for e in answer.events] in (
            ["first", "last"],
            ["first", "stalled", "last"],
        )
        assert answer.events[0] == first
        assert answer.events[-1] == last


async def test_opening_fails_when_redis_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(UNAVAILABLE_WITHIN), pytest.raises(HistoryUnavailable):
        async with open_redis_history(f"redis://127.0.0.1:{port}/0", operation_timeout=0.5):
            pass
