"""open_event_stream: the EventSource model pumped over real sockets.

Most tests talk to a scripted server (tests/trio/_fake_http.py) so that every
response can be exact; the last ones talk to a foreign server (hypercorn +
sse-starlette in a subprocess) and to our own server through a proxy that cuts
connections at random.
"""

from __future__ import annotations

import itertools
import random
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from tidings.backoff import Backoff, NoJitter
from tidings.cursor import new_epoch
from tidings.errors import LocalProtocolError
from tidings.events import Event, ResetNotice
from tidings.history import MemoryHistory
from tidings.trio import Hub, Server, ServerConfig, serve
from tidings.trio.client.sse import (
    EventStream,
    EventStreamClosed,
    EventStreamFailed,
    open_event_stream,
)

try:
    from tests.trio._fake_http import SSE, FakeServer, Reply, Seen, sse_reply
    from tests.trio._proxy import ChaosProxy
    from tests.trio._tools import hypercorn_app
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _fake_http import SSE, FakeServer, Reply, Seen, sse_reply  # type: ignore[no-redef]
    from _proxy import ChaosProxy  # type: ignore[no-redef]
    from _tools import hypercorn_app  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def event(data: str, id: str, type: str = "message", topic: str | None = None) -> Event:
    return Event(topic, id, type, data)


async def take(events: EventStream, count: int) -> list[Event | ResetNotice]:
    out: list[Event | ResetNotice] = []
    async for item in events:
        out.append(item)
        if len(out) == count:
            break
    return out


# -- the happy path -------------------------------------------------------------------


async def test_events_arrive_in_order_with_their_ids_and_types(nursery: trio.Nursery) -> None:
    server = await FakeServer(
        lambda s, i: sse_reply(
            b": hello\n\nid: 1\ndata: a\n\n", b"id: 2\nevent: tick\ndata: b\ndata: c\n\n", hold=True
        )
    ).start(nursery)
    async with open_event_stream(server.url()) as events:
        assert await take(events, 2) == [event("a", "1"), event("b\nc", "2", "tick")]
        assert events.last_event_id == "2"
        assert events.http_version == "1.1"
        assert events.connections == 1
    seen = server.requests[0]
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.headers["cache-control"] == "no-cache"
    assert "last-event-id" not in seen.headers


async def test_last_event_id_argument_is_sent_on_the_first_request(
    nursery: trio.Nursery,
) -> None:
    server = await FakeServer(lambda s, i: sse_reply(b"data: x\n\n", hold=True)).start(nursery)
    async with open_event_stream(
        server.url(), last_event_id="e.41", headers={"X-Token": "t"}
    ) as events:
        assert await take(events, 1) == [event("x", "e.41")]
    assert server.requests[0].headers["last-event-id"] == "e.41"
    assert server.requests[0].headers["x-token"] == "t"


async def test_last_event_id_counts_only_consumed_events(nursery: trio.Nursery) -> None:
    body = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\n\n"  # one chunk; an id-only block
    server = await FakeServer(lambda s, i: sse_reply(body, hold=True)).start(nursery)
    async with open_event_stream(server.url(), last_event_id="0") as events:
        assert events.last_event_id == "0"
        assert await events.__anext__() == event("a", "1")
        assert events.last_event_id == "1"  # "b" arrived with it but is not consumed yet
        assert await events.__anext__() == event("b", "2")
        assert events.last_event_id == "3"


async def test_reset_events_are_surfaced_as_reset_notices(nursery: trio.Nursery) -> None:
    body = (
        b'id: E.7\nevent: tidings.reset\ndata: {"cursor":"E.7","reason":"evicted"}\n\n'
        b"id: E.8\ndata: next\n\n"
        b"event: tidings.reset\ndata: not json\n\n"
    )
    server = await FakeServer(lambda s, i: sse_reply(body, hold=True)).start(nursery)
    async with open_event_stream(server.url(), last_event_id="old.1") as events:
        assert await take(events, 3) == [
            ResetNotice(None, "E.7", "evicted"),
            event("next", "E.8"),
            event("not json", "E.8", "tidings.reset"),  # not a valid reset: passed on as is
        ]


