"""``GET /topics/{topic}/poll`` on the real server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import random
import resource
import ssl
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
import trustme

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent
from tidings.longpoll import PollLimits
from tidings.trio import Hub, Server, ServerConfig
from tidings.trio._sync import Waiter
from tidings.trio.client._http import open_request
from tidings.trio.history import Feed, HistoryUnavailable, LocalHistory
from tidings.trio.hub import Watch

from .conftest import HTTP1

if TYPE_CHECKING:
    from conftest import Connect, StartServer

POLL = "/topics/t/poll"


def answer(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


async def blocked() -> None:
    """Let every task (server included) run until it waits for something."""
    await trio.testing.wait_all_tasks_blocked()


async def held(hub: Hub, topic: str, count: int) -> None:
    """Return once *count* polls of *topic* are held (subscribed) by the server."""
    while hub.subscriber_count(topic) < count:
        await blocked()


# -- answering ------------------------------------------------------------------------


async def test_waiting_events_are_answered_at_once(
    server: Server, hub: Hub, connect: Connect
) -> None:
    first = await hub.publish("t", "a")
    second = await hub.publish("t", "b", event="tick")
    client = await connect(server)
    with trio.fail_after(5):
        status, headers, body = await client.request(
            "GET", f"{POLL}?cursor={Position(first.epoch, 0)}"
        )
    assert status == 200
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"etag"] == f'"{second.format()}"'.encode()
    assert answer(body) == {
        "events": [
            {"id": first.format(), "event": None, "data": "a"},
            {"id": second.format(), "event": "tick", "data": "b"},
        ],
        "cursor": second.format(),
        "reset": False,
    }
    assert hub.subscriber_count() == 0  # an immediate answer never subscribes


async def test_earliest_returns_everything_retained_and_limit_caps_an_answer(
    server: Server, hub: Hub, connect: Connect
) -> None:
    stored = [await hub.publish("t", str(i)) for i in range(5)]
    client = await connect(server)
    with trio.fail_after(5):
        _, _, body = await client.request("GET", f"{POLL}?cursor=earliest&limit=2")
        page = answer(body)
        _, _, body = await client.request("GET", f"{POLL}?cursor={page['cursor']}&limit=10")
    assert [e["data"] for e in page["events"]] == ["0", "1"]  # type: ignore[attr-defined]
    assert [e["data"] for e in answer(body)["events"]] == ["2", "3", "4"]  # type: ignore[index]
    assert answer(body)["cursor"] == stored[-1].format()


async def test_a_held_request_is_answered_as_soon_as_an_event_is_published(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub, connect: Connect
) -> None:
    # On the autojump clock, "as soon as" is exact: the answer comes without any
    # (virtual) time passing, so no timer had to fire for it; were the publish not to
    # wake the request, the clock would jump to fail_after's 5 s and fail the test.
    cursor = hub.history.memory.head("t").format()
    client = await connect(server)
    got: list[tuple[int, dict[bytes, bytes], bytes]] = []

    async def poll() -> None:
        got.append(await client.request("GET", f"{POLL}?cursor={cursor}&timeout=30"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await held(hub, "t", 1)
            await blocked()
            assert got == []  # held: nothing to answer yet
            published_at = trio.current_time()
            stored = await hub.publish("t", "now")
        answered_at = trio.current_time()
    status, _, body = got[0]
    assert status == 200
    assert answer(body)["events"] == [{"id": stored.format(), "event": None, "data": "now"}]
    assert answered_at == published_at
    assert hub.subscriber_count() == 0
    assert server.app.subscriptions == set()


async def raw_answer(stream: trio.abc.Stream) -> bytes:
    """One complete response with a Content-Length, read byte for byte."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.lower().count(b"\r\ncontent-length: ") == 1, head
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += await stream.receive_some()
    assert len(body) == length
    return head + b"\r\n\r\n" + body


