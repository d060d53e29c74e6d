"""``open_session``: the reconnecting tidings.v1 client on trio-websocket."""

from __future__ import annotations

import bisect
import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tidings.backoff import Backoff, FullJitter, NoJitter
from tidings.cursor import new_epoch
from tidings.errors import LocalProtocolError
from tidings.events import Event, ResetNotice
from tidings.history import MemoryHistory
from tidings.trio import (
    Action,
    Hub,
    Refusal,
    Server,
    ServerConfig,
    SessionClosed,
    WebSocketConfig,
    WebSocketSession,
    open_session,
)
from tidings.trio.server._http import Request as HTTPRequest
from tidings.ws import EventMessage

from ._proxy import ChaosProxy
from .conftest import StartServer


def fast() -> Backoff:
    """A quick backoff for tests on real time."""
    return Backoff(FullJitter(base=0.01, cap=0.05), stable_period=5.0)


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


async def test_session_follows_topics_and_publish_returns_the_stored_id(
    server: Server, hub: Hub
) -> None:
    old = await hub.publish("a", "old")
    async with open_session(
        ws_url(server.port), {"a": "earliest", "b": None}, rng=random.Random(1)
    ) as session:
        ident = await session.publish("b", "mine", event="note")
        assert hub.history.memory.head("b").format() == ident
        got = [await session.__anext__(), await session.__anext__()]
        assert sorted((m.topic, m.id) for m in got) == [("a", old.format()), ("b", ident)]
        assert session.positions == {"a": old.format(), "b": ident}


async def test_unknown_cursor_surfaces_as_a_reset(server: Server, hub: Hub) -> None:
    head = await hub.publish("t", "x")
    async with open_session(ws_url(server.port), {"t": "zz.9"}) as session:
        reset = await session.__anext__()
        assert reset == ResetNotice("t", f"{head.epoch}.0", "unknown-epoch")
        replayed = await session.__anext__()
        assert isinstance(replayed, Event)
        assert replayed.id == head.format()


async def test_session_resumes_every_topic_after_cuts_without_loss_or_duplicates(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(3)), max_events=10_000))
    server = await start_server(config=ServerConfig())
    server.hub = hub  # not used by the app; make the app serve the new hub
    server.app.hub = hub
    proxy = await ChaosProxy(server.port, random.Random(7), max_cuts=8, max_bytes=4000).start(
        nursery
    )
    topics = ["x", "y"]
    seen: dict[str, list[str]] = {t: [] for t in topics}
    async with open_session(
        ws_url(proxy.port), dict.fromkeys(topics, "earliest"), rng=random.Random(2), backoff=fast()
    ) as session:
        for i in range(300):
            await hub.publish(topics[i % 2], f"{i}")
        while sum(map(len, seen.values())) < 300:
            item = await session.__anext__()
            assert isinstance(item, Event), item
            seen[item.topic].append(item.data)
        assert session.connections > 1
    assert seen == {t: [str(i) for i in range(k, 300, 2)] for k, t in enumerate(topics)}


async def test_refused_handshake_gives_up_with_the_status(start_server: StartServer) -> None:
    async def auth(request: HTTPRequest, action: Action, topic: str | None) -> Refusal | None:
        return Refusal(401, "who are you?")

    server = await start_server(config=ServerConfig(auth=auth))
    async with open_session(ws_url(server.port), ["t"]) as session:
        with pytest.raises(SessionClosed) as info:
            await session.__anext__()
    assert info.value.status == 401
    assert session.attempts == 1


async def test_a_404_raises_session_closed_bare_out_of_the_block(server: Server) -> None:
    async def follow() -> None:
        async with open_session(f"ws://127.0.0.1:{server.port}/nope", ["t"]) as session:
            async for _ in session:
                pass  # pragma: no cover

    with pytest.raises(SessionClosed) as info:  # not an ExceptionGroup around it
        await follow()
    assert info.value.status == 404
    assert "404" in str(info.value)


async def test_what_the_body_raises_comes_out_bare(server: Server) -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine):
        async with open_session(ws_url(server.port), ["t"]):
            raise Mine


