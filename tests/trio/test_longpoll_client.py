"""``open_long_poll``: the Trio pump around ``LongPollClient``, against the real server
(and a fake one for statuses the real server never sends), over 127.0.0.1."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio
import trio.testing

from tidings.backoff import Backoff, NoJitter
from tidings.cursor import Position, new_epoch
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.events import Event, ResetNotice
from tidings.history import MemoryHistory
from tidings.longpoll import AdaptivePoller, PollRejected
from tidings.trio import Hub, LongPoll, Server, ServerConfig, open_long_poll, serve

try:
    from tests.trio._fake_http import FakeServer, Reply, Seen
    from tests.trio._proxy import ChaosProxy
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _fake_http import FakeServer, Reply, Seen  # type: ignore[no-redef]
    from _proxy import ChaosProxy  # type: ignore[no-redef]

POLL = "/topics/t/poll"
FAST = Backoff(NoJitter(base=0.001, cap=0.01))


async def take(poll: LongPoll, count: int) -> list[Event | ResetNotice]:
    out: list[Event | ResetNotice] = []
    async for item in poll:
        out.append(item)
        if len(out) == count:
            break
    return out


async def take_live(poll: LongPoll, hub: Hub, data: str) -> list[Event | ResetNotice]:
    """Publish *data* on topic t once *poll*'s request is held; take what it brings."""

    async def later() -> None:
        while hub.subscriber_count("t") < 1:
            await trio.testing.wait_all_tasks_blocked()
        await hub.publish("t", data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        return await take(poll, 1)


async def test_replays_from_earliest_then_follows_live_events(server: Server, hub: Hub) -> None:
    a = await hub.publish("t", "a")
    b = await hub.publish("t", "b", event="tick")
    with trio.fail_after(5):
        async with open_long_poll(server.url + POLL, cursor="earliest") as poll:
            first = await take(poll, 2)
            assert poll.cursor == b.format()
            third = await take_live(poll, hub, "c")
            assert poll.http_version == "1.1"
    assert first == [
        Event("t", a.format(), "message", "a"),
        Event("t", b.format(), "tick", "b"),
    ]
    assert [item.data for item in third if isinstance(item, Event)] == ["c"]


async def test_a_start_cursor_that_was_evicted_yields_a_reset_then_live_events(
    server: Server, hub: Hub
) -> None:
    first = await hub.publish("t", "0")
    for i in range(1, 120):  # the fixture's history keeps 100
        head = await hub.publish("t", str(i))
    cursor = Position(head.epoch, head.offset - 100).format()
    with trio.fail_after(5):
        async with open_long_poll(server.url + POLL, cursor=first.format(), http2=True) as poll:
            reset = await take(poll, 1)
            assert poll.cursor == cursor
            retained = await take(poll, 100)  # every event still retained follows
            assert poll.cursor == head.format()
            fresh = await take_live(poll, hub, "fresh")
            assert poll.http_version == "2"
    assert reset == [ResetNotice("t", cursor, "evicted")]
    assert [item.data for item in retained] == [str(i) for i in range(20, 120)]  # type: ignore[union-attr]
    assert isinstance(fresh[0], Event)
    assert fresh[0].data == "fresh"


async def test_timeout_answers_are_followed_by_new_polls_without_loss(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub
) -> None:
    start = hub.history.memory.head("t").format()
    async with open_long_poll(server.url + POLL, cursor=start, hold=2) as poll:

        async def later() -> None:
            await trio.sleep(7)  # mock time: several empty answers go by
            await hub.publish("t", "late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            got = await take(poll, 1)
        assert poll.requests >= 3
    assert isinstance(got[0], Event)
    assert got[0].data == "late"


async def test_conditional_short_polling_with_an_adaptive_poller(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub
) -> None:
    start = (await hub.publish("t", "seen")).format()
    poller = AdaptivePoller(active=1, idle=8)
    async with open_long_poll(server.url + POLL, cursor=start, poller=poller) as poll:

        async def later() -> None:
            await trio.sleep(30)
            await hub.publish("t", "news")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            got = await take(poll, 1)
        # Growing intervals (1, 1.5, 2.25, ... capped at 8): far fewer than 30 polls.
        assert 5 <= poll.requests <= 12
    assert poller.interval == 1  # back to active after the change
    assert isinstance(got[0], Event)
    assert got[0].data == "news"


async def test_network_failures_are_retried_from_the_same_cursor(
    nursery: trio.Nursery, hub: Hub
) -> None:
    # Nothing listens at first: connecting fails until the server appears.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    stored = await hub.publish("t", "waiting")

    with trio.fail_after(10):
        async with open_long_poll(
            f"http://127.0.0.1:{port}{POLL}", cursor="earliest", backoff=FAST
        ) as poll:

            async def appear() -> None:
                while poll.failures < 3:
                    await trio.testing.wait_all_tasks_blocked()
                await nursery.start(partial(serve, hub, port))

            nursery.start_soon(appear)
            got = await take(poll, 1)
            assert poll.failures >= 3
    assert got == [Event("t", stored.format(), "message", "waiting")]


async def test_a_404_ends_the_poll_with_poll_rejected(server: Server) -> None:
    with trio.fail_after(5):
        async with open_long_poll(server.url + "/nope/poll") as poll:
            with pytest.raises(PollRejected) as info:
                await take(poll, 1)
    assert info.value.status == 404


async def test_a_hostile_http2_status_is_a_network_error_and_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    answer = (
        b'{"events": [{"id": "e.1", "event": "message", "data": "x"}], '
        b'"cursor": "e.1", "reset": false}'
    )
    json = ("content-type", "application/json")

    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return Reply(h2_head=[(":status", "2x0"), json])
        return Reply(headers=[json], chunks=[answer], hold=index > 1)

    server = await FakeServer(respond).start(nursery)
    async with open_long_poll(server.url(POLL), http2=True, backoff=FAST) as poll:
        assert await take(poll, 1) == [Event("t", "e.1", "message", "x")]
        assert poll.failures == 1


@pytest.mark.parametrize("http2", [False, True])
@pytest.mark.parametrize("status", [600, 999])
async def test_a_status_beyond_599_ends_the_poll_with_poll_rejected(
    nursery: trio.Nursery, http2: bool, status: int
) -> None:
    server = await FakeServer(lambda s, i: Reply(status=status)).start(nursery)
    if http2:
        server.respond = lambda s, i: Reply(h2_head=[(":status", str(status))])
    with trio.fail_after(5):
        async with open_long_poll(server.url(POLL), http2=http2) as poll:
            with pytest.raises(PollRejected) as info:
                await take(poll, 1)
    assert info.value.status == status
    assert len(server.requests) == 1


async def test_a_200_that_is_not_a_poll_answer_is_a_protocol_error(server: Server) -> None:
    with trio.fail_after(5):
        async with open_long_poll(server.url + "/healthz") as poll:
            with pytest.raises(RemoteProtocolError):
                await take(poll, 1)


async def test_a_drain_sends_the_client_back_without_loss(nursery: trio.Nursery, hub: Hub) -> None:
    first: Server = await nursery.start(partial(serve, hub, 0))
    start = hub.history.memory.head("t").format()
    with trio.fail_after(5):
        async with open_long_poll(
            first.url + POLL, cursor=start, backoff=FAST, min_interval=0.01
        ) as poll:

            async def drain_then_publish() -> None:
                while hub.subscriber_count("t") < 1:
                    await trio.testing.wait_all_tasks_blocked()
                first.drain()
                await first.wait_drained()
                await nursery.start(partial(serve, hub, first.port))
                await hub.publish("t", "after drain")

            nursery.start_soon(drain_then_publish)
            got = await take(poll, 1)
    assert isinstance(got[0], Event)
    assert got[0].data == "after drain"


def test_bad_arguments_are_refused_before_any_request() -> None:
    async def open_with(**kwargs: object) -> None:
        async with open_long_poll(**kwargs):  # type: ignore[arg-type]
            pass

    for kwargs in (
        {"url": "ftp://h/poll"},
        {"url": "http://h/poll", "cursor": "not a cursor"},
        {"url": "http://h/poll?cursor=x"},
        {"url": "http://h/poll", "headers": {"If-None-Match": '"x"'}},
        {"url": "http://h/poll", "connect_timeout": 0},
    ):
        with pytest.raises(LocalProtocolError):
            trio.run(partial(open_with, **kwargs))


@pytest.mark.parametrize("http2", [False, True])
async def test_no_event_is_lost_or_repeated_when_connections_are_cut(
    nursery: trio.Nursery, http2: bool
) -> None:
    total = 10_000
    hub = Hub(MemoryHistory(new_epoch(random.Random(5)), max_events=total + 1))
    server: Server = await nursery.start(partial(serve, hub, 0, config=ServerConfig()))
    proxy = await ChaosProxy(server.port, random.Random(11), max_cuts=40, max_bytes=8192).start(
        nursery
    )
    published = trio.Event()

    async def publish() -> None:
        for i in range(total):
            await hub.publish("chaos", f"event {i}")  # a checkpoint: polls interleave
        published.set()

    received: list[str] = []
    ids: list[str] = []
    with trio.fail_after(60):
        async with open_long_poll(
            proxy.url("/topics/chaos/poll"),
            cursor=hub.history.memory.head("chaos").format(),
            http2=http2,
            backoff=FAST,
            limit=500,
        ) as poll:
            nursery.start_soon(publish)
            async for item in poll:
                assert isinstance(item, Event), item  # never a reset: history holds all
                received.append(item.data)
                ids.append(item.id)
                if len(received) == total:
                    break
            failures = poll.failures
    assert published.is_set()
    assert received == [f"event {i}" for i in range(total)]
    assert len(set(ids)) == total
    assert proxy.cuts >= 20
    assert failures >= proxy.cuts // 2
    server.drain()