async def test_answers_sent_by_the_publisher_are_the_usual_bytes_and_keep_alive(
    server: Server, hub: Hub, connect: Connect
) -> None:
    clients = [await connect(server) for _ in range(3)]
    with trio.fail_after(10):
        for _ in range(2):  # a second round on the same connections (keep-alive)
            cursor = hub.history.memory.head("t").format()
            for client in clients:
                await client.stream.send_all(
                    f"GET {POLL}?cursor={cursor} HTTP/1.1\r\nhost: t\r\n\r\n".encode()
                )
            await held(hub, "t", 3)
            await hub.publish("t", "wake")
            raws = [await raw_answer(client.stream) for client in clients]
            # The same answer, immediately, through the usual respond() path.
            check = await connect(server)
            await check.stream.send_all(
                f"GET {POLL}?cursor={cursor} HTTP/1.1\r\nhost: t\r\n\r\n".encode()
            )
            assert raws == [await raw_answer(check.stream)] * 3
        for client in clients:  # still usable afterwards
            await client.stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            assert (await raw_answer(client.stream)).endswith(b"ok\n")
    assert hub.subscriber_count() == 0
    assert len(server.app.connections) == 3 + 2


async def test_a_burst_of_publishes_answers_held_requests_with_the_first_and_loses_none(
    server: Server, hub: Hub, connect: Connect
) -> None:
    clients = [await connect(server) for _ in range(2)]
    cursor = hub.history.memory.head("t").format()
    with trio.fail_after(10):
        for client in clients:
            await client.send("GET", f"{POLL}?cursor={cursor}")
        await held(hub, "t", 2)
        first = hub.publish_nowait("t", "one")
        second = hub.publish_nowait("t", "two")
        for client in clients:
            response = await client.response()
            body = await client.body()
            client.conn.start_next_cycle()
            assert response.status_code == 200
            assert answer(body)["cursor"] == first.format()
            status, _, body = await client.request("GET", f"{POLL}?cursor={answer(body)['cursor']}")
            assert status == 200
            assert [e["data"] for e in answer(body)["events"]] == ["two"]  # type: ignore[attr-defined]
            assert answer(body)["cursor"] == second.format()
    assert hub.subscriber_count() == 0


@pytest.mark.parametrize(
    ("version", "header"),
    [("1.1", "connection: keep-alive\r\n"), ("1.0", ""), ("1.1", "connection: close\r\n")],
    ids=["connection-header", "http-1.0", "close"],
)
async def test_a_held_request_outside_the_common_case_is_answered_as_usual(
    server: Server, hub: Hub, connect: Connect, version: str, header: str
) -> None:
    cursor = hub.history.memory.head("t").format()
    client = await connect(server)
    with trio.fail_after(5):
        await client.stream.send_all(
            f"GET {POLL}?cursor={cursor} HTTP/{version}\r\nhost: t\r\n{header}\r\n".encode()
        )
        await held(hub, "t", 1)
        stored = await hub.publish("t", "wake")
        raw = await raw_answer(client.stream)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert answer(raw.partition(b"\r\n\r\n")[2])["cursor"] == stored.format()


async def test_a_held_answer_larger_than_the_socket_takes_is_finished_by_its_task(
    server: Server, hub: Hub
) -> None:
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    cursor = hub.history.memory.head("t").format()
    data = "x" * 900_000
    with trio.fail_after(10):
        await stream.send_all(f"GET {POLL}?cursor={cursor} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        await held(hub, "t", 1)
        await hub.publish("t", data)
        raw = await raw_answer(stream)
        assert answer(raw.partition(b"\r\n\r\n")[2])["events"][0]["data"] == data  # type: ignore[index]
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await raw_answer(stream)).endswith(b"ok\n")
    await stream.aclose()


async def test_a_held_request_without_cursor_follows_live_from_its_arrival(
    server: Server, hub: Hub, connect: Connect
) -> None:
    await hub.publish("t", "before")
    client = await connect(server)
    got: list[bytes] = []

    async def poll() -> None:
        got.append((await client.request("GET", POLL))[2])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await held(hub, "t", 1)
            await hub.publish("t", "after")
    assert [e["data"] for e in answer(got[0])["events"]] == ["after"]  # type: ignore[attr-defined]


