"""``GET /ws``: the tidings.v1 WebSocket endpoint of the Trio server."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent
from tidings.trio import Action, Hub, Refusal, Server, ServerConfig, WebSocketConfig, serve
from tidings.trio.history import Feed, HistoryUnavailable, LocalHistory
from tidings.trio.hub import CloseReason, Subscription
from tidings.trio.server._http import Request as HTTPRequest

from .conftest import HTTP1, Connect, MemoryClient, StartServer
from .test_server_h2 import H2Client, h2_clients, h2_connect

__all__ = ["h2_clients"]  # the fixture, shared with test_server_h2


@asynccontextmanager
async def open_ws(server: Server, path: str = "/ws") -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client; the socket is ours to close (trio-websocket leaves a
    client socket open after a close the server started)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, "test", path, subprotocols=["tidings.v1"]
            )
            yield ws
            await ws.aclose()
    finally:
        await trio.aclose_forcefully(stream)


async def recv(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def send(ws: Any, **message: Any) -> None:
    await ws.send_message(json.dumps(message))


async def test_subscribe_replays_then_goes_live(server: Server, hub: Hub) -> None:
    first = await hub.publish("news", "one")
    async with open_ws(server) as ws:
        assert ws.subprotocol == "tidings.v1"
        await send(ws, type="subscribe", topic="news", cursor="earliest")
        assert await recv(ws) == {
            "type": "event",
            "topic": "news",
            "id": first.format(),
            "event": None,
            "data": "one",
        }
        assert await recv(ws) == {
            "type": "subscribed",
            "topic": "news",
            "cursor": first.format(),
        }
        second = await hub.publish("news", "two", "update")
        event = await recv(ws)
        assert (event["id"], event["event"], event["data"]) == (
            second.format(),
            "update",
            "two",
        )


async def test_many_topics_share_one_connection(server: Server, hub: Hub) -> None:
    async with open_ws(server) as ws:
        for topic in ("a", "b", "c"):
            await send(ws, type="subscribe", topic=topic)
            assert (await recv(ws))["type"] == "subscribed"
        for topic in ("c", "a", "b"):
            await hub.publish(topic, f"to {topic}")
        got = [await recv(ws) for _ in range(3)]
        # Order holds per topic; topics are independent streams.
        assert sorted((m["topic"], m["data"]) for m in got) == [
            ("a", "to a"),
            ("b", "to b"),
            ("c", "to c"),
        ]
        await send(ws, type="unsubscribe", topic="a")
        # A round trip: messages are handled in order, so the unsubscribe is done.
        await send(ws, type="subscribe", topic="d")
        assert (await recv(ws))["type"] == "subscribed"
        await hub.publish("a", "gone")
        await hub.publish("b", "still")
        assert (await recv(ws))["data"] == "still"


async def test_unknown_cursor_gives_an_explicit_reset_then_what_is_retained(
    server: Server, hub: Hub
) -> None:
    head = await hub.publish("t", "x")
    async with open_ws(server) as ws:
        await send(ws, type="subscribe", topic="t", cursor="otherepoch.5")
        assert await recv(ws) == {
            "type": "reset",
            "topic": "t",
            "cursor": f"{head.epoch}.0",
            "reason": "unknown-epoch",
        }
        assert (await recv(ws))["id"] == head.format()
        assert await recv(ws) == {"type": "subscribed", "topic": "t", "cursor": head.format()}


async def test_publish_is_acknowledged_and_a_repeat_is_stored_once(
    server: Server, hub: Hub
) -> None:
    async with open_ws(server) as ws:
        await send(ws, type="publish", topic="t", msg_id="m-1", data="hello")
        ack = await recv(ws)
        assert ack["type"] == "published"
        assert ack["msg_id"] == "m-1"
    # The client lost the ack (say) and resends on a new connection.
    async with open_ws(server) as ws:
        await send(ws, type="publish", topic="t", msg_id="m-1", data="hello")
        assert await recv(ws) == ack
    assert hub.history.memory.head("t").offset == 1


async def test_another_sessions_msg_id_cannot_suppress_its_publish(
    server: Server, hub: Hub
) -> None:
    async with open_ws(server) as attacker, open_ws(server) as victim:
        await send(attacker, type="publish", topic="t", msg_id="m-1", data="forged")
        forged = await recv(attacker)
        await send(victim, type="publish", topic="t", msg_id="m-1", data="real")
        real = await recv(victim)
        await send(victim, type="publish", topic="t", msg_id="m-1", data="real")
        resent = await recv(victim)
    assert forged["type"] == real["type"] == "published"
    assert real["id"] != forged["id"]
    assert resent == real
    assert [e.data for e in hub.history.memory.read("t", "earliest").events] == ["forged", "real"]


async def test_ws_publishes_reach_sse_and_http_publishes_reach_ws(
    server: Server, connect: Connect
) -> None:
    sse = await connect(server)
    await sse.send("GET", "/topics/mixed/events")
    assert (await sse.response()).status_code == 200
    await sse.some_events(0)
    async with open_ws(server) as ws:
        await send(ws, type="subscribe", topic="mixed")
        assert (await recv(ws))["type"] == "subscribed"
        await send(ws, type="publish", topic="mixed", msg_id="w1", data="from ws")
        messages = [await recv(ws), await recv(ws)]
        assert {m["type"] for m in messages} == {"published", "event"}
        (event,) = await sse.events(1)
        assert event.data == "from ws"
        poster = await connect(server)
        status, _, _ = await poster.request("POST", "/topics/mixed", body=b"from http")
        assert status == 201
        assert (await recv(ws))["data"] == "from http"


async def test_malformed_message_gets_an_error_and_the_session_continues(
    server: Server, hub: Hub
) -> None:
    async with open_ws(server) as ws:
        await ws.send_message('{"type": "subscribe"}')
        assert (await recv(ws))["type"] == "error"
        await send(ws, type="subscribe", topic="ok")
        assert (await recv(ws))["type"] == "subscribed"


async def test_oversized_message_closes_with_1009(start_server: StartServer) -> None:
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=1000))
    server = await start_server(config=config)
    async with open_ws(server) as ws:
        await send(ws, type="publish", topic="t", msg_id="big", data="x" * 5000)
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1009


async def test_a_client_that_goes_on_sending_after_1009_is_cut_at_once(
    start_server: StartServer, connect: Connect
) -> None:
    # A raw client sends one oversized message in pieces and keeps sending: the
    # server's close frame comes at once, and the connection ends within a second
    # (it no longer reads and discards for the whole 30 s closing handshake).
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=1000, close_timeout=30))
    server = await start_server(config=config)
    client = await connect(server)
    ws = WSConnection(ConnectionType.CLIENT)
    await client.stream.send_all(
        ws.send(Request(host="test", target="/ws", subprotocols=["tidings.v1"]))
    )
    ws.receive_data(await client.stream.receive_some())
    assert any(isinstance(e, AcceptConnection) for e in ws.events())
    closed = False
    first = ws.send(Message("x" * 4000, message_finished=False))
    more = ws.send(Message("x" * 4000, message_finished=False))  # continuation frames
    await client.stream.send_all(first)
    with trio.fail_after(10):
        while True:
            try:
                await client.stream.send_all(more)  # on and on, whatever the server says
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            with trio.move_on_after(0.1):
                data = await client.stream.receive_some()
                if not data:
                    break
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, CloseConnection):
                        closed = True
                        assert event.code == 1009
    assert closed


async def test_binary_message_closes_with_1003(server: Server) -> None:
    async with open_ws(server) as ws:
        await ws.send_message(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1003


async def handshake_status(server: Server, connect: Connect, **headers: str) -> int:
    client: HTTP1 = await connect(server)
    base = {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-protocol": "tidings.v1",
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    await client.send("GET", "/ws", [(k, v) for k, v in base.items() if v])
    head = await client.next_event()  # 101 (InformationalResponse) or a refusal
    assert isinstance(head, h11.InformationalResponse | h11.Response)
    await trio.aclose_forcefully(client.stream)
    return head.status_code


async def test_cross_site_origin_is_refused_before_the_upgrade(
    server: Server, connect: Connect
) -> None:
    assert await handshake_status(server, connect, origin="https://evil.example") == 403
    # Same origin (Origin host equals Host) and non-browser clients are admitted.
    assert await handshake_status(server, connect, origin="http://test") == 101
    assert await handshake_status(server, connect) == 101


async def test_origin_allow_list(start_server: StartServer, connect: Connect) -> None:
    config = ServerConfig(
        websocket=WebSocketConfig(allowed_origins=frozenset({"https://app.example"}))
    )
    server = await start_server(config=config)
    assert await handshake_status(server, connect, origin="https://app.example") == 101
    assert await handshake_status(server, connect, origin="http://other.example") == 403
    # The server's own origin (Origin's host equals Host) is always admitted.
    assert await handshake_status(server, connect, origin="http://test") == 101


async def test_auth_hook_sees_the_request_and_refuses_before_the_upgrade(
    start_server: StartServer, connect: Connect
) -> None:
    seen: list[tuple[bytes | None, bytes | None]] = []

    async def auth(request: HTTPRequest, action: Action, topic: str | None) -> Refusal | None:
        seen.append((request.header(b"cookie"), request.query_param("token")))
        if request.header(b"cookie") == b"session=good":
            return None
        if request.query_param("token") == b"expired":
            return Refusal(403, "Forbidden")
        return Refusal(401, "Log in", [(b"www-authenticate", b"Bearer")])

    server = await start_server(config=ServerConfig(auth=auth))
    assert await handshake_status(server, connect) == 401
    assert await handshake_status(server, connect, cookie="session=good") == 101
    client = await connect(server)
    await client.send("GET", "/ws?token=expired", [("upgrade", "websocket")])
    assert (await client.response()).status_code == 403
    assert (b"session=good", None) in seen
    assert (None, b"expired") in seen


async def test_handshake_without_the_subprotocol_or_upgrade_is_refused(
    server: Server, connect: Connect
) -> None:
    assert await handshake_status(server, connect, sec_websocket_protocol="chat") == 400
    assert await handshake_status(server, connect, sec_websocket_protocol="") == 400
    assert await handshake_status(server, connect, sec_websocket_version="8") == 426
    assert await handshake_status(server, connect, sec_websocket_key="short") == 400
    client = await connect(server)
    status, _, _ = await client.request("GET", "/ws")
    assert status == 426


class RawClient:
    """A wsproto client over any stream, for tests that misbehave on purpose."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def handshake(self) -> None:
        await self.stream.send_all(
            self.ws.send(Request(host="test", target="/ws", subprotocols=["tidings.v1"]))
        )
        event = await self.next_event()
        assert isinstance(event, AcceptConnection), event

    async def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some()
            self.ws.receive_data(bytes(data) if data else None)

    async def send(self, **message: Any) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(json.dumps(message))))