async def test_closing_the_block_closes_the_connection(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: sse_reply(b"data: x\n\n", hold=True)).start(nursery)
    async with open_event_stream(server.url()) as events:
        await take(events, 1)
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()


# -- reconnecting ---------------------------------------------------------------------


async def test_end_of_body_reconnects_with_the_last_event_id(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    bodies = [b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: cut", b"id: 3\ndata: c\n\n"]

    def respond(seen: Seen, index: int) -> Reply:
        return sse_reply(bodies[index], hold=index == 1)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), connect_timeout=None) as events:
        got = await take(events, 3)
    assert got == [event("a", "1"), event("b", "2"), event("c", "3")]
    # The event cut off by the end of the body did not count.
    assert server.requests[1].headers["last-event-id"] == "2"


async def test_network_errors_are_retried_with_backoff(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index < 3:
            return Reply(raw=b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")  # cut
        return sse_reply(b"data: finally\n\n", hold=True)

    server = await FakeServer(respond).start(nursery)
    backoff = Backoff(NoJitter(base=1.0, factor=2.0, cap=60.0))
    async with open_event_stream(server.url(), connect_timeout=None, backoff=backoff) as events:
        assert await take(events, 1) == [event("finally", "")]
    gaps = [b.at - a.at for a, b in zip(server.requests, server.requests[1:], strict=False)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0])


async def test_server_retry_is_the_floor_of_the_reconnect_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return sse_reply(b"retry: 5000\n\n")  # ends without a new event
        return sse_reply(b"id: 1\ndata: a\n\n", hold=True)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(
        server.url(), connect_timeout=None, rng=random.Random(7)
    ) as events:
        await take(events, 1)
        assert events.reconnection_time == 5.0
    gap = server.requests[1].at - server.requests[0].at
    assert 5.0 <= gap <= 6.0  # the floor, then U(0, 1) of jitter above it


async def test_after_new_events_the_stream_resumes_without_waiting_the_retry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        return sse_reply(b"retry: 5000\nid: %d\ndata: a\n\n" % index, hold=index == 3)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(
        server.url(), connect_timeout=None, rng=random.Random(7)
    ) as events:
        await take(events, 4)
    gaps = [b.at - a.at for a, b in itertools.pairwise(server.requests)]
    assert len(gaps) == 3
    assert all(gap <= 1.0 for gap in gaps)  # U(0, 1) each: every connection made progress


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_server_is_waited_for_with_retry_after_as_a_floor(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, status: int
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return Reply(status=status, headers=[("retry-after", "2")], chunks=[b"busy"])
        return sse_reply(b"id: 1\ndata: here\n\n", hold=True)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), connect_timeout=None) as events:
        assert await take(events, 1) == [event("here", "1")]
    gap = server.requests[1].at - server.requests[0].at
    assert 2.0 <= gap <= 3.0


async def test_a_hostile_http2_status_is_a_network_error_and_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return Reply(h2_head=[(":status", "abc"), SSE])
        return sse_reply(b"id: 1\ndata: here\n\n", hold=True)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), connect_timeout=None, http2=True) as events:
        assert await take(events, 1) == [event("here", "1")]
    assert len(server.requests) == 2


@pytest.mark.parametrize("http2", [False, True])
@pytest.mark.parametrize("status", [600, 999])
async def test_a_status_beyond_599_ends_the_stream(
    nursery: trio.Nursery, http2: bool, status: int
) -> None:
    server = await FakeServer(lambda s, i: Reply(status=status)).start(nursery)
    if http2:
        server.respond = lambda s, i: Reply(h2_head=[(":status", str(status)), SSE])
    async with open_event_stream(server.url(), http2=http2) as events:
        with pytest.raises(EventStreamFailed, match=str(status)) as info:
            await events.__anext__()
    assert info.value.status == status
    assert len(server.requests) == 1


async def test_max_retries_ends_the_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await FakeServer(lambda s, i: Reply(status=503, headers=[])).start(nursery)
    async with open_event_stream(server.url(), connect_timeout=None, max_retries=2) as events:
        with pytest.raises(EventStreamFailed, match="gave up after 2 retries") as info:
            await events.__anext__()
    assert info.value.status == 503
    assert len(server.requests) == 3