async def test_the_timeout_answer_is_an_empty_200_with_the_same_cursor(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub, connect: Connect
) -> None:
    cursor = (await hub.publish("t", "x")).format()
    client = await connect(server)
    start = trio.current_time()
    status, headers, body = await client.request("GET", f"{POLL}?cursor={cursor}&timeout=7")
    assert trio.current_time() - start == pytest.approx(7, abs=0.5)
    assert status == 200
    assert headers[b"etag"] == f'"{cursor}"'.encode()
    assert answer(body) == {"events": [], "cursor": cursor, "reset": False}
    assert hub.subscriber_count() == 0


async def test_the_timeout_answer_to_if_none_match_is_304(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub, connect: Connect
) -> None:
    cursor = (await hub.publish("t", "x")).format()
    client = await connect(server)
    status, headers, body = await client.request(
        "GET", f"{POLL}?timeout=3", [("if-none-match", f'"{cursor}"')]
    )
    assert status == 304
    assert body == b""
    assert headers[b"etag"] == f'"{cursor}"'.encode()
    # The connection stays usable (keep-alive).
    status, _, _ = await client.request("GET", f"{POLL}?timeout=0&cursor={cursor}")
    assert status == 200


async def test_the_maximum_hold_is_clamped(
    autojump_clock: trio.testing.MockClock, server: Server, hub: Hub, connect: Connect
) -> None:
    client = await connect(server)
    start = trio.current_time()
    status, _, _ = await client.request("GET", f"{POLL}?timeout=3600")
    assert status == 200
    assert trio.current_time() - start == pytest.approx(30, abs=0.5)


async def test_the_servers_configured_maximum_hold_is_clamped_to(
    autojump_clock: trio.testing.MockClock, start_server: StartServer, connect: Connect
) -> None:
    limits = PollLimits(default_timeout=2.0, max_timeout=5.0)
    server = await start_server(config=ServerConfig(poll_limits=limits))
    client = await connect(server)
    start = trio.current_time()
    status, _, _ = await client.request("GET", f"{POLL}?timeout=3600")
    assert status == 200
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)
    start = trio.current_time()
    status, _, _ = await client.request("GET", POLL)
    assert status == 200
    assert trio.current_time() - start == pytest.approx(2, abs=0.5)


async def test_a_request_pipelined_behind_a_held_poll_is_answered_after_it(
    server: Server, hub: Hub, connect: Connect
) -> None:
    cursor = hub.history.memory.head("t").format()
    client = await connect(server)
    raw = b""
    with trio.fail_after(5):
        await client.stream.send_all(
            f"GET {POLL}?cursor={cursor} HTTP/1.1\r\nhost: t\r\n\r\n".encode()
        )
        await held(hub, "t", 1)
        await client.stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        await blocked()
        assert hub.subscriber_count("t") == 1  # still held: more bytes are not a leave
        stored = await hub.publish("t", "first")
        while not raw.endswith(b"ok\n"):
            raw += await client.stream.receive_some()
    split = raw.index(b"HTTP/1.1 ", 1)
    first, second = raw[:split], raw[split:]
    assert first.startswith(b"HTTP/1.1 200 ")
    assert stored.format().encode() in first
    assert second.startswith(b"HTTP/1.1 200 ")
    assert second.endswith(b"ok\n")


async def test_a_client_leaving_a_held_poll_is_noticed_at_once(
    server: Server, hub: Hub, connect: Connect
) -> None:
    client = await connect(server)
    with trio.fail_after(5):
        await client.send("GET", f"{POLL}?timeout=30")
        await held(hub, "t", 1)
        await client.stream.aclose()
        while hub.subscriber_count() or server.app.subscriptions or server.app.connections:
            await blocked()