async def open_raw(server: Server, memory_client: MemoryClient) -> RawClient:
    http = await memory_client(server)
    raw = RawClient(http.stream)
    await raw.handshake()
    return raw


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_missed_pong_closes_with_1011(
    start_server: StartServer, memory_client: MemoryClient, autojump_clock: object
) -> None:
    config = ServerConfig(websocket=WebSocketConfig(ping_interval=20, pong_timeout=20))
    server = await start_server(config=config)
    raw = await open_raw(server, memory_client)
    start = trio.current_time()
    event = await raw.next_event()
    assert isinstance(event, Ping)  # ...and this client never answers it
    assert trio.current_time() - start == pytest.approx(20)
    event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1011
    assert trio.current_time() - start == pytest.approx(40)


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_answered_pings_keep_the_session_open(
    start_server: StartServer, memory_client: MemoryClient, hub: Hub, autojump_clock: object
) -> None:
    server = await start_server(config=ServerConfig())
    raw = await open_raw(server, memory_client)
    await raw.send(type="subscribe", topic="t")
    assert isinstance(await raw.next_event(), TextMessage)
    for _ in range(5):
        ping = await raw.next_event()
        assert isinstance(ping, Ping)
        await raw.stream.send_all(raw.ws.send(ping.response()))
    await hub.publish("t", "alive")
    event = await raw.next_event()
    assert isinstance(event, TextMessage)
    assert json.loads(event.data)["data"] == "alive"


