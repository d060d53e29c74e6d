"""The server over HTTP/1.1: endpoints, SSE replay and resets, limits, bad input."""

from __future__ import annotations

import json
import random
from contextlib import suppress
from typing import TYPE_CHECKING

import h11
import pytest
import trio
import trio.lowlevel
import trio.testing

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory, Replay
from tidings.trio import Hub, Server, ServerConfig, Subscription, serve

from .test_longpoll_endpoint import _GatedHistory

if TYPE_CHECKING:
    from conftest import HTTP1, Connect, MemoryClient, StartServer

pytestmark = pytest.mark.timeout(30)

SSE = "/topics/t/events"


async def publish_numbers(hub: Hub, count: int, topic: str = "t") -> list[Position]:
    return [(await hub.publish(topic, str(n))) for n in range(1, count + 1)]


# -- plain endpoints --------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(server: Server, connect: Connect) -> None:
    client = await connect(server)
    assert (await client.request("GET", "/healthz"))[::2] == (200, b"ok\n")
    assert (await client.request("GET", "/readyz"))[::2] == (200, b"ready\n")


async def test_keep_alive_serves_several_requests_on_one_connection(
    server: Server, connect: Connect
) -> None:
    client = await connect(server)
    for _ in range(5):
        status, headers, _ = await client.request("GET", "/healthz")
        assert status == 200
        assert b"connection" not in headers


async def test_head_sends_headers_without_body(server: Server, connect: Connect) -> None:
    client = await connect(server)
    status, headers, body = await client.request("HEAD", "/healthz")
    assert (status, body, headers[b"content-length"]) == (200, b"", b"3")


async def test_head_on_an_event_stream_sends_its_headers_only(
    server: Server, connect: Connect
) -> None:
    client = await connect(server)
    status, headers, body = await client.request("HEAD", SSE)
    assert status == 200
    assert body == b""
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"


async def test_options_lists_the_allowed_methods(server: Server, connect: Connect) -> None:
    client = await connect(server)
    status, headers, _ = await client.request("OPTIONS", "/topics/t")
    assert status == 204
    assert headers[b"allow"] == b"OPTIONS, POST"
    status, headers, _ = await client.request("OPTIONS", "*")
    assert status == 204


async def test_204_and_304_answers_carry_no_content_length(
    server: Server, hub: Hub, connect: Connect
) -> None:
    client = await connect(server)
    status, headers, _ = await client.request("OPTIONS", "*")
    assert status == 204
    assert b"content-length" not in headers
    cursor = (await hub.publish("t", "x")).format()
    status, headers, body = await client.request(
        "GET", "/topics/t/poll?timeout=0", [("if-none-match", f'"{cursor}"')]
    )
    assert (status, body) == (304, b"")
    assert b"content-length" not in headers
    # Other answers still carry it, an empty body included; keep-alive still works.
    status, headers, body = await client.request("GET", f"/topics/t/poll?timeout=0&cursor={cursor}")
    assert status == 200
    assert headers[b"content-length"] == str(len(body)).encode()


async def test_wrong_method_gets_405_with_allow(server: Server, connect: Connect) -> None:
    client = await connect(server)
    status, headers, _ = await client.request("DELETE", SSE)
    assert status == 405
    assert headers[b"allow"] == b"GET, HEAD, OPTIONS"
    status, headers, _ = await client.request("GET", "/topics/t")
    assert (status, headers[b"allow"]) == (405, b"OPTIONS, POST")


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/index.html",
        "/tidings.js/x",
        "/topics",
        "/topics/t/events/x",
        "/topics/a/b/events",
        "/healthz/",
    ],
)
async def test_unknown_paths_get_404(server: Server, connect: Connect, path: str) -> None:
    client = await connect(server)
    assert (await client.request("GET", path))[0] == 404


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_target_that_is_no_path_gets_400(
    server: Server, connect: Connect, method: str
) -> None:
    # Found by fuzz/fuzz_server_http1.py: for a HEAD the 400 carried a body, which h11
    # refused; the connection failed with a logged traceback and no answer.
    client = await connect(server)
    status, _, body = await client.request(method, "?")
    assert (status, body) == (400, b"" if method == "HEAD" else b"Bad request target\n")
    assert (await client.request("GET", "/healthz"))[0] == 200


@pytest.mark.parametrize(
    "topic", ["a%2Fb", "a%20b", "..", ".", "x" * 129, "%zz", "%4", "caf%C3%A9", "a+b", "a%00"]
)
async def test_invalid_topic_names_get_400(server: Server, connect: Connect, topic: str) -> None:
    client = await connect(server)
    assert (await client.request("GET", f"/topics/{topic}/events"))[0] == 400
    assert (await client.request("POST", f"/topics/{topic}", body=b"x"))[0] == 400