# -- errors and resets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("timeout=-1", []),
        ("limit=0", []),
        ("limit=%C3%28", []),
        ("cursor=earliest&cursor=earliest", []),
        ("", [("if-none-match", "*")]),
        ("", [("if-none-match", "no-quotes")]),
    ],
    ids=["timeout", "limit", "limit-not-utf8", "repeated", "inm-star", "inm-syntax"],
)
async def test_a_malformed_request_is_a_400_with_a_json_error(
    server: Server, hub: Hub, connect: Connect, query: str, headers: list[tuple[str, str]]
) -> None:
    client = await connect(server)
    with trio.fail_after(5):
        status, response_headers, body = await client.request("GET", f"{POLL}?{query}", headers)
    assert status == 400
    assert response_headers[b"content-type"] == b"application/json"
    assert isinstance(answer(body)["error"], str)
    assert hub.subscriber_count() == 0


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("cursor=not%20a%20cursor", []),
        ("cursor=abc.-1", []),
        ("cursor=%C3%28", []),
        ("cursor=" + "a" * 300, []),
        ("", [("if-none-match", '"garbage"')]),
    ],
    ids=["space", "negative", "not-utf8", "long", "if-none-match"],
)
async def test_a_malformed_cursor_gets_a_reset_to_the_head(
    server: Server, hub: Hub, connect: Connect, query: str, headers: list[tuple[str, str]]
) -> None:
    """As on SSE (a garbage Last-Event-ID) and WebSocket (a garbage resume cursor):
    an explicit ``malformed`` reset to the head, then live from there."""
    head = await hub.publish("t", "before")
    client = await connect(server)
    with trio.fail_after(5):
        status, response_headers, body = await client.request("GET", f"{POLL}?{query}", headers)
        assert status == 200
        assert answer(body) == {
            "events": [],
            "cursor": head.format(),
            "reset": True,
            "reason": "malformed",
        }
        assert response_headers[b"etag"] == f'"{head}"'.encode()
        after = await hub.publish("t", "after")
        _, _, body = await client.request("GET", f"{POLL}?cursor={head}")
    assert answer(body)["events"] == [{"id": after.format(), "event": None, "data": "after"}]
    assert hub.subscriber_count() == 0


async def test_an_evicted_cursor_gets_a_reset_before_the_earliest_retained(
    server: Server, hub: Hub, connect: Connect
) -> None:
    first = await hub.publish("t", "0")
    for i in range(1, 150):  # the fixture's history keeps 100
        last = await hub.publish("t", str(i))
    client = await connect(server)
    cursor = Position(last.epoch, last.offset - 100)
    with trio.fail_after(5):
        status, headers, body = await client.request("GET", f"{POLL}?cursor={first}")
        assert status == 200
        assert answer(body) == {
            "events": [],
            "cursor": cursor.format(),
            "reset": True,
            "reason": "evicted",
        }
        assert headers[b"etag"] == f'"{cursor}"'.encode()
        # Polling on from the reset's cursor gets every event still retained.
        _, _, body = await client.request("GET", f"{POLL}?cursor={cursor}&limit=1000")
    assert [e["data"] for e in answer(body)["events"]] == [str(i) for i in range(50, 150)]


async def test_an_unknown_epoch_gets_a_reset_before_everything_retained(
    server: Server, hub: Hub, connect: Connect
) -> None:
    stored = await hub.publish("t", "x")
    other = Position("otherepoch", 3).format()
    client = await connect(server)
    with trio.fail_after(5):
        status, _, body = await client.request("GET", f"{POLL}?cursor={other}")
    assert status == 200
    assert answer(body) == {
        "events": [],
        "cursor": f"{stored.epoch}.0",
        "reset": True,
        "reason": "unknown-epoch",
    }


# -- HTTP/2 ---------------------------------------------------------------------------


async def test_http2_answers_at_once_and_after_a_hold(server: Server, hub: Hub) -> None:
    cursor = hub.history.memory.head("t").format()
    stored = await hub.publish("t", "one")
    url = f"{server.url}{POLL}?cursor={cursor}"
    with trio.fail_after(5):
        async with open_request("GET", url, http2=True) as response:
            assert response.http_version == "2"
            body = await response.read()
        assert answer(body)["events"] == [{"id": stored.format(), "event": None, "data": "one"}]
        bodies: list[bytes] = []

        async def poll() -> None:
            async with open_request(
                "GET", f"{server.url}{POLL}?cursor={stored}", http2=True
            ) as response:
                bodies.append(await response.read())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await held(hub, "t", 1)
            second = await hub.publish("t", "two")
    assert answer(bodies[0])["cursor"] == second.format()
    assert hub.subscriber_count() == 0