async def test_drain_closes_sessions_with_going_away(
    start_server: StartServer, memory_client: MemoryClient
) -> None:
    server = await start_server(config=ServerConfig())
    raw = await open_raw(server, memory_client)
    await raw.send(type="subscribe", topic="t")
    assert isinstance(await raw.next_event(), TextMessage)
    quiet = await open_raw(server, memory_client)  # follows no topic at all
    server.drain()
    for client in (raw, quiet):
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1001


async def test_draining_server_refuses_new_sessions(
    start_server: StartServer, memory_client: MemoryClient
) -> None:
    server = await start_server(config=ServerConfig(drain_timeout=1))
    keep = await open_raw(server, memory_client)  # keeps the server draining
    server.drain()
    http = await memory_client(server)
    raw = RawClient(http.stream)
    await raw.stream.send_all(
        raw.ws.send(Request(host="test", target="/ws", subprotocols=["tidings.v1"]))
    )
    event = await raw.next_event()
    assert isinstance(event, RejectConnection)
    assert event.status_code == 503
    assert (b"retry-after", b"%d" % server.app.config.retry_after) in event.headers
    del keep


async def test_http2_request_gets_426(server: Server, h2_clients: list[H2Client]) -> None:
    # RFC 8441 (WebSocket over HTTP/2) is not offered: the client must use HTTP/1.1.
    client = await h2_connect(server)
    h2_clients.append(client)
    state = await client.request("GET", "/ws", [("sec-websocket-version", "13")])
    assert state.headers[b":status"] == b"426"