@pytest.mark.parametrize(
    "headers", [[("authorization", "x")], {"Sec-WebSocket-Protocol": "x"}, {"X-Bad": "a\nb"}]
)
async def test_headers_are_a_checked_mapping(headers: object) -> None:
    with pytest.raises(LocalProtocolError):
        async with open_session("ws://127.0.0.1:9/ws", headers=headers):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_credentials_reach_the_auth_hook(start_server: StartServer) -> None:
    async def auth(request: HTTPRequest, action: Action, topic: str | None) -> Refusal | None:
        return None if request.header(b"authorization") == b"Bearer ok" else Refusal()

    server = await start_server(config=ServerConfig(auth=auth))
    async with open_session(ws_url(server.port), headers={"Authorization": "Bearer ok"}) as session:
        assert await session.publish("t", "in")


async def test_oversized_publish_ends_the_session_with_1009(start_server: StartServer) -> None:
    config = ServerConfig(websocket=WebSocketConfig(max_message_size=500))
    server = await start_server(config=config)
    async with open_session(ws_url(server.port)) as session:
        with pytest.raises(SessionClosed) as info:
            await session.publish("t", "x" * 1000)
        assert info.value.code == 1009
        assert session.attempts == 1


# ----------------------------------------------------------------- fake transports

OpenStream = Callable[[WebSocketSession], Awaitable[trio.abc.Stream]]


def patch_transport(
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
    serve: Callable[[trio.abc.Stream], Awaitable[None]],
    attempts: list[float],
    refuse: Callable[[], bool] = lambda: False,
) -> None:
    """Sessions connect over in-memory streams to *serve* (deterministic on the
    autojump clock); *attempts* records when each connection attempt started."""

    async def open_stream(self: WebSocketSession) -> trio.abc.Stream:
        attempts.append(trio.current_time())
        if refuse():
            raise OSError("connection refused")
        client, remote = trio.testing.memory_stream_pair()
        nursery.start_soon(serve, remote)
        return client

    monkeypatch.setattr(WebSocketSession, "_open_stream", open_stream)