async def test_http2_client_leaving_releases_a_held_request(server: Server, hub: Hub) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                async with open_request("GET", f"{server.url}{POLL}", http2=True) as response:
                    await response.read()

            nursery.start_soon(poll)
            await held(hub, "t", 1)
            nursery.cancel_scope.cancel()  # the client goes away
        while hub.subscriber_count() or server.app.subscriptions:
            await blocked()


# -- many held requests, disconnects, drain, limits -----------------------------------


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_one_publish_answers_a_thousand_held_requests_and_leavers_leave_nothing(
    server: Server, hub: Hub, connect: Connect
) -> None:
    count, leavers = 1000, 200
    _raise_fd_limit(2 * (count + leavers) + 256)
    cursor = hub.history.memory.head("t").format()
    clients = [await connect(server) for _ in range(count + leavers)]
    stayers, goers = clients[:count], clients[count:]
    bodies: list[bytes] = []

    async def poll(client: HTTP1) -> None:
        bodies.append((await client.request("GET", f"{POLL}?cursor={cursor}"))[2])

    with trio.fail_after(30):
        for client in goers:
            await client.send("GET", f"{POLL}?cursor={cursor}")
        await held(hub, "t", leavers)
        for client in goers:
            await client.stream.aclose()
        while hub.subscriber_count("t") or server.app.subscriptions or server.app.connections:
            await blocked()  # the leavers' requests and connections are gone

        async with trio.open_nursery() as nursery:
            for client in stayers:
                nursery.start_soon(poll, client)
            await held(hub, "t", count)
            assert len(server.app.subscriptions) == count
            assert bodies == []
            stored = await hub.publish("t", "all")
    expected = {"events": [{"id": stored.format(), "event": None, "data": "all"}]}
    assert len(bodies) == count
    assert all(answer(body)["events"] == expected["events"] for body in bodies)
    assert hub.subscriber_count() == 0
    assert server.app.subscriptions == set()
    assert len(server.app.connections) == count  # keep-alive: the stayers' are open


async def test_a_drain_answers_held_requests_at_once(
    server: Server, hub: Hub, connect: Connect
) -> None:
    cursor = hub.history.memory.head("t").format()
    plain, conditional = await connect(server), await connect(server)
    got: dict[str, tuple[int, dict[bytes, bytes], bytes]] = {}

    async def poll(name: str, client: HTTP1, headers: list[tuple[str, str]]) -> None:
        target = f"{POLL}?timeout=30" + ("" if headers else f"&cursor={cursor}")
        got[name] = await client.request("GET", target, headers)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, "plain", plain, [])
            nursery.start_soon(poll, "conditional", conditional, [("if-none-match", f'"{cursor}"')])
            await held(hub, "t", 2)
            server.drain()
    assert got["plain"][0] == 200
    assert answer(got["plain"][2]) == {"events": [], "cursor": cursor, "reset": False}
    assert got["plain"][1][b"connection"] == b"close"
    assert got["conditional"][0] == 304
    assert hub.subscriber_count() == 0


async def test_held_requests_count_toward_the_connection_limit(
    start_server: StartServer, hub: Hub, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(max_connections=2, retry_after=7))
    first, second, third = [await connect(server) for _ in range(3)]
    with trio.fail_after(5):
        await first.send("GET", POLL)
        await second.send("GET", POLL)
        await held(hub, "t", 2)
        status, headers, _ = await third.request("GET", POLL)
    assert status == 503
    assert headers[b"retry-after"] == b"7"


