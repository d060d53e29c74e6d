"""The Redis history under load: thousands of calls at once wait their turn (at most
``max_calls`` in flight) instead of timing out together, a wait for a turn never
makes the history unhealthy, and identical reads waiting together share one
command -- but only until it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from tidings.cursor import Position
from tidings.redis import DEFAULT_MAX_CALLS, RedisHistory, open_redis_history
from tidings.trio.history import HistoryUnavailable

try:
    from tests.redis._redis import RecordingFeed, RedisServer
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _redis import RecordingFeed, RedisServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60), pytest.mark.deadline(50)]


@pytest.fixture
def running(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's server, running (not paused) after the test whatever it did."""
    yield redis_server
    redis_server.resume()


@asynccontextmanager
async def node(server: RedisServer, prefix: str, **options: Any) -> AsyncIterator[RedisHistory]:
    async with open_redis_history(server.url, prefix=prefix, **options) as history:
        history.bind(RecordingFeed())
        yield history


async def scripts_run(history: RedisHistory) -> int:
    """How many scripts (``EVALSHA``) the Redis server has run so far."""
    stats = await history.client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    assert isinstance(evalsha, dict)
    calls = evalsha.get("calls", 0)
    assert isinstance(calls, int)
    return calls


async def test_thousands_of_reads_at_once_all_succeed(
    redis_server: RedisServer, prefix: str
) -> None:
    """5 000 heads of 5 000 topics at once, with a timeout far below the time all of
    them take: each is timed from its turn, so none fails and Redis stays healthy."""
    async with node(redis_server, prefix, operation_timeout=0.5) as history:
        assert history.max_calls == DEFAULT_MAX_CALLS
        heads: dict[int, Position] = {}

        async def head(index: int) -> None:
            heads[index] = await history.head(f"t{index}")

        async with trio.open_nursery() as nursery:
            for index in range(5000):
                nursery.start_soon(head, index)
        assert len(heads) == 5000
        assert all(position.offset == 0 for position in heads.values())
        assert history.healthy


async def test_identical_reads_waiting_together_share_one_command(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as history:
        stored = await history.append("t", "one")
        before = await scripts_run(history)
        heads: list[Position] = []

        async def head() -> None:
            heads.append(await history.head("t"))

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(head)
        assert heads == [stored.position] * 1000
        # One read (perhaps two: the first may be sent before the others arrive).
        assert await scripts_run(history) - before <= 2


async def test_a_read_sent_is_not_shared_with_later_callers(
    redis_server: RedisServer, prefix: str
) -> None:
    async with node(redis_server, prefix) as history:
        before = await scripts_run(history)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.head, "t")
            # The first read has been sent (or even answered) when every task waits.
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(history.head, "t")
        assert await scripts_run(history) - before == 2
        # Reads of other positions, limits or topics never share.
        before = await scripts_run(history)
        stored = await history.append("t", "one")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.read, "t", stored.position, 10)
            nursery.start_soon(history.read, "t", stored.position, 11)
            nursery.start_soon(history.read, "t", "earliest", 10)
            nursery.start_soon(history.head, "u")
        assert await scripts_run(history) - before == 5  # the append and 4 reads


async def test_readers_read_again_when_the_caller_sending_their_read_is_cancelled(
    running: RedisServer, prefix: str
) -> None:
    async with node(running, prefix, max_calls=1, operation_timeout=10) as history:
        stored = await history.append("t", "one")
        running.pause()
        answers: dict[str, Position] = {}
        scopes: dict[str, trio.CancelScope] = {}

        async def head(name: str, topic: str) -> None:
            with trio.CancelScope() as scopes[name]:
                answers[name] = await history.head(topic)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head, "other", "u")  # takes the one turn, waits for Redis
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(head, "first", "t")  # waits for the turn...
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(head, "second", "t")  # ...and this one joins its read
            await trio.testing.wait_all_tasks_blocked()
            scopes["first"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            running.resume()
        assert answers["other"].offset == 0
        assert "first" not in answers
        assert answers["second"] == stored.position


async def test_waiting_for_a_turn_fails_at_once_when_redis_stalls(
    running: RedisServer, prefix: str
) -> None:
    """One turn, a stalled Redis: the first call times out after its 0.5 s, and the
    five waiting behind it fail then too instead of taking their 0.5 s each."""
    async with node(running, prefix, max_calls=1, operation_timeout=0.5) as history:
        await history.head("t")
        running.pause()
        failed: list[str] = []

        async def head(topic: str) -> None:
            with pytest.raises(HistoryUnavailable) as info:
                await history.head(topic)
            failed.append(str(info.value))

        with trio.fail_after(1.5):  # 6 x 0.5 s if each waited for its own timeout
            async with trio.open_nursery() as nursery:
                for index in range(6):
                    nursery.start_soon(head, f"t{index}")
        assert len(failed) == 6
        assert not history.healthy
        with trio.fail_after(1.0):  # no free turn is waited for now: it fails at once
            async with trio.open_nursery() as nursery:
                nursery.start_soon(head, "a")
                nursery.start_soon(head, "b")
        running.resume()
        assert (await history.head("t")).offset == 0
        assert history.healthy


async def test_no_answer_while_redis_answers_others_is_not_redis_failing(
    redis_server: RedisServer, prefix: str
) -> None:
    """A command whose answer this process did not read in time (here: never sent, as
    if the process were too busy) fails, but Redis answered others meanwhile: the
    history stays healthy.  With nothing answered meanwhile, Redis is unreachable."""
    async with node(redis_server, prefix, operation_timeout=0.5) as history:
        script = history._read_script

        async def stuck_for_u(*, keys: Any, args: Any) -> object:
            if keys[0].endswith(b"{u}:meta"):
                await trio.sleep_forever()
            return await script(keys=keys, args=args)

        history._read_script = stuck_for_u  # type: ignore[assignment]

        async def stuck() -> None:
            with pytest.raises(HistoryUnavailable):
                await history.head("u")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck)
            await trio.testing.wait_all_tasks_blocked()
            assert (await history.head("t")).offset == 0
        assert history.healthy
        await stuck()
        assert not history.healthy
        assert (await history.head("t")).offset == 0
        assert history.healthy