async def test_strict_mode_fails_on_a_503_as_a_browser_does(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: Reply(status=503, headers=[])).start(nursery)
    async with open_event_stream(server.url(), strict=True) as events:
        with pytest.raises(EventStreamFailed, match="503"):
            await events.__anext__()
    assert len(server.requests) == 1


async def test_events_of_a_topic_url_carry_the_topic(nursery: trio.Nursery) -> None:
    body = b'id: E.7\nevent: tidings.reset\ndata: {"cursor":"E.7"}\n\nid: E.8\ndata: x\n\n'
    server = await FakeServer(lambda s, i: sse_reply(body, hold=True)).start(nursery)
    async with open_event_stream(server.url("/base/topics/a%2Db/events?x=1")) as events:
        assert events.topic == "a-b"
        assert await take(events, 2) == [ResetNotice("a-b", "E.7"), event("x", "E.8", topic="a-b")]


async def test_idle_timeout_counts_as_a_network_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        return sse_reply(b"id: %d\ndata: x\n\n" % index, hold=True)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), connect_timeout=None, idle_timeout=30) as events:
        assert await take(events, 2) == [event("x", "0"), event("x", "1")]
    assert server.requests[1].headers["last-event-id"] == "0"
    assert server.requests[1].at - server.requests[0].at >= 30


async def test_redirects_are_followed_and_reconnections_start_from_the_original_url(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if seen.target == "/old":
            return Reply(status=307, headers=[("location", "/new?x=1")])
        return sse_reply(b"id: %d\ndata: x\n\n" % index, hold=index > 1)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url("/old"), connect_timeout=None) as events:
        await take(events, 2)
    assert [r.target for r in server.requests] == ["/old", "/new?x=1", "/old", "/new?x=1"]
    assert server.requests[2].headers["last-event-id"] == "1"


async def test_too_many_redirects_fail(nursery: trio.Nursery) -> None:
    server = await FakeServer(
        lambda s, i: Reply(status=302, headers=[("location", "/loop")])
    ).start(nursery)
    async with open_event_stream(server.url(), max_redirects=3) as events:
        with pytest.raises(EventStreamFailed, match="more than 3 redirects") as info:
            await events.__anext__()
    assert info.value.status == 302
    assert len(server.requests) == 4


# -- stopping for good ----------------------------------------------------------------


async def test_204_stops_the_stream_with_event_stream_closed(nursery: trio.Nursery) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        if index == 0:
            return sse_reply(b"id: 1\ndata: a\n\n")
        return Reply(status=204, headers=[])

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), backoff=Backoff(NoJitter(base=0.001))) as events:
        assert await events.__anext__() == event("a", "1")
        with pytest.raises(EventStreamClosed) as info:
            await events.__anext__()
        assert info.value.status == 204
        # The error is final: asking again gives the same answer without reconnecting.
        with pytest.raises(EventStreamClosed):
            await events.__anext__()
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("status", "headers", "match"),
    [
        (501, [SSE], "HTTP 501 Not Implemented"),
        (404, [("content-type", "text/html")], "HTTP 404 Not Found"),
        (200, [("content-type", "text/plain")], "not text/event-stream"),
        (200, [], "no Content-Type"),
    ],
)
async def test_bad_status_or_media_type_fails_without_retrying(
    nursery: trio.Nursery, status: int, headers: list[tuple[str, str]], match: str
) -> None:
    server = await FakeServer(lambda s, i: Reply(status=status, headers=headers)).start(nursery)
    async with open_event_stream(server.url()) as events:
        with pytest.raises(EventStreamFailed, match=match) as info:
            await events.__anext__()
    assert info.value.status == status
    assert info.value.content_type == (dict(headers).get("content-type"))
    assert len(server.requests) == 1


async def test_an_event_beyond_the_size_limit_fails_the_stream(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: sse_reply(b"data: " + b"x" * 100 + b"\n\n")).start(
        nursery
    )
    async with open_event_stream(server.url(), max_event_size=50) as events:
        with pytest.raises(EventStreamFailed, match="invalid event stream"):
            await events.__anext__()