async def test_publish_to_a_topic_no_url_can_name_is_rejected(server: Server, hub: Hub) -> None:
    async with open_ws(server) as ws:
        await send(ws, type="publish", topic="a b/c", msg_id="m", data="x")
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["code"] == "malformed"
        assert "topic names are 1-128 characters" in error["message"]
    assert hub.subscriber_count() == 0


async def test_repeated_subscribes_to_a_client_that_does_not_read_hold_bounded_memory(
    hub: Hub, nursery: trio.Nursery
) -> None:
    # Each subscribe replays the whole topic (20 events); 100 of them fit in one
    # read.  Without backpressure the session queues all 100 replays for a client
    # that reads nothing (measured: ~1.2 MB held); with it (~50 KB) it takes no
    # message past the high-water mark until what is queued has been sent.
    server = Server(hub, ServerConfig(websocket=WebSocketConfig(max_queued_bytes=4096)))
    for _ in range(20):
        hub.publish_nowait("t", "x" * 100)
    client, remote = trio.testing.lockstep_stream_pair()  # no buffer: nothing read, nothing sent
    nursery.start_soon(server.serve_stream, remote)
    raw = RawClient(client)
    await raw.handshake()
    subscribe = json.dumps({"type": "subscribe", "topic": "t", "cursor": "earliest"})
    burst = b"".join(raw.ws.send(TextMessage(subscribe)) for _ in range(100))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await client.send_all(burst)
        await trio.testing.wait_all_tasks_blocked()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 200_000, f"{held} bytes held for a {len(burst)}-byte burst"
    # Nothing is lost: once the client reads, every subscribe is answered in turn.
    subscribed = events = 0
    while subscribed < 100:
        event = await raw.next_event()
        assert isinstance(event, TextMessage)
        kind = json.loads(event.data)["type"]
        subscribed += kind == "subscribed"
        events += kind == "event"
    assert events == 100 * 20


# -- resets on a followed topic, and a slow session catching up ------------------------


# Subscribed live from now, or after a replay (of nothing): either way "subscribed"
# came first, and what follows is the live path.
SUBSCRIBE_FROM = pytest.mark.parametrize("cursor", [None, "earliest"])