async def test_a_custom_router_can_grant_other_limits(nursery: trio.Nursery) -> None:
    from tidings.trio.server._app import default_router
    from tidings.trio.server._poll_endpoint import make_long_poll_handler
    from tidings.trio.server._routes import Router

    hub = Hub(MemoryHistory(new_epoch(random.Random(3))))
    router = Router()
    router.add(
        "/p/{topic}", {"GET": make_long_poll_handler(PollLimits(default_limit=2, max_limit=2))}
    )
    for route in default_router()._routes:
        router.add(route.pattern, route.methods)
    server = Server(hub, router=router)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(server.serve_listeners, listeners)
    for i in range(5):
        await hub.publish("t", str(i))
    with trio.fail_after(5):
        async with open_request("GET", f"{server.url}/p/t?cursor=earliest&limit=50") as response:
            body = await response.read()
    assert len(answer(body)["events"]) == 2  # type: ignore[arg-type]
    server.drain()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_over_tls_a_held_poll_is_woken_and_a_leaver_is_released(
    start_server: StartServer, hub: Hub, ca: trustme.CA, http2: bool
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = await start_server(ssl_context=server_context)
    bodies: list[bytes] = []

    async def poll() -> None:
        url = f"{server.url}{POLL}?cursor={hub.history.memory.head('t')}"
        async with open_request("GET", url, http2=http2, ssl_context=client_context) as response:
            assert response.http_version == ("2" if http2 else "1.1")
            bodies.append(await response.read())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await held(hub, "t", 1)
            stored = await hub.publish("t", "secret")
        assert answer(bodies[0])["cursor"] == stored.format()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await held(hub, "t", 1)
            nursery.cancel_scope.cancel()
        while hub.subscriber_count() or server.app.subscriptions:
            await blocked()


@pytest.mark.parametrize(
    "extra", ["", "connection: keep-alive\r\n"], ids=["answered-by-publisher", "usual-path"]
)
async def test_an_answer_just_before_a_drain_ends_the_connection_cleanly(
    server: Server, hub: Hub, connect: Connect, extra: str
) -> None:
    """A keep-alive answer written just before a drain: the next request sees EOF, not RST."""
    cursor = hub.history.memory.head("t").format()
    client = await connect(server)
    with trio.fail_after(5):
        request = f"GET {POLL}?cursor={cursor} HTTP/1.1\r\nhost: t\r\n{extra}\r\n"
        await client.stream.send_all(request.encode())
        await held(hub, "t", 1)
        hub.publish_nowait("t", "x")
        server.drain()
        head = (await raw_answer(client.stream)).partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200")
        if b"connection: close" not in head:  # keep-alive was promised: try it
            await client.stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            rest = await client.raw_until_closed()  # raises on a connection reset
            assert rest == b"" or rest.startswith(b"HTTP/1.1 ")


# -- the race between a poll's first read and a publish --------------------------------
#
# A poll registers its Watch on the hub, then reads the history: an event published
# after the read wakes the watch, one published before it is in the read.  These
# tests publish at exactly those points and need the poll answered with the event
# at once (an autojump clock: "at once" is no virtual time at all; a lost event
# would hold the poll until its 30 s timeout and answer it empty).


class _PublishingHistory(LocalHistory):
    """A history that answers at once, and publishes once on the poll's first read:
    just before or just after reading (as another task would, were there a
    checkpoint at that point)."""

    def __init__(self, memory: MemoryHistory, when: str) -> None:
        super().__init__(memory)
        self.when = when
        self.published: list[Position] = []

    def _publish(self) -> None:
        if not self.published:
            self.published.append(self.append_nowait("t", "raced").position)

    def read_nowait(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        if self.when == "before":
            self._publish()
        answer = super().read_nowait(topic, after, limit)
        if self.when == "after":
            self._publish()
        return answer


async def _poll_once(server: Server, nursery: trio.Nursery, target: str) -> dict[str, object]:
    client, remote = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, remote)
    http = HTTP1(client)
    status, _, body = await http.request("GET", target)
    assert status == 200
    return answer(body)


@pytest.mark.parametrize("when", ["before", "after"])
async def test_an_event_published_just_before_or_after_the_first_read_is_answered_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, when: str
) -> None:
    history = _PublishingHistory(MemoryHistory(new_epoch(random.Random(3))), when)
    hub = Hub(history)
    cursor = hub.append("t", "old").position
    server = Server(hub, ServerConfig())
    start = trio.current_time()
    document = await _poll_once(server, nursery, f"{POLL}?cursor={cursor}&timeout=30")
    assert [e["id"] for e in document["events"]] == [  # type: ignore[attr-defined]
        p.format() for p in history.published
    ]
    assert trio.current_time() == start
    assert hub.subscriber_count() == 0