def test_reserved_headers_and_bad_options_are_refused() -> None:
    async def main() -> None:
        for kwargs in (
            {"headers": {"Last-Event-ID": "x"}},
            {"headers": [("accept", "*/*")]},
            {"max_redirects": -1},
            {"idle_timeout": 0},
            {"last_event_id": "bad\nid"},
        ):
            with pytest.raises(LocalProtocolError):
                async with open_event_stream("http://127.0.0.1:1/", **kwargs):  # type: ignore[arg-type]
                    pass  # pragma: no cover

    trio.run(main)


# -- HTTP/2 ---------------------------------------------------------------------------


async def test_http2_prior_knowledge_stream_resumes_like_http11(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def respond(seen: Seen, index: int) -> Reply:
        return sse_reply(b"id: %d\ndata: h2\n\n" % index, hold=index > 0)

    server = await FakeServer(respond).start(nursery)
    async with open_event_stream(server.url(), http2=True, connect_timeout=None) as events:
        assert await take(events, 2) == [event("h2", "0"), event("h2", "1")]
        assert events.http_version == "2"
    assert [r.http_version for r in server.requests] == ["2", "2"]
    assert server.requests[1].headers["last-event-id"] == "0"


@pytest.mark.parametrize(("offered", "version"), [(["h2", "http/1.1"], "2"), (["http/1.1"], "1.1")])
async def test_tls_alpn_picks_http2_when_the_server_offers_it(
    nursery: trio.Nursery, ca: trustme.CA, offered: list[str], version: str
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(offered)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await FakeServer(
        lambda s, i: sse_reply(b"data: secret\n\n", hold=True), tls=server_ctx
    ).start(nursery)
    async with open_event_stream(server.url(), ssl_context=client_ctx) as events:
        assert await take(events, 1) == [event("secret", "")]
        assert events.http_version == version


# -- a foreign server: hypercorn + sse-starlette ----------------------------------------

PEERS = Path(__file__).parent / "peers"


@pytest.fixture
async def peer(nursery: trio.Nursery) -> AsyncIterator[str]:
    """The URL of tests/trio/peers/starlette_sse.py served by hypercorn (trio worker)."""
    async with hypercorn_app(nursery, "starlette_sse:app", pythonpath=str(PEERS)) as (url, _):
        yield url


@pytest.mark.parametrize("http2", [False, True])
async def test_foreign_server_stream_is_followed_across_its_ends(peer: str, http2: bool) -> None:
    # The peer ends every response after three events and resumes from Last-Event-ID.
    async with open_event_stream(
        peer + "/events", http2=http2, backoff=Backoff(NoJitter(base=0.01, cap=0.01))
    ) as events:
        got = await take(events, 10)
        assert events.connections == 4
    assert [(e.id, e.data) for e in got if isinstance(e, Event)] == [
        (str(i), f"event {i}") for i in range(1, 11)
    ]


# -- no loss through a connection-cutting proxy ----------------------------------------


@pytest.mark.parametrize("http2", [False, True])
async def test_no_event_is_lost_or_repeated_when_connections_are_cut(
    nursery: trio.Nursery, http2: bool
) -> None:
    total = 10_000
    hub = Hub(MemoryHistory(new_epoch(random.Random(5)), max_events=total + 1))
    server: Server = await nursery.start(partial(serve, hub, 0, config=ServerConfig(sse_retry=1)))
    proxy = await ChaosProxy(server.port, random.Random(11), max_cuts=40, max_bytes=16384).start(
        nursery
    )
    published = trio.Event()

    async def publish() -> None:
        for i in range(total):
            await hub.publish("chaos", f"event {i}")  # a checkpoint: the stream interleaves
        published.set()

    received: list[str] = []
    with trio.fail_after(60):
        async with open_event_stream(
            proxy.url("/topics/chaos/events"),
            http2=http2,
            last_event_id=hub.history.memory.head("chaos").format(),
            backoff=Backoff(NoJitter(base=0.001, cap=0.01)),
        ) as events:
            nursery.start_soon(publish)
            async for item in events:
                assert isinstance(item, Event), item  # never a reset: history holds all
                received.append(item.data)
                if len(received) == total:
                    break
            connections = events.connections
    assert published.is_set()
    assert received == [f"event {i}" for i in range(total)]
    assert proxy.cuts >= 20
    assert connections > proxy.cuts // 2
    server.drain()