@SUBSCRIBE_FROM
async def test_a_new_epoch_while_live_gives_a_reset_then_the_new_events(
    nursery: trio.Nursery, cursor: str | None
) -> None:
    # One topic at most: publishing to "u" drops "t", whose next event starts a new
    # epoch; the session's follower must say so with a reset (unknown-epoch, just
    # before everything the new epoch holds), then deliver the new events.
    hub = Hub(MemoryHistory(new_epoch(random.Random(6)), max_topics=1))
    server: Server = await nursery.start(partial(serve, hub, 0))
    with trio.fail_after(10):
        async with open_ws(server) as ws:
            await send(ws, type="subscribe", topic="t", cursor=cursor)
            assert (await recv(ws))["type"] == "subscribed"
            old = await hub.publish("t", "old")
            assert (await recv(ws))["id"] == old.format()
            await hub.publish("u", "pushes t out")
            first = await hub.publish("t", "new 1")
            second = await hub.publish("t", "new 2")
            assert first.epoch != old.epoch
            assert await recv(ws) == {
                "type": "reset",
                "topic": "t",
                "cursor": Position(first.epoch, 0).format(),
                "reason": "unknown-epoch",
            }
            assert [(await recv(ws))["id"] for _ in range(2)] == [first.format(), second.format()]
            await send(ws, type="unsubscribe", topic="t")
    server.drain()


async def slow_session(
    hub: Hub, nursery: trio.Nursery, max_events: int, cursor: str | None
) -> tuple[RawClient, Server, Subscription]:
    """A session following "t" live over a stream with no buffer at all: while the
    client does not read, the server's writes block and the subscription fills up."""
    server = Server(hub, ServerConfig(subscriber_max_events=max_events))
    client, remote = trio.testing.lockstep_stream_pair()
    nursery.start_soon(server.serve_stream, remote)
    raw = RawClient(client)
    await raw.handshake()
    await raw.send(type="subscribe", topic="t", cursor=cursor)
    subscribed = await raw.next_event()
    assert isinstance(subscribed, TextMessage)
    assert json.loads(subscribed.data)["type"] == "subscribed"
    [subscription] = server.app.subscriptions
    assert isinstance(subscription, Subscription)
    return raw, server, subscription


async def read_messages_until(raw: RawClient, last_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1].get("id") != last_id:
        event = await raw.next_event()
        assert isinstance(event, TextMessage), event
        messages.append(json.loads(event.data))
    return messages


@SUBSCRIBE_FROM
async def test_a_slow_session_catches_up_from_the_history_losing_nothing(
    nursery: trio.Nursery, cursor: str | None
) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(7)), max_events=100))
    with trio.fail_after(10):
        raw, _, subscription = await slow_session(hub, nursery, 4, cursor)
        stored = [hub.publish_nowait("t", "0")]
        await trio.testing.wait_all_tasks_blocked()  # the session is stuck writing it
        stored += [hub.publish_nowait("t", str(n)) for n in range(1, 30)]
        assert subscription.overflows > 0  # its buffer overflowed: live events dropped
        messages = await read_messages_until(raw, stored[-1].format())
    assert [m["type"] for m in messages] == ["event"] * 30
    assert [m["id"] for m in messages] == [p.format() for p in stored]
    assert [m["data"] for m in messages] == [str(n) for n in range(30)]


@SUBSCRIBE_FROM
async def test_a_slow_session_whose_catch_up_meets_evicted_events_gets_a_reset(
    nursery: trio.Nursery, cursor: str | None
) -> None:
    # The history keeps 10 events; the session's buffer 4.  While its client does
    # not read, 30 events are published: the session delivers what it had kept, then
    # its catch-up read finds events evicted: a reset just before the earliest
    # retained event, then exactly the retained events.
    hub = Hub(MemoryHistory(new_epoch(random.Random(8)), max_events=10))
    with trio.fail_after(10):
        raw, _, subscription = await slow_session(hub, nursery, 4, cursor)
        stored = [hub.publish_nowait("t", "0")]
        await trio.testing.wait_all_tasks_blocked()
        stored += [hub.publish_nowait("t", str(n)) for n in range(1, 30)]
        assert subscription.overflows > 0
        messages = await read_messages_until(raw, stored[-1].format())
    kinds = [m["type"] for m in messages]
    assert kinds.count("reset") == 1
    at = kinds.index("reset")
    kept, reset, retained = messages[:at], messages[at], messages[at + 1 :]
    # Before the reset: the events the session had, from the first on, in order.
    assert 1 <= len(kept) <= 1 + 4
    assert [m["id"] for m in kept] == [p.format() for p in stored[: len(kept)]]
    assert reset == {
        "type": "reset",
        "topic": "t",
        "cursor": stored[19].format(),  # events 21..30 are retained
        "reason": "evicted",
    }
    assert [m["id"] for m in retained] == [p.format() for p in stored[20:]]
    # And the session is live again.
    live = hub.publish_nowait("t", "live")
    with trio.fail_after(10):
        assert (await read_messages_until(raw, live.format()))[-1]["data"] == "live"