async def test_percent_encoded_unreserved_characters_name_the_same_topic(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    status, _, body = await client.request("POST", "/topics/%41b.c~_-9", body=b"x")
    assert status == 201
    assert hub.history.memory.head("Ab.c~_-9").format() == json.loads(body)["id"]
    assert (await client.request("POST", "/topics/" + "x" * 128, body=b"x"))[0] == 201


# -- publishing -------------------------------------------------------------------


async def test_publish_stores_the_body_and_answers_201_with_the_id(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    status, headers, body = await client.request(
        "POST", "/topics/news?event=greeting", body="héllo\nworld".encode()
    )
    assert status == 201
    assert headers[b"content-type"] == b"application/json"
    position = Position.parse(json.loads(body)["id"])
    replay = hub.history.memory.read("news", Position(position.epoch, 0))
    assert isinstance(replay, Replay)
    stored = replay.events[0]
    assert (stored.position, stored.data, stored.event) == (position, "héllo\nworld", "greeting")


async def test_publish_of_an_empty_body_is_an_empty_event(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    assert (await client.request("POST", "/topics/t"))[0] == 201
    assert hub.history.memory.head("t").offset == 1


async def test_publish_rejects_invalid_utf8(hub: Hub, server: Server, connect: Connect) -> None:
    client = await connect(server)
    assert (await client.request("POST", "/topics/t", body=b"\xff\xfe"))[0] == 400
    assert hub.history.memory.head("t").offset == 0


@pytest.mark.parametrize("event", ["a%0Db", "a%0Ab", "%00", "%FF", "x" * 257])
async def test_publish_rejects_bad_event_types(
    server: Server, connect: Connect, event: str
) -> None:
    client = await connect(server)
    assert (await client.request("POST", f"/topics/t?event={event}", body=b"x"))[0] == 400


async def test_publish_body_over_the_limit_gets_413(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(max_body_size=10))
    client = await connect(server)
    await client.send("POST", "/topics/t", body=b"x" * 11)
    response = await client.response()
    assert response.status_code == 413
    assert [value for name, value in response.headers if name == b"connection"] == [b"close"]
    client = await connect(server)
    assert (await client.request("POST", "/topics/t", body=b"x" * 10))[0] == 201


async def test_chunked_publish_body_over_the_limit_gets_413(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(max_body_size=10))
    client = await connect(server)
    head = b"POST /topics/t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    await client.stream.send_all(head + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    response = await client.response()
    assert response.status_code == 413


async def test_expect_100_continue_is_honoured(server: Server, connect: Connect) -> None:
    client = await connect(server)
    headers = [("host", "x"), ("content-length", "2"), ("expect", "100-continue")]
    await client.stream.send_all(
        client.conn.send(h11.Request(method="POST", target="/topics/t", headers=headers))
    )
    event = await client.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 100
    await client.stream.send_all(
        client.conn.send(h11.Data(data=b"ok")) + client.conn.send(h11.EndOfMessage())
    )
    assert (await client.response()).status_code == 201


# -- the event stream ---------------------------------------------------------------


async def test_event_stream_headers_and_initial_retry(server: Server, connect: Connect) -> None:
    client = await connect(server)
    await client.send("GET", SSE, [("accept-encoding", "gzip")])
    response = await client.response()
    headers = dict(response.headers)
    assert response.status_code == 200
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"content-encoding" not in headers
    assert b"content-length" not in headers
    data = await client.next_event()
    assert isinstance(data, h11.Data)
    assert bytes(data.data) == b"retry: 3000\n\n"


async def test_no_last_event_id_means_live_from_now(
    hub: Hub, server: Server, connect: Connect
) -> None:
    await publish_numbers(hub, 3)
    client = await connect(server)
    await client.send("GET", SSE)
    await client.response()
    await client.next_event()  # retry
    await hub.publish("t", "live")
    [event] = await client.events(1)
    assert event.data == "live"


async def test_replay_from_last_event_id_then_live(
    hub: Hub, server: Server, connect: Connect
) -> None:
    positions = await publish_numbers(hub, 5)
    client = await connect(server)
    await client.send("GET", SSE, [("last-event-id", positions[1].format())])
    assert (await client.response()).status_code == 200
    events = await client.events(3)
    assert [(e.data, e.last_event_id) for e in events] == [
        (str(n), positions[n - 1].format()) for n in (3, 4, 5)
    ]
    await hub.publish("t", "6")
    [live] = await client.events(1)
    assert live.data == "6"
    assert Position.parse(live.last_event_id) == positions[-1].next()


async def test_replay_from_the_query_parameter(hub: Hub, server: Server, connect: Connect) -> None:
    positions = await publish_numbers(hub, 5)
    client = await connect(server)
    await client.send("GET", f"{SSE}?last-event-id={positions[2].format()}")
    await client.response()
    assert [e.data for e in await client.events(2)] == ["4", "5"]


async def test_the_header_wins_over_the_query_parameter(
    hub: Hub, server: Server, connect: Connect
) -> None:
    positions = await publish_numbers(hub, 5)
    client = await connect(server)
    target = f"{SSE}?last-event-id={positions[0].format()}"
    await client.send("GET", target, [("last-event-id", positions[3].format())])
    await client.response()
    assert [e.data for e in await client.events(1)] == ["5"]


async def test_earliest_replays_all_retained(hub: Hub, server: Server, connect: Connect) -> None:
    await publish_numbers(hub, 4)
    client = await connect(server)
    await client.send("GET", f"{SSE}?last-event-id=earliest")
    await client.response()
    assert [e.data for e in await client.events(4)] == ["1", "2", "3", "4"]


async def expect_reset_then_live(
    hub: Hub, client: HTTP1, positions: list[Position], reason: str
) -> None:
    """A reset, then every event still retained after it, then live events.

    A malformed ID names no place: the stream continues at the head.  Another
    epoch (a restart): the stream continues with everything the topic retains.
    """
    head = positions[-1]
    replayed = positions if reason == "unknown-epoch" else []
    cursor = Position(head.epoch, 0) if replayed else head
    assert (await client.response()).status_code == 200
    [reset, *rest] = await client.events(1 + len(replayed))
    assert reset.type == "tidings.reset"
    assert json.loads(reset.data) == {"cursor": cursor.format(), "reason": reason}
    assert reset.last_event_id == cursor.format()
    assert [Position.parse(event.last_event_id) for event in rest] == replayed
    await hub.publish("t", "live")
    [live] = await client.events(1)
    assert live.data == "live"
    assert Position.parse(live.last_event_id) == head.next()


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [
        ("not-a-cursor", "malformed"),
        ("someotherepoch.2", "unknown-epoch"),
        ("x" * 5000, "malformed"),
        ("\u00e9t\u00e9.1", "malformed"),
    ],
)
async def test_unusable_last_event_id_gives_a_reset_then_live(
    hub: Hub, server: Server, connect: Connect, last_event_id: str, reason: str
) -> None:
    positions = await publish_numbers(hub, 3)
    client = await connect(server)
    raw = last_event_id.encode("utf-8")
    head = b"GET " + SSE.encode() + b" HTTP/1.1\r\nhost: x\r\nlast-event-id: " + raw + b"\r\n\r\n"
    await client.stream.send_all(head)
    client.conn.send(h11.Request(method="GET", target=SSE, headers=[("host", "x")]))
    client.conn.send(h11.EndOfMessage())
    await expect_reset_then_live(hub, client, positions, reason)


async def test_non_utf8_last_event_id_gives_a_reset(
    hub: Hub, server: Server, connect: Connect
) -> None:
    positions = await publish_numbers(hub, 2)
    client = await connect(server)
    await client.send("GET", f"{SSE}?last-event-id=%FF%00%FE")
    await expect_reset_then_live(hub, client, positions, "malformed")


async def test_non_utf8_last_event_id_header_gives_a_reset(
    hub: Hub, server: Server, connect: Connect
) -> None:
    positions = await publish_numbers(hub, 2)
    client = await connect(server)
    head = b"GET " + SSE.encode() + b" HTTP/1.1\r\nhost: x\r\nlast-event-id: \xff\xfe.1\r\n\r\n"
    await client.stream.send_all(head)
    client.conn.send(h11.Request(method="GET", target=SSE, headers=[("host", "x")]))
    client.conn.send(h11.EndOfMessage())
    await expect_reset_then_live(hub, client, positions, "malformed")


async def test_requests_for_made_up_topics_cannot_push_real_topics_out(
    nursery: trio.Nursery, connect: Connect
) -> None:
    # Every valid name is a topic, but only publishing creates one: readers of
    # made-up names must not evict the history of real topics.
    history = MemoryHistory("ep", max_topics=5)
    hub = Hub(history)
    server: Server = await nursery.start(serve, hub, 0)
    old = await hub.publish("real", "old")
    await hub.publish("real", "new")
    client = await connect(server)
    for n in range(50):
        status, _, _ = await client.request("GET", f"/topics/junk{n}/poll?cursor=zz.1&timeout=0")
        assert status == 200
    assert len(history) == 1
    resume = [("last-event-id", old.format())]
    await client.send("GET", SSE.replace("/t/", "/real/"), resume)
    await client.response()
    [event] = [e for e in await client.some_events() if e.type == "message"]
    assert event.data == "new"


async def test_last_event_id_with_nul_in_the_header_is_refused(
    server: Server, connect: Connect
) -> None:
    client = await connect(server)
    await client.stream.send_all(b"GET /topics/t/events HTTP/1.1\r\nlast-event-id: a\x00b\r\n\r\n")
    assert b" 400 " in (await client.raw_until_closed()).split(b"\r\n")[0]


async def test_evicted_last_event_id_gives_a_reset(
    hub: Hub, server: Server, connect: Connect
) -> None:
    positions = await publish_numbers(hub, 150)  # the fixture's history keeps 100
    client = await connect(server)
    await client.send("GET", SSE, [("last-event-id", positions[10].format())])
    assert (await client.response()).status_code == 200
    [reset, *replayed] = await client.events(101)
    # The reset stands where events were lost; every retained one follows.
    assert reset.type == "tidings.reset"
    assert json.loads(reset.data) == {"cursor": positions[49].format(), "reason": "evicted"}
    assert [Position.parse(e.last_event_id) for e in replayed] == positions[50:]


async def test_events_with_types_and_multiline_data_round_trip(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    await client.send("GET", SSE)
    await client.response()
    await hub.publish("t", "line1\r\nline2\rline3", event="kind")
    await hub.publish("t", "")
    events = await client.events(2)
    assert [(e.type, e.data) for e in events] == [
        ("kind", "line1\nline2\nline3"),
        ("message", ""),
    ]


async def test_several_queued_events_go_out_in_one_write(
    hub: Hub, memory_client: MemoryClient
) -> None:
    server = Server(hub)
    client = await memory_client(server)
    await client.send("GET", SSE)
    await client.response()
    await client.next_event()  # retry
    for n in range(20):
        hub.publish_nowait("t", str(n))
    chunk = await client.next_event()
    assert isinstance(chunk, h11.Data)
    assert bytes(chunk.data).count(b"data: ") == 20


async def test_heartbeat_comments_keep_a_quiet_stream_alive(
    hub: Hub, memory_client: MemoryClient, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(hub, ServerConfig(heartbeat_interval=15, idle_timeout=5))
    client = await memory_client(server)
    await client.send("GET", SSE)
    await client.response()
    start = trio.current_time()
    await client.next_event()  # retry
    for beat in range(1, 4):
        chunk = await client.next_event()
        assert isinstance(chunk, h11.Data)
        assert bytes(chunk.data) == b":\n"
        assert trio.current_time() == pytest.approx(start + 15 * beat)
    # An event restarts the interval; the ticker looks four times per interval, so
    # the next comment comes between 1 and 1.25 intervals later.
    await trio.sleep(5)
    await hub.publish("t", "x")
    chunk = await client.next_event()
    assert isinstance(chunk, h11.Data)
    assert b"data: x" in bytes(chunk.data)
    await client.next_event()
    assert start + 50 + 15 <= trio.current_time() <= start + 50 + 15 * 1.25


async def test_retry_on_connect_is_configurable(hub: Hub, memory_client: MemoryClient) -> None:
    server = Server(hub, ServerConfig(sse_retry=None))
    client = await memory_client(server)
    await client.send("GET", SSE)
    await client.response()
    chunk = await client.next_event()
    assert isinstance(chunk, h11.Data)
    assert bytes(chunk.data) == b":\n"


async def test_a_slow_reader_costs_bounded_memory_and_catches_up_from_the_history(
    hub: Hub, start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(subscriber_max_events=8))
    client = await connect(server)
    await client.send("GET", SSE)
    await client.response()
    [subscription] = server.app.subscriptions
    assert isinstance(subscription, Subscription)
    payload = "x" * 50_000
    # The client does not read: socket buffers fill, then the subscriber's buffer
    # overflows; the publisher never waits, and the buffer never grows.
    positions = []
    for _ in range(300):
        positions.append(await hub.publish("t", payload))
        assert subscription.pending <= 8
    assert subscription.overflows >= 1
    assert subscription.closed is None
    # Reading now, the client gets what fitted in the socket buffers, a reset where
    # the history (100 events) no longer had what followed, then every event it
    # still has, up to the last: nothing repeated, nothing skipped silently.
    seen: list[Position] = []
    resets: list[dict[str, str]] = []
    with trio.fail_after(20):
        while not seen or seen[-1] != positions[-1]:
            for event in await client.some_events():
                if event.type == "tidings.reset":
                    resets.append(json.loads(event.data))
                    seen.append(Position.parse(event.last_event_id))
                else:
                    seen.append(Position.parse(event.last_event_id))
    assert [r["reason"] for r in resets] == ["evicted"]
    cut = seen.index(Position.parse(resets[0]["cursor"]))
    assert seen[:cut] == positions[: len(seen[:cut])]
    assert seen[cut + 1 :] == positions[positions.index(seen[cut]) + 1 :]
    assert len(seen) - 1 < len(positions)


async def test_a_client_that_stops_reading_is_cut_after_the_write_timeout(
    hub: Hub, start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(write_timeout=0.5))
    client = await connect(server)
    await client.send("GET", SSE)
    await client.response()
    payload = "x" * 50_000
    with trio.fail_after(20):
        while hub.subscriber_count("t"):
            await hub.publish("t", payload)
            await trio.sleep(0.01)  # pace the publisher; the server's timer does the cut
    raw = await client.raw_until_closed()
    assert not raw.endswith(b"0\r\n\r\n")  # cut, not a clean end of the body
    # Everyone else is fine.
    other = await connect(server)
    assert (await other.request("GET", "/healthz"))[0] == 200


# -- bad input and limits ------------------------------------------------------------


async def test_malformed_request_gets_400_and_others_are_unaffected(
    server: Server, connect: Connect
) -> None:
    bystander = await connect(server)
    await bystander.send("GET", SSE)
    await bystander.response()
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\r\n\r\n",
    ):
        client = await connect(server)
        await client.stream.send_all(garbage)
        answer = await client.raw_until_closed()
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert (await (await connect(server)).request("GET", "/healthz"))[0] == 200


async def test_oversized_headers_get_431(start_server: StartServer, connect: Connect) -> None:
    server = await start_server(config=ServerConfig(max_header_size=4096))
    client = await connect(server)
    await client.stream.send_all(
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n"
    )
    assert (await client.raw_until_closed()).startswith(b"HTTP/1.1 431 ")


async def test_slowloris_gets_408_after_the_header_timeout(
    hub: Hub, memory_client: MemoryClient, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(hub, ServerConfig(header_timeout=10, idle_timeout=60))
    client = await memory_client(server)
    start = trio.current_time()
    await client.stream.send_all(b"GET /healthz HTTP/1.1\r\n")
    for _ in range(5):
        await trio.sleep(1)
        await client.stream.send_all(b"x-slow: 1\r\n")
    answer = await client.stream.receive_some()
    assert trio.current_time() - start == pytest.approx(10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer
    await client.raw_until_closed()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    hub: Hub, memory_client: MemoryClient, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(hub, ServerConfig(idle_timeout=30))
    client = await memory_client(server)
    assert (await client.request("GET", "/healthz"))[0] == 200
    start = trio.current_time()
    assert await client.raw_until_closed() == b""
    assert trio.current_time() - start == pytest.approx(30)


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    hub: Hub, memory_client: MemoryClient, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(hub, ServerConfig(header_timeout=7))
    client = await memory_client(server)
    start = trio.current_time()
    assert await client.raw_until_closed() == b""
    assert trio.current_time() - start == pytest.approx(7)


async def test_connections_beyond_the_limit_get_503_with_retry_after(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(max_connections=2, retry_after=7))
    first = await connect(server)
    second = await connect(server)
    assert (await first.request("GET", "/healthz"))[0] == 200
    assert (await second.request("GET", "/healthz"))[0] == 200
    third = await connect(server)
    await third.send("GET", "/topics/t/poll?timeout=0")
    response = await third.response()
    headers = dict(response.headers)
    assert (response.status_code, headers[b"retry-after"]) == (503, b"7")
    assert [value for name, value in response.headers if name == b"connection"] == [b"close"]
    await third.body()
    assert await third.raw_until_closed() == b""
    await first.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    fourth = await connect(server)
    assert (await fourth.request("GET", "/healthz"))[0] == 200


async def test_connections_beyond_the_rejection_allowance_are_closed_at_once(
    start_server: StartServer, connect: Connect
) -> None:
    config = ServerConfig(max_connections=1, max_rejected_connections=0)
    server = await start_server(config=config)
    first = await connect(server)
    assert (await first.request("GET", "/healthz"))[0] == 200
    second = await connect(server)
    await second.stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert await second.raw_until_closed() == b""


async def test_cors_header_when_configured(start_server: StartServer, connect: Connect) -> None:
    server = await start_server(config=ServerConfig(allow_origin="*"))
    client = await connect(server)
    status, headers, _ = await client.request("GET", "/healthz")
    assert headers[b"access-control-allow-origin"] == b"*"
    status, headers, _ = await client.request("OPTIONS", SSE)
    assert status == 204
    assert b"last-event-id" in headers[b"access-control-allow-headers"]


async def test_cors_exposes_retry_after_and_etag(
    start_server: StartServer, connect: Connect, hub: Hub
) -> None:
    """Neither is CORS-safelisted: a page of another origin reads them only when
    exposed (Retry-After paces its retries, a poll's ETag is its cursor)."""
    config = ServerConfig(allow_origin="https://app.example", max_connections=1)
    server = await start_server(config=config)
    client = await connect(server)
    origin = [("origin", "https://app.example")]
    with trio.fail_after(10):
        status, headers, _ = await client.request("GET", "/topics/t/poll?timeout=0", origin)
        assert status == 200
        assert b"etag" in headers
        exposed = {name.strip() for name in headers[b"access-control-expose-headers"].split(b",")}
        assert {b"retry-after", b"etag"} <= exposed
        # A second connection is one too many: 503 with Retry-After.
        second = await connect(server)
        status, headers, _ = await second.request("GET", "/topics/t/poll?timeout=0", origin)
    assert status == 503
    assert b"retry-after" in headers
    assert headers[b"access-control-expose-headers"] == b"retry-after, etag"


async def test_no_cors_headers_without_allow_origin(server: Server, connect: Connect) -> None:
    client = await connect(server)
    with trio.fail_after(10):
        _, headers, _ = await client.request("GET", "/topics/t/poll?timeout=0")
    assert b"access-control-allow-origin" not in headers
    assert b"access-control-expose-headers" not in headers


async def test_no_event_is_lost_or_repeated_while_publishing_during_replays(
    hub: Hub, server: Server, connect: Connect
) -> None:
    total = 400
    positions: list[Position] = []
    results: dict[int, list[str]] = {}

    async def reader(resume_index: int) -> None:
        client = await connect(server)
        await client.send("GET", SSE, [("last-event-id", positions[resume_index].format())])
        await client.response()
        seen: list[str] = []
        while not seen or seen[-1] != str(total - 1):
            seen += [event.data for event in await client.some_events()]
        results[resume_index] = seen

    async with trio.open_nursery() as nursery:
        for n in range(total):
            positions.append(await hub.publish("t", str(n)))
            # Publishing into idle sinks only yields every PUBLISH_BATCH; yield after
            # each (as an application doing other I/O would), so that readers connect
            # while this goes on, and resume within the history's 100 events.
            await trio.lowlevel.checkpoint()
            if n % 40 == 39:
                # Resume from 30 events back: a replay runs while publishing goes on.
                nursery.start_soon(reader, n - 30)
    assert len(results) == total // 40
    for resume_index, seen in results.items():
        assert seen == [str(n) for n in range(resume_index + 1, total)]


async def test_a_burst_reaches_an_idle_stream_in_one_write(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    await client.send("GET", SSE)
    await client.response()
    await client.next_event()  # retry
    await trio.testing.wait_all_tasks_blocked()
    for n in range(20):
        hub.publish_nowait("t", str(n))
    await trio.testing.wait_all_tasks_blocked()
    data = await client.stream.receive_some()
    assert data.count(b"data: ") == 20


async def test_large_bursts_through_a_full_socket_arrive_complete_and_in_order(
    hub: Hub, start_server: StartServer, connect: Connect
) -> None:
    big_hub_server = await start_server(
        config=ServerConfig(subscriber_max_events=100_000, subscriber_max_bytes=10**9)
    )
    client = await connect(big_hub_server)
    await client.send("GET", SSE)
    await client.response()
    total = 600
    payload = "y" * 20_000

    async def publisher() -> None:
        for n in range(total):
            hub.publish_nowait("t", f"{n} {payload}")
            if n % 50 == 49:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        seen: list[int] = []
        while len(seen) < total:
            seen += [int(e.data.split()[0]) for e in await client.some_events()]
    assert seen == list(range(total))
    assert hub.subscriber_count("t") == 1


async def test_http10_clients_get_a_close_delimited_stream(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    await client.stream.send_all(b"GET /topics/t/events HTTP/1.0\r\n\r\n")
    received = b""
    while b"retry: 3000\n\n" not in received:
        received += await client.stream.receive_some()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in received.lower()
    await hub.publish("t", "plain")
    while b"data: plain\n\n" not in received:
        received += await client.stream.receive_some()
    assert not received.endswith(b"\r\n")  # no chunk framing


async def test_pipelined_requests_are_answered_in_order(server: Server, connect: Connect) -> None:
    client = await connect(server)
    await client.stream.send_all(
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /readyz HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    answer = await client.raw_until_closed()
    statuses = [part[:3] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200", b"200", b"404"]


async def test_a_handler_can_take_over_the_connection_with_an_upgrade(
    hub: Hub, nursery: trio.Nursery, connect: Connect
) -> None:
    from tidings.trio.server._app import App, default_router
    from tidings.trio.server._http import Request, Responder

    async def echo_upgrade(app: App, request: Request, responder: Responder) -> None:
        if not responder.can_upgrade:
            await app.error(responder, 426, "Upgrade required")
            return
        stream, leftover = await responder.upgrade(
            [(b"upgrade", b"echo"), (b"connection", b"upgrade")]
        )
        data = leftover or await stream.receive_some()
        await stream.send_all(b"echo:" + data)

    router = default_router()
    router.add("/echo", {"GET": echo_upgrade})
    server = Server(hub, router=router)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    started: Server = await nursery.start(server.serve_listeners, listeners)
    client = await connect(started)
    assert (await client.request("GET", "/echo"))[0] == 426
    await client.stream.send_all(
        b"GET /echo HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nhello"
    )
    answer = await client.raw_until_closed()
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert answer.endswith(b"\r\n\r\necho:hello")
    server.drain()


async def test_serve_stream_serves_one_connection_on_any_stream(
    hub: Hub, nursery: trio.Nursery
) -> None:
    from tidings.trio import serve_stream

    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_stream, right, hub)
    await left.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answer = b""
    while chunk := await left.receive_some():
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")


# -- hostile traffic ----------------------------------------------------------------


async def _slow_sender(
    stream: trio.abc.Stream, head: bytes, piece: bytes, every: float
) -> tuple[bytes, float]:
    """Send *head*, then *piece* every *every* seconds until the server closes.

    Returns what the server sent and when (clock time) its end of stream came.
    """
    received = b""

    async def read() -> None:
        nonlocal received
        with suppress(trio.BrokenResourceError):
            while data := await stream.receive_some():
                received += data
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        with suppress(trio.BrokenResourceError):
            await stream.send_all(head)
            while True:
                await trio.sleep(every)
                await stream.send_all(piece)
    return received, trio.current_time()


@pytest.mark.parametrize(
    ("piece", "every", "cut_at"),
    [
        # One byte every 5 s used to keep a connection forever (a 10 s timer per read).
        (b"x", 5.0, 10.0),
        # Fast enough for the minimum rate, but never done: the total deadline.
        (b"x" * 200, 1.0, 60.0),
    ],
)
async def test_slow_request_bodies_are_cut_by_the_body_deadline(
    hub: Hub,
    start_server: StartServer,
    autojump_clock: trio.testing.MockClock,
    piece: bytes,
    every: float,
    cut_at: float,
) -> None:
    config = ServerConfig(header_timeout=10, body_timeout=60, body_min_rate=100)
    server = await start_server(config=config)
    head = b"POST /topics/t HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n"
    results: list[tuple[bytes, float]] = []

    async def attacker() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            results.append(await _slow_sender(stream, head, piece, every))

    async def honest() -> None:
        # 2000 bytes at 200 bytes/s: slow, but within the rate and the deadline.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /topics/t HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n"
            )
            for _ in range(10):
                await trio.sleep(1)
                await stream.send_all(b"y" * 200)
            answer = await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 201 "), answer

    start = trio.current_time()
    with trio.fail_after(cut_at + 30):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(attacker)
            nursery.start_soon(honest)
    assert len(results) == 100
    for received, closed_at in results:
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert b"connection: close" in received
        assert closed_at - start == pytest.approx(cut_at, abs=every + 1.5)
    assert hub.history.memory.head("t").offset == 1  # the honest publish only
    await trio.testing.wait_all_tasks_blocked()
    assert server.connection_count == 0


@pytest.mark.parametrize(
    "headers",
    [
        b"content-length: %d\r\ntransfer-encoding: chunked\r\n",
        b"transfer-encoding: chunked\r\ncontent-length: %d\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n",
    ],
)
async def test_content_length_with_transfer_encoding_gets_400_and_the_connection_closes(
    hub: Hub, server: Server, connect: Connect, headers: bytes
) -> None:
    # A front end going by Content-Length sees one request; one going by
    # Transfer-Encoding sees a second one, smuggled in the body.
    smuggled = b"POST /topics/t HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\nsmuggled"
    body = b"0\r\n\r\n" + smuggled
    client = await connect(server)
    await client.stream.send_all(
        b"POST /topics/t HTTP/1.1\r\nhost: x\r\n"
        + headers % len(body)
        + b"\r\n"
        + body
        + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    with trio.fail_after(5):
        answer = await client.raw_until_closed()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing pipelined behind it was answered
    assert hub.history.memory.head("t").offset == 0


@pytest.mark.parametrize("size_line", [b"zz", b"-1", b"1" * 21, b"5 5"])
async def test_malformed_chunked_bodies_get_400_and_the_connection_closes(
    hub: Hub, server: Server, connect: Connect, size_line: bytes
) -> None:
    client = await connect(server)
    await client.stream.send_all(
        b"POST /topics/t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    with trio.fail_after(5):
        answer = await client.raw_until_closed()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert hub.history.memory.head("t").offset == 0


async def test_health_probes_are_answered_while_slow_clients_hold_every_connection(
    start_server: StartServer, connect: Connect
) -> None:
    config = ServerConfig(max_connections=100, max_rejected_connections=8, header_timeout=60)
    server = await start_server(config=config)
    held: list[trio.SocketStream] = []
    try:
        with trio.fail_after(10):
            # Slow publishers take every place: each is admitted (its 100 Continue
            # says so), then never sends its body.
            head = b"POST /topics/t HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
            for _ in range(100):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                held.append(stream)
                await stream.send_all(head + b"expect: 100-continue\r\n\r\n")
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 100 ")
            assert server.connection_count == 100
            # More connections beyond the limit, sending nothing at all: more than
            # the places for rejected connections.
            held += [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(20)]
            for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")) * 3:
                client = await connect(server)
                status, headers, answer = await client.request("GET", path)
                assert (status, answer) == (200, body)
                assert headers[b"connection"] == b"close"
            client = await connect(server)
            status, headers, _ = await client.request("GET", "/topics/t/poll?timeout=0")
            assert (status, headers[b"retry-after"]) == (503, b"5")
            assert server.connection_count == 100
    finally:
        for stream in held:
            await trio.aclose_forcefully(stream)


# -- own routes next to the tidings endpoints -------------------------------------------


async def test_applications_add_their_own_routes_and_mount_tidings_under_a_prefix(
    start_server: StartServer, connect: Connect, hub: Hub
) -> None:
    from tidings.trio import App, Request, Responder, default_router, static

    async def hello(app: App, request: Request, responder: Responder) -> None:
        topic = request.params["topic"]
        await responder.respond(200, app.headers(), f"hello {topic}".encode())

    router = default_router(prefix="/rt")
    router.add("/", {"GET": static("<h1>chat</h1>")})
    router.add("/hello/{topic}", {"GET": hello})
    server = await start_server(config=ServerConfig(), router=router)
    client = await connect(server)
    with trio.fail_after(10):
        page = await client.request("GET", "/")
        greeting = await client.request("GET", "/hello/world")
        head = await client.request("HEAD", "/")
        published = await client.request("POST", "/rt/topics/lobby", body=b"hi")
        unprefixed = await client.request("POST", "/topics/lobby", body=b"hi")
        health = await client.request("GET", "/healthz")
    assert (page[0], page[1][b"content-type"], page[2]) == (
        200,
        b"text/html; charset=utf-8",
        b"<h1>chat</h1>",
    )
    assert page[1][b"cache-control"] == b"no-cache"
    assert greeting[2] == b"hello world"
    assert (head[0], head[2]) == (200, b"")
    assert published[0] == 201
    assert unprefixed[0] == 404
    assert health[0] == 200
    assert hub.history.memory.stats("lobby")[0] == 1  # type: ignore[attr-defined]


def test_a_prefix_must_be_a_path() -> None:
    from tidings.trio import default_router

    for prefix in ("rt", "/rt/"):
        with pytest.raises(ValueError, match="prefix"):
            default_router(prefix=prefix)


async def test_a_live_stream_answers_once_it_knows_where_now_is(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, memory_client: MemoryClient
) -> None:
    # On a history the hub must ask where "now" is (Redis, say), the response head
    # waits for the answer: a client holding it is subscribed, and what it
    # publishes next comes back to it.
    history = _GatedHistory(MemoryHistory(new_epoch(random.Random(9))))
    hub = Hub(history)
    http = await memory_client(Server(hub, ServerConfig()))

    async def release_when_idle() -> None:
        await history.reading.wait()
        await trio.testing.wait_all_tasks_blocked()  # a head sent now would be early
        history.release.set()

    nursery.start_soon(release_when_idle)
    with trio.fail_after(30):
        await http.send("GET", "/topics/t/events")
        assert (await http.response()).status_code == 200
        assert history.release.is_set()
        stored = await hub.publish("t", "after the head")
        [event] = await http.events(1)
    assert event.last_event_id == stored.format()
