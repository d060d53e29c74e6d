"""httpx + httpx-sse as a client of our server, over HTTP/1.1, HTTP/2 with prior
knowledge and HTTP/2 over TLS (ALPN).

httpx runs inside Trio through anyio.  httpx-sse does not reconnect by itself, so
the resume tests do what its users do: remember the last ``id`` and reconnect with
it in ``Last-Event-ID``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trustme
from httpx_sse import ServerSentEvent, aconnect_sse

from tidings.cursor import Position
from tidings.trio import CloseReason, Hub, Server, ServerConfig

if TYPE_CHECKING:
    from conftest import StartServer

pytestmark = [
    pytest.mark.timeout(30),
    # httpx leaves its inner async generators (aiter_text -> aiter_bytes -> ...) to
    # the garbage collector when a stream is closed before its end, which Trio
    # reports.  That is httpx's business, not the server's.
    pytest.mark.filterwarnings("ignore:Async generator 'http(x|core)[.]:ResourceWarning"),
]

TOPIC = "t"


@dataclass
class Endpoint:
    """A running server and how httpx should talk to it."""

    server: Server
    client_options: dict[str, Any]
    #: ``response.http_version`` expected.
    version: str

    def url(self, path: str) -> str:
        return f"{self.server.url}{path}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(10.0), **self.client_options)


@pytest.fixture(params=["http1.1", "h2c-prior-knowledge", "h2-tls"])
async def endpoint(
    request: pytest.FixtureRequest, start_server: StartServer, ca: trustme.CA
) -> Endpoint:
    config = ServerConfig()
    if request.param == "http1.1":
        server = await start_server(config=config)
        return Endpoint(server, {"http1": True, "http2": False}, "HTTP/1.1")
    if request.param == "h2c-prior-knowledge":
        server = await start_server(config=config)
        return Endpoint(server, {"http1": False, "http2": True}, "HTTP/2")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = await start_server(config=config, ssl_context=server_context)
    assert server.url.startswith("https://")
    return Endpoint(server, {"http2": True, "verify": client_context}, "HTTP/2")


async def publish(hub: Hub, *numbers: int, event: str | None = None) -> list[Position]:
    return [(await hub.publish(TOPIC, f"event {n}", event)) for n in numbers]


async def take(events: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    return [await anext(events) for _ in range(count)]


def described(events: list[ServerSentEvent]) -> list[tuple[str, str, str]]:
    return [(sse.event, sse.id, sse.data) for sse in events]


async def test_httpx_sse_reads_replayed_then_live_events_with_ids(
    endpoint: Endpoint, hub: Hub
) -> None:
    positions = await publish(hub, 1, 2, 3, 4, 5)
    async with (
        endpoint.client() as client,
        aconnect_sse(
            client,
            "GET",
            endpoint.url(f"/topics/{TOPIC}/events"),
            headers={"Last-Event-ID": positions[1].format()},
        ) as source,
    ):
        response = source.response
        assert response.status_code == 200
        assert response.http_version == endpoint.version
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        assert "content-encoding" not in response.headers  # httpx asks for gzip
        events = source.aiter_sse()
        # httpx-sse surfaces the opening ``retry:`` block as an empty event.
        [opening] = await take(events, 1)
        assert (opening.retry, opening.data) == (3000, "")
        replayed = await take(events, 3)
        assert described(replayed) == [
            ("message", positions[n - 1].format(), f"event {n}") for n in (3, 4, 5)
        ]
        live = await publish(hub, 6) + await publish(hub, 7, event="typed")
        assert described(await take(events, 2)) == [
            ("message", live[0].format(), "event 6"),
            ("typed", live[1].format(), "event 7"),
        ]
        await events.aclose()


@pytest.mark.parametrize("cut", [CloseReason.CUT, CloseReason.CLOSED], ids=["abrupt", "end"])
async def test_httpx_sse_resumes_after_a_server_cut_from_the_last_id_it_saw(
    endpoint: Endpoint, hub: Hub, cut: CloseReason
) -> None:
    url = endpoint.url(f"/topics/{TOPIC}/events")
    async with endpoint.client() as client:
        async with aconnect_sse(client, "GET", url) as source:
            events = source.aiter_sse()
            # The opening retry is sent once the server subscribed (live from now).
            assert (await anext(events)).retry == 3000
            first = await publish(hub, 1, 2, 3)
            seen = await take(events, 3)
            assert [sse.id for sse in seen] == [p.format() for p in first]
            [subscription] = endpoint.server.app.subscriptions
            subscription.close(cut)
            if cut is CloseReason.CUT:
                # An abrupt cut is a transport error, never a clean end of stream.
                with pytest.raises(httpx.TransportError):
                    await anext(events)
            else:
                with pytest.raises(StopAsyncIteration):
                    await anext(events)
            await events.aclose()
        missed = await publish(hub, 4, 5)
        async with aconnect_sse(
            client, "GET", url, headers={"Last-Event-ID": seen[-1].id}
        ) as source:
            events = source.aiter_sse()
            assert (await anext(events)).retry == 3000
            assert [sse.id for sse in await take(events, 2)] == [p.format() for p in missed]
            live = await publish(hub, 6)
            [after] = await take(events, 1)
            assert (after.id, after.data) == (live[0].format(), "event 6")
            await events.aclose()


async def test_httpx_sse_gets_a_reset_event_for_an_unknown_id(endpoint: Endpoint, hub: Hub) -> None:
    positions = await publish(hub, 1, 2)
    async with (
        endpoint.client() as client,
        aconnect_sse(
            client,
            "GET",
            endpoint.url(f"/topics/{TOPIC}/events?last-event-id=gone.42"),
        ) as source,
    ):
        events = source.aiter_sse()
        await take(events, 1)  # retry
        [reset, *replayed] = await take(events, 3)
        assert reset.event == "tidings.reset"
        # Another epoch: the stream goes on with every event still retained.
        cursor = f"{positions[0].epoch}.0"
        assert reset.id == cursor
        assert reset.json() == {"cursor": cursor, "reason": "unknown-epoch"}
        assert [sse.id for sse in replayed] == [p.format() for p in positions]
        live = await publish(hub, 3)
        assert described(await take(events, 1)) == [("message", live[0].format(), "event 3")]
        await events.aclose()


async def test_httpx_sse_follows_several_topics_at_once_on_one_client(
    endpoint: Endpoint, hub: Hub
) -> None:
    # Over HTTP/2 these are concurrent streams of one connection; each must get its
    # own events only.  Each resumes from its topic's head, so the events can be
    # published at once, without waiting for the streams to be subscribed.
    # (Waiting for each stream's opening ``retry:`` before opening the next can
    # stall httpcore's HTTP/2 reader until more data arrives: a task whose response
    # headers were already read by another task waits for the read lock held by a
    # third that is blocked on the network.  That is httpcore's business.)
    topics = ["a", "b", "c"]
    got: dict[str, list[tuple[str, str]]] = {}
    versions: set[str] = set()
    connections: set[int] = set()

    async def follow(topic: str, cursor: str) -> None:
        url = endpoint.url(f"/topics/{topic}/events")
        async with aconnect_sse(client, "GET", url, headers={"Last-Event-ID": cursor}) as source:
            versions.add(source.response.http_version)
            connections.add(endpoint.server.connection_count)
            events = source.aiter_sse()
            assert (await anext(events)).retry == 3000
            got[topic] = [(sse.id, sse.data) for sse in await take(events, 2)]
            await events.aclose()

    expected: dict[str, list[tuple[str, str]]] = {topic: [] for topic in topics}
    async with endpoint.client() as client, trio.open_nursery() as nursery:
        for topic in topics:
            nursery.start_soon(follow, topic, hub.history.memory.head(topic).format())
        for n in (1, 2):
            for topic in topics:
                position = await hub.publish(topic, f"{topic}{n}")
                expected[topic].append((position.format(), f"{topic}{n}"))
    assert got == expected
    assert versions == {endpoint.version}
    if endpoint.version == "HTTP/2":
        assert connections == {1}  # multiplexed