# -- the session's bookkeeping (what mutation testing found unchecked) -----------------


async def test_unsubscribe_and_a_repeated_subscribe_release_hub_subscriptions(
    server: Server, hub: Hub
) -> None:
    with trio.fail_after(10):
        async with open_ws(server) as ws:
            for _ in range(3):  # a subscribe replaces the one before
                await send(ws, type="subscribe", topic="t")
                assert (await recv(ws))["type"] == "subscribed"
            assert hub.subscriber_count("t") == 1
            await send(ws, type="unsubscribe", topic="t")
            await send(ws, type="subscribe", topic="u")  # a round trip
            assert (await recv(ws))["type"] == "subscribed"
            assert hub.subscriber_count("t") == 0
            assert hub.subscriber_count("u") == 1


async def test_a_publish_keeps_its_event_type_and_one_too_large_is_rejected(
    nursery: trio.Nursery,
) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(9)), max_event_size=100))
    server: Server = await nursery.start(partial(serve, hub, 0))
    with trio.fail_after(10):
        async with open_ws(server) as ws:
            await send(ws, type="subscribe", topic="t")
            assert (await recv(ws))["type"] == "subscribed"
            await send(ws, type="publish", topic="t", msg_id="m1", data="x", event="tick")
            got = [await recv(ws), await recv(ws)]
            event = next(m for m in got if m["type"] == "event")
            assert (event["event"], event["data"]) == ("tick", "x")
            await send(ws, type="publish", topic="t", msg_id="m2", data="y" * 101)
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["code"] == "publish-rejected"
            assert (error["topic"], error["msg_id"]) == ("t", "m2")
            assert "100" in error["message"]  # the history's own reason
    assert hub.history.memory.head("t").offset == 1
    server.drain()


async def test_an_idle_session_on_a_stream_is_woken_by_a_publish(
    server: Server, hub: Hub, memory_client: MemoryClient
) -> None:
    # No socket: nothing is written by the publisher; the session's own task must
    # be woken (the pings are 20 s away, past fail_after).
    raw = await open_raw(server, memory_client)
    with trio.fail_after(5):
        await raw.send(type="subscribe", topic="t")
        assert isinstance(await raw.next_event(), TextMessage)
        await trio.testing.wait_all_tasks_blocked()
        await hub.publish("t", "wake up")
        event = await raw.next_event()
    assert isinstance(event, TextMessage)
    assert json.loads(event.data)["data"] == "wake up"


@pytest.mark.parametrize(("reason", "code"), [(CloseReason.CUT, 1011), (CloseReason.DRAIN, 1001)])
async def test_a_subscription_closed_by_the_server_closes_the_session(
    server: Server, memory_client: MemoryClient, reason: CloseReason, code: int
) -> None:
    raw = await open_raw(server, memory_client)
    with trio.fail_after(5):
        await raw.send(type="subscribe", topic="t")
        assert isinstance(await raw.next_event(), TextMessage)
        [subscription] = server.app.subscriptions
        subscription.close(reason)
        event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert (event.code, event.reason) == (
        code,
        "cut off by the server" if reason is CloseReason.CUT else "server draining",
    )


class _AwaitedHistory:
    """A LocalHistory behind the plain (async) History interface only: the hub and
    the session must await every read and append."""

    def __init__(self, memory: MemoryHistory) -> None:
        self.local = LocalHistory(memory)

    def bind(self, feed: Feed) -> None:
        self.local.bind(feed)

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        if 100 < len(data) <= 1000:
            raise HistoryUnavailable("the store is away")
        return await self.local.append(topic, data, event, key=key)

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        return await self.local.read(topic, after, limit)

    async def head(self, topic: str) -> Position:
        return await self.local.head(topic)

    async def watch(self, topic: str) -> None:
        await self.local.watch(topic)

    def unwatch(self, topic: str) -> None:
        self.local.unwatch(topic)