class _StepCounter(trio.abc.Instrument):
    """Counts task steps: a checkpoint that yields ends one."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_with_a_history_that_answers_at_once_registering_and_reading_are_one_step(
    nursery: trio.Nursery,
) -> None:
    # The promise of _poll: no checkpoint between hub.watch() and the first read.
    # (Reading first and registering after is then as safe; any yield in between is
    # where a publish would go missing, as the async-history test below shows.)
    counter = _StepCounter()
    marks: dict[str, int] = {}

    class Probed(LocalHistory):
        def read_nowait(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
            marks.setdefault("read", counter.steps)
            return super().read_nowait(topic, after, limit)

    class ProbedHub(Hub):
        def watch(self, topic: str, *, waiter: Waiter | None = None) -> Watch:
            marks.setdefault("watch", counter.steps)
            return super().watch(topic, waiter=waiter)

    hub = ProbedHub(Probed(MemoryHistory(new_epoch(random.Random(4)))))
    start = Position(hub.append("t", "x").position.epoch, 0)
    server = Server(hub, ServerConfig())
    trio.lowlevel.add_instrument(counter)
    try:
        document = await _poll_once(server, nursery, f"{POLL}?cursor={start}")
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert [e["data"] for e in document["events"]] == ["x"]  # type: ignore[attr-defined]
    assert set(marks) == {"watch", "read"}
    assert marks["read"] == marks["watch"]


class _GatedHistory:
    """A history that is not an ImmediateHistory (the hub awaits every read), built on
    a LocalHistory; its first read (or head) takes its answer, then waits until ``release`` --
    the test publishes meanwhile, from its own task."""

    def __init__(self, memory: MemoryHistory) -> None:
        self.local = LocalHistory(memory)
        self.reading = trio.Event()
        self.release = trio.Event()

    def bind(self, feed: Feed) -> None:
        self.local.bind(feed)

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        return await self.local.append(topic, data, event, key=key)

    async def _gate(self) -> None:
        if not self.reading.is_set():
            self.reading.set()
            await self.release.wait()

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        answer = await self.local.read(topic, after, limit)
        await self._gate()
        return answer

    async def head(self, topic: str) -> Position:
        head = await self.local.head(topic)
        await self._gate()
        return head

    async def watch(self, topic: str) -> None:
        await self.local.watch(topic)

    def unwatch(self, topic: str) -> None:
        self.local.unwatch(topic)


@pytest.mark.parametrize("cursor", ["given", "none"])
async def test_with_an_async_history_an_event_published_during_the_first_read_is_answered(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, cursor: str
) -> None:
    history = _GatedHistory(MemoryHistory(new_epoch(random.Random(5))))
    hub = Hub(history)
    assert hub._immediate is None
    old = await hub.publish("t", "old")
    server = Server(hub, ServerConfig())
    target = f"{POLL}?timeout=30" + (f"&cursor={old.format()}" if cursor == "given" else "")
    got: list[dict[str, object]] = []

    async def poll() -> None:
        got.append(await _poll_once(server, nursery, target))

    start = trio.current_time()
    async with trio.open_nursery() as pollers:
        pollers.start_soon(poll)
        await history.reading.wait()  # the poll's first read has its (stale) answer
        raced = await hub.publish("t", "raced")
        history.release.set()
    [document] = got
    assert [e["id"] for e in document["events"]] == [raced.format()]  # type: ignore[attr-defined]
    assert trio.current_time() == start


class _AwayHistory(_GatedHistory):
    """An awaited history whose store cannot be reached for reads."""

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        raise HistoryUnavailable("the store is away")

    async def head(self, topic: str) -> Position:
        raise HistoryUnavailable("the store is away")


@pytest.mark.parametrize("cursor", ["?cursor=e.1", ""])
async def test_a_poll_the_history_cannot_answer_gets_a_503_with_retry_after(
    nursery: trio.Nursery, cursor: str
) -> None:
    hub = Hub(_AwayHistory(MemoryHistory(new_epoch(random.Random(11)))))
    server = Server(hub, ServerConfig(retry_after=7))
    client, remote = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, remote)
    with trio.fail_after(5):
        status, headers, body = await HTTP1(client).request("GET", POLL + cursor)
    assert status == 503
    assert headers[b"retry-after"] == b"7"
    assert headers[b"content-type"] == b"application/json"
    assert answer(body) == {"error": "history unavailable: the store is away"}
    assert hub.subscriber_count() == 0