async def accept(stream: trio.abc.Stream) -> WSConnection:
    """Complete the server side of a WebSocket handshake on *stream*."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(bytes(await stream.receive_some()))
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection(subprotocol="tidings.v1")))
                return ws


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_server_that_accepts_then_closes_cannot_drive_a_hot_loop(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, autojump_clock: object
) -> None:
    async def accept_then_close(stream: trio.abc.Stream) -> None:
        ws = await accept(stream)
        await stream.send_all(ws.send(CloseConnection(1011, "oops")))
        await trio.aclose_forcefully(stream)

    attempts: list[float] = []
    patch_transport(monkeypatch, nursery, accept_then_close, attempts)
    start = trio.current_time()
    with trio.move_on_after(60):
        async with open_session("ws://fake/ws", ["t"], rng=random.Random(5)) as session:
            async for _ in session:
                pass
    # Backoff grows although every handshake succeeds (python-websockets makes
    # hundreds of attempts per second here).
    assert 3 <= len(attempts) <= 12, attempts
    assert attempts[-1] - start > 20


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_missing_pong_makes_the_client_reconnect_with_1011(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, autojump_clock: object
) -> None:
    async def never_pong(stream: trio.abc.Stream) -> None:
        await accept(stream)
        await trio.sleep_forever()  # reads nothing: pings go unanswered

    attempts: list[float] = []
    patch_transport(monkeypatch, nursery, never_pong, attempts)
    with trio.move_on_after(100):
        async with open_session(
            "ws://fake/ws", ["t"], ping_interval=10, pong_timeout=5, backoff=fast()
        ) as session:
            async for _ in session:
                pass
    # A dead peer is detected after interval + timeout = 15 s, then reconnected.
    assert len(attempts) >= 5
    assert attempts[1] - attempts[0] == pytest.approx(15, abs=1)
    assert session.connections == len(attempts)


def peak_per_window(times: list[float], window: float = 0.1) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def storm(
    monkeypatch: pytest.MonkeyPatch, backoff: Callable[[], Backoff], clients: int
) -> list[float]:
    """*clients* sessions lose their server at t=10; it refuses connections until
    t=30.  Returns when each reconnect attempt happened (after t=10)."""
    attempts: list[float] = []
    live: list[trio.abc.Stream] = []
    lost = trio.Event()

    async def serve_until_lost(stream: trio.abc.Stream) -> None:
        await accept(stream)
        live.append(stream)
        await lost.wait()
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        patch_transport(
            monkeypatch,
            nursery,
            serve_until_lost,
            attempts,
            refuse=lambda: 10 <= trio.current_time() - base < 30,
        )
        base = trio.current_time()
        rng = random.Random(11)

        async def client() -> None:
            with trio.move_on_after(40):
                async with open_session(
                    "ws://fake/ws", ["t"], rng=rng, backoff=backoff(), ping_interval=1e6
                ) as session:
                    async for _ in session:
                        pass

        for _ in range(clients):
            nursery.start_soon(client)
        await trio.sleep(10)
        assert len(live) == clients
        lost.set()
    return [t - base for t in attempts if t - base >= 10]


@pytest.mark.slow
@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_reconnect_storm_peak_is_five_times_lower_with_jitter(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    jittered = await storm(
        monkeypatch, lambda: Backoff(FullJitter(base=1.0, cap=30.0), stable_period=5.0), 1000
    )
    unjittered = await storm(
        monkeypatch, lambda: Backoff(NoJitter(base=1.0, cap=30.0), stable_period=5.0), 1000
    )
    assert peak_per_window(unjittered) == 1000
    assert peak_per_window(jittered) * 5 <= peak_per_window(unjittered)


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_busy_consumer_loses_no_event_and_is_not_taken_for_a_dead_peer(
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
    server: Server,
    hub: Hub,
    autojump_clock: object,
) -> None:
    # The cursor moves when an event is received, before the busy consumer takes it;
    # the pongs wait unread meanwhile.  A pong timeout used to end the connection,
    # cancel the hand-over and resume after the event: it was lost.
    attempts: list[float] = []
    patch_transport(monkeypatch, nursery, server.serve_stream, attempts)
    for i in range(1, 6):
        hub.publish_nowait("t", str(i))
    got: list[str] = []
    with trio.fail_after(300):
        async with open_session(
            "ws://fake/ws", {"t": "earliest"}, buffer=0, ping_interval=1, pong_timeout=1
        ) as session:
            async for item in session:
                assert isinstance(item, Event), item
                got.append(item.data)
                if len(got) == 1:
                    await trio.sleep(30)  # a busy consumer: no pongs are read meanwhile
                if item.data == "5":
                    break
    assert got == ["1", "2", "3", "4", "5"]
    # A consumer that holds up the reading (and so the pongs) is backpressure, not
    # a dead peer: the connection stays up.
    assert session.connections == 1


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_event_whose_hand_over_a_lost_connection_cancelled_is_delivered_before_the_end(
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
    server: Server,
    hub: Hub,
    autojump_clock: object,
) -> None:
    # Its cursor already moved, so no resume would bring it back.
    attempts: list[float] = []
    patch_transport(monkeypatch, nursery, server.serve_stream, attempts)
    for i in range(1, 4):
        hub.publish_nowait("t", str(i))
    got: list[Event] = []

    async def consume(session: WebSocketSession) -> None:
        async for item in session:
            assert isinstance(item, Event), item
            got.append(item)
            if len(got) == 1:
                await trio.sleep(5)  # "2" is received and waits for us meanwhile
                assert session._conn_scope is not None
                session._conn_scope.cancel()  # the connection ends mid-hand-over

    with trio.fail_after(300):
        async with open_session("ws://fake/ws", {"t": "earliest"}, buffer=0) as session:
            with pytest.raises(SessionClosed):
                await consume(session)
    assert [item.data for item in got] == ["1", "2"]
    assert session.positions == {"t": got[-1].id}


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_dead_peer_is_still_detected_once_a_busy_consumer_catches_up(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, autojump_clock: object
) -> None:
    async def send_then_go_silent(stream: trio.abc.Stream) -> None:
        ws = await accept(stream)
        for i in range(3):
            message = EventMessage("t", f"x{i}", str(i)).encode()
            await stream.send_all(ws.send(TextMessage(data=message)))
        await trio.sleep_forever()  # reads nothing: pings go unanswered

    attempts: list[float] = []
    patch_transport(monkeypatch, nursery, send_then_go_silent, attempts)
    got = 0
    with trio.fail_after(100):
        async with open_session(
            "ws://fake/ws", ["t"], buffer=0, ping_interval=1, pong_timeout=1, backoff=fast()
        ) as session:
            async for _ in session:
                got += 1
                if got == 1:
                    await trio.sleep(30)  # a busy consumer
                if len(attempts) > 1:
                    break
    # Not at t~2 (the consumer held up the reading), but a pong timeout after it
    # caught up at t=30 (plus 1 s for the unanswered close frame).
    assert 31 <= attempts[1] - attempts[0] <= 33, attempts