async def test_with_an_async_history_sessions_replay_publish_and_follow(
    nursery: trio.Nursery,
) -> None:
    history = _AwaitedHistory(MemoryHistory(new_epoch(random.Random(10)), max_event_size=1000))
    hub = Hub(history)
    assert hub._immediate is None
    before = [await hub.publish("t", f"old {n}") for n in range(3)]
    server: Server = await nursery.start(partial(serve, hub, 0))
    with trio.fail_after(10):
        async with open_ws(server) as ws:
            await send(ws, type="subscribe", topic="t", cursor=before[0].format())
            assert [(await recv(ws))["id"] for _ in range(2)] == [p.format() for p in before[1:]]
            assert await recv(ws) == {
                "type": "subscribed",
                "topic": "t",
                "cursor": before[-1].format(),
            }
            await send(ws, type="publish", topic="t", msg_id="a", data="new", event="tick")
            got = [await recv(ws), await recv(ws)]
            ack = next(m for m in got if m["type"] == "published")
            event = next(m for m in got if m["type"] == "event")
            assert ack == {"type": "published", "msg_id": "a", "id": event["id"]}
            assert (event["event"], event["data"]) == ("tick", "new")
            await send(ws, type="publish", topic="t", msg_id="b", data="z" * 101)
            assert await recv(ws) == {
                "type": "error",
                "code": "unavailable",
                "message": "the store is away",
                "topic": "t",
                "msg_id": "b",
            }
            await send(ws, type="publish", topic="t", msg_id="a", data="new", event="tick")
            assert await recv(ws) == ack  # a resend: stored once, the first position
            await send(ws, type="publish", topic="t", msg_id="c", data="z" * 1001)
            error = await recv(ws)
            assert (error["code"], error["msg_id"]) == ("publish-rejected", "c")
    assert history.local.memory.head("t") == Position.parse(event["id"])
    # The session ended: it follows nothing any more.
    with trio.fail_after(5):
        while hub.subscriber_count() or server.app.subscriptions:
            await trio.testing.wait_all_tasks_blocked()
    server.drain()


async def fragments(raw: RawClient, text: str, size: int) -> None:
    """Send *text* as one message in fragments of *size* characters."""
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        await raw.stream.send_all(raw.ws.send(TextMessage(piece, message_finished=last)))


async def test_a_message_in_fragments_is_one_message(
    hub: Hub, start_server: StartServer, memory_client: MemoryClient
) -> None:
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=200))
    server = await start_server(config=config)
    raw = await open_raw(server, memory_client)
    with trio.fail_after(5):
        for msg_id in ("m1", "m2"):  # the second starts from nothing again
            publish = {"type": "publish", "topic": "t", "msg_id": msg_id, "data": "x" * 100}
            await fragments(raw, json.dumps(publish), 30)
            ack = await raw.next_event()
            assert isinstance(ack, TextMessage)
            assert json.loads(ack.data)["msg_id"] == msg_id
    answer = hub.history.memory.read("t", "earliest", 10)
    assert [e.data for e in answer.events] == ["x" * 100] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [200, 201])
async def test_fragments_are_counted_together_against_the_size_limit(
    start_server: StartServer, memory_client: MemoryClient, size: int
) -> None:
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=200))
    server = await start_server(config=config)
    raw = await open_raw(server, memory_client)
    head = '{"type": "publish", "topic": "t", "msg_id": "m", "data": "'
    text = head + "x" * (size - len(head) - 2) + '"}'
    assert len(text) == size
    with trio.fail_after(5):
        await fragments(raw, text, 50)
        event = await raw.next_event()
    if size <= 200:
        assert isinstance(event, TextMessage)
        assert json.loads(event.data)["type"] == "published"
    else:
        assert isinstance(event, CloseConnection)
        assert event.code == 1009


async def test_a_message_that_never_ends_is_cut_once_its_fragments_pass_the_limit(
    start_server: StartServer, memory_client: MemoryClient
) -> None:
    # The server does not buffer a message past the limit waiting for its end.
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=200))
    server = await start_server(config=config)
    raw = await open_raw(server, memory_client)
    with trio.fail_after(5):
        for _ in range(5):  # 250 characters, and never a last fragment
            await raw.stream.send_all(raw.ws.send(TextMessage("x" * 50, message_finished=False)))
        event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009
