"""The server over HTTP/2 (prior knowledge and TLS ALPN) and TLS for HTTP/1.1."""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
import trio
import trio.testing
import trustme
from h2.errors import ErrorCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory, Replay
from tidings.sse.parser import EventStreamParser, MessageEvent
from tidings.trio import Hub, Server, ServerConfig
from tidings.trio.server._h2 import PREFACE, H2Connection, H2Stream, _H2Sink

if TYPE_CHECKING:
    from conftest import StartServer

pytestmark = pytest.mark.timeout(30)

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"}


@dataclass
class StreamState:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    events: list[MessageEvent] = field(default_factory=list)
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    ended: bool = False
    reset: int | None = None


class H2Client:
    """A one-task HTTP/2 test client; ``pump`` reads and dispatches frames."""

    def __init__(self, stream: trio.abc.Stream, initial_window: int | None = None) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.initial_window = initial_window
        self.streams: dict[int, StreamState] = {}
        self.stalled: set[int] = set()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False

    async def start(self) -> None:
        self.conn.initiate_connection()
        if self.initial_window is not None:
            self.conn.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window}
            )
        await self.flush()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def open(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body_follows: bool = False,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        all_headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"test"),
            *((k.encode(), v.encode()) for k, v in headers),
        ]
        end_stream = method != "POST" and not body_follows
        self.conn.send_headers(stream_id, all_headers, end_stream=end_stream)
        self.streams[stream_id] = StreamState()
        return stream_id

    async def pump(self) -> None:
        data = await self.stream.receive_some()
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(bytes(data)):
            self.dispatch(event)
        await self.flush()

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            state = self.streams[event.stream_id]
            state.raw_headers = list(event.headers or [])
            state.headers = dict(state.raw_headers)
        elif isinstance(event, h2.events.DataReceived):
            state = self.streams[event.stream_id]
            state.body += event.data
            state.events += state.parser.receive_data(event.data)
            if event.stream_id in self.stalled:
                # Give the connection window back, but not the stream's.
                if event.flow_controlled_length:
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
            else:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            assert not self.closed, "connection closed"
            await self.pump()

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> StreamState:
        stream_id = self.open(method, path, headers)
        if method == "POST":
            self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()
        state = self.streams[stream_id]
        await self.until(lambda: state.ended or state.reset is not None)
        return state

    async def send_body(self, stream_id: int, body: bytes, end_stream: bool = True) -> None:
        """Send *body* as the flow-control windows allow (waiting for the server's)."""
        view = memoryview(body)
        while view:
            size = min(
                len(view),
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
            )
            if size <= 0:
                await self.flush()
                await self.pump()
                continue
            last = size == len(view)
            self.conn.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and last)
            view = view[size:]
        await self.flush()

    async def events(self, stream_id: int, count: int) -> list[MessageEvent]:
        state = self.streams[stream_id]
        await self.until(lambda: len(state.events) >= count)
        taken, state.events = state.events[:count], state.events[count:]
        return taken


async def h2_connect(server: Server, **kwargs: int) -> H2Client:
    client = H2Client(await trio.open_tcp_stream("127.0.0.1", server.port), **kwargs)
    await client.start()
    return client


@pytest.fixture
async def h2_clients() -> object:
    clients: list[H2Client] = []
    yield clients
    for client in clients:
        await trio.aclose_forcefully(client.stream)


async def test_prior_knowledge_is_detected_on_the_same_port(
    server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    state = await client.request("GET", "/healthz")
    assert state.headers[b":status"] == b"200"
    assert bytes(state.body) == b"ok\n"


async def test_no_hop_by_hop_headers_on_http2(server: Server, h2_clients: list[H2Client]) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    for method, path in (("GET", "/healthz"), ("POST", "/topics/t"), ("GET", "/nope")):
        state = await client.request(method, path)
        assert not HOP_BY_HOP & {name for name, _ in state.raw_headers}
    sid = client.open("GET", "/topics/t/events")
    await client.flush()
    await client.until(lambda: bool(client.streams[sid].headers))
    headers = client.streams[sid].headers
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert not HOP_BY_HOP & set(headers)


async def test_204_and_304_answers_carry_no_content_length_on_http2(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    state = await client.request("OPTIONS", "/topics/t")
    assert state.headers[b":status"] == b"204"
    assert b"content-length" not in state.headers
    cursor = (await hub.publish("t", "x")).format()
    state = await client.request(
        "GET", "/topics/t/poll?timeout=0", [("if-none-match", f'"{cursor}"')]
    )
    assert (state.headers[b":status"], bytes(state.body)) == (b"304", b"")
    assert b"content-length" not in state.headers
    state = await client.request("GET", f"/topics/t/poll?timeout=0&cursor={cursor}")
    assert state.headers[b":status"] == b"200"
    assert state.headers[b"content-length"] == str(len(state.body)).encode()


async def test_publish_over_http2(hub: Hub, server: Server, h2_clients: list[H2Client]) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    state = await client.request("POST", "/topics/t?event=e", body=b"hello")
    assert state.headers[b":status"] == b"201"
    position = json.loads(bytes(state.body))["id"]
    assert hub.history.memory.head("t").format() == position


async def test_publish_body_over_the_limit_gets_413_on_http2(
    start_server: StartServer, h2_clients: list[H2Client]
) -> None:
    server = await start_server(config=ServerConfig(max_body_size=100))
    client = await h2_connect(server)
    h2_clients.append(client)
    state = await client.request("POST", "/topics/t", body=b"x" * 101)
    assert state.headers[b":status"] == b"413"
    state = await client.request("POST", "/topics/t", body=b"x" * 100)
    assert state.headers[b":status"] == b"201"


def server_streams(server: Server) -> dict[int, H2Stream]:
    """The streams open on the server's only (HTTP/2) connection."""
    (connection,) = server.app.connections
    assert isinstance(connection, H2Connection)
    return connection.streams


async def test_a_request_body_up_to_the_limit_is_accepted_on_http2(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    size = server.config.max_body_size
    assert size > 4 * 65535  # far more than the initial window: read_body must widen it
    stream_id = client.open("POST", "/topics/t")
    with trio.fail_after(10):
        await client.send_body(stream_id, b"x" * size)
        state = client.streams[stream_id]
        await client.until(lambda: state.ended or state.reset is not None)
    assert state.headers[b":status"] == b"201"
    head = hub.history.memory.head("t")
    assert json.loads(bytes(state.body))["id"] == head.format()
    result = hub.history.memory.read("t", after=Position(head.epoch, 0), limit=1)
    assert isinstance(result, Replay)
    [stored] = result.events
    assert len(stored.data) == size


async def test_a_streamed_body_over_the_limit_gets_413_and_the_connection_goes_on_on_http2(
    start_server: StartServer, h2_clients: list[H2Client]
) -> None:
    server = await start_server(config=ServerConfig(max_body_size=100_000))
    client = await h2_connect(server)
    h2_clients.append(client)
    stream_id = client.open("POST", "/topics/t")  # no content-length
    with trio.fail_after(10):
        # The whole body goes through: the server hands back the window of what it drops.
        await client.send_body(stream_id, b"x" * 300_000)
        state = client.streams[stream_id]
        await client.until(lambda: state.ended or state.reset is not None)
        assert state.headers[b":status"] == b"413"
        state = await client.request("POST", "/topics/t", body=b"y" * 100)
    assert state.headers[b":status"] == b"201"


async def test_request_data_on_event_streams_is_dropped_not_buffered_on_http2(
    server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    ids = [client.open("GET", "/topics/t/events", body_follows=True) for _ in range(5)]
    await client.flush()
    with trio.fail_after(10):
        await client.until(lambda: all(client.streams[s].headers for s in ids))
        for stream_id in ids:
            # Far beyond the stream window: it is handed back although nobody reads.
            await client.send_body(stream_id, b"z" * 1024 * 1024, end_stream=False)
        # A round trip: the server has handled every DATA frame sent before it.
        state = await client.request("POST", "/topics/u", body=b"x")
    assert state.headers[b":status"] == b"201"
    # The POST's stream task may still be finishing after its answer was written.
    await trio.testing.wait_all_tasks_blocked()
    streams = server_streams(server)
    assert sorted(streams) == ids
    assert all(len(stream._body) == 0 and stream._owed == 0 for stream in streams.values())


async def test_unread_request_data_is_capped_by_the_stream_window_on_http2(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    cursor = hub.history.memory.head("t").format()
    held = client.open("GET", f"/topics/t/poll?cursor={cursor}&timeout=25", body_follows=True)
    await client.flush()
    window = client.conn.local_flow_control_window(held)
    with trio.fail_after(10):
        await client.send_body(held, b"z" * window, end_stream=False)
        # The connection window came back: other streams can still send bodies.
        stream_id = client.open("POST", "/topics/u")
        await client.send_body(stream_id, b"x" * 300_000)
        state = client.streams[stream_id]
        await client.until(lambda: state.ended or state.reset is not None)
    assert state.headers[b":status"] == b"201"
    # The held request's body was not read: its window stays shut.
    assert client.conn.local_flow_control_window(held) == 0
    assert len(server_streams(server)[held]._body) == window


async def test_many_event_streams_share_one_connection(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    await hub.publish("b", "old-b")
    first_b = hub.history.memory.head("b")
    streams = {
        topic: client.open("GET", f"/topics/{topic}/events", headers)
        for topic, headers in (
            ("a", []),
            ("b", [("last-event-id", first_b.format().replace(".1", ".0"))]),
            ("c", []),
        )
    }
    await client.flush()
    [old] = await client.events(streams["b"], 1)
    assert old.data == "old-b"
    await client.until(lambda: all(client.streams[s].headers for s in streams.values()))
    for round_ in range(3):
        for topic in streams:
            await hub.publish(topic, f"{topic}{round_}")
    for topic, stream_id in streams.items():
        got = await client.events(stream_id, 3)
        assert [e.data for e in got] == [f"{topic}{n}" for n in range(3)]
    assert hub.subscriber_count() == 3


async def test_a_stalled_stream_stalls_alone_and_is_cut_off(
    start_server: StartServer, hub: Hub, h2_clients: list[H2Client]
) -> None:
    # The stalled stream's subscriber keeps bounded memory (it catches up from the
    # history); once no window comes back for write_timeout, its stream is reset.
    server = await start_server(config=ServerConfig(subscriber_max_events=20, write_timeout=1.0))
    client = await h2_connect(server, initial_window=4096)
    h2_clients.append(client)
    stalled = client.open("GET", "/topics/slow/events")
    healthy = client.open("GET", "/topics/fast/events")
    client.stalled.add(stalled)
    await client.flush()
    await client.until(lambda: bool(client.streams[stalled].headers))
    payload = "x" * 1000
    slow = next(s for s in server.app.subscriptions if s.topic == "slow")
    for n in range(200):
        await hub.publish("slow", payload)
        await hub.publish("fast", str(n))
        assert slow.pending <= 20  # type: ignore[union-attr]
        if n % 10 == 0:
            # The healthy stream keeps flowing while the other is stuck.
            await client.events(healthy, 10 if n else 1)
    state = client.streams[stalled]
    with trio.fail_after(10):
        await client.until(lambda: state.reset is not None)
    assert state.reset == ErrorCodes.CANCEL
    assert len(state.body) <= 4096
    assert hub.subscriber_count("slow") == 0
    assert hub.subscriber_count("fast") == 1
    await hub.publish("fast", "after")
    got = await client.events(healthy, 10)
    assert got[-1].data == "after"


async def test_live_bursts_bypass_the_stream_task_and_respect_its_window(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    # A window smaller than one burst: the publisher frames what fits straight
    # away, the stream's task sends the rest as the client hands window back.
    client = await h2_connect(server, initial_window=1500)
    h2_clients.append(client)
    stream_id = client.open("GET", "/topics/burst/events")
    await client.flush()
    await client.until(lambda: bool(client.streams[stream_id].headers))
    await trio.testing.wait_all_tasks_blocked()
    [subscription] = server.app.subscriptions
    assert isinstance(subscription.sink, _H2Sink)
    for round_ in range(3):
        for n in range(40):
            hub.publish_nowait("burst", f"{round_}-{n}-" + "x" * 80)
        got = await client.events(stream_id, 40)
        assert [e.data.split("-x")[0] for e in got] == [f"{round_}-{n}" for n in range(40)]
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(subscription.sink, _H2Sink), "idle again: direct path back on"
    await hub.publish("burst", "last")
    [last] = await client.events(stream_id, 1)
    assert last.data == "last"
    assert client.streams[stream_id].reset is None


async def test_a_client_that_stops_reading_the_socket_gets_an_intact_prefix_then_a_cut(
    start_server: StartServer, hub: Hub, h2_clients: list[H2Client]
) -> None:
    # Flow control never stops the server here (huge windows): TCP does.  Direct
    # writes from the publisher fill the socket buffer, the writer takes over the
    # rest, the subscriber's buffer stays bounded (it catches up from the history),
    # and after write_timeout the connection is cut; the frames the client finally
    # reads are whole and in order.
    server = await start_server(config=ServerConfig(subscriber_max_events=64, write_timeout=1.0))
    client = await h2_connect(server, initial_window=2**31 - 1)
    h2_clients.append(client)
    client.conn.increment_flow_control_window(2**31 - 1 - 65535)
    stream_id = client.open("GET", "/topics/flood/events")
    await client.flush()
    await client.until(lambda: bool(client.streams[stream_id].headers))
    payload = "z" * 2000
    [subscription] = server.app.subscriptions
    sent = 0
    with trio.fail_after(20):
        while hub.subscriber_count("flood"):
            for _ in range(32):
                hub.publish_nowait("flood", f"{sent} {payload}")
                sent += 1
            assert subscription.pending <= 64  # type: ignore[union-attr]
            await trio.sleep(0.01)  # pace the flood; the server's timer does the cut
        while not client.closed:
            await client.pump()
    state = client.streams[stream_id]
    numbers = [int(event.data.split()[0]) for event in state.events]
    assert numbers == list(range(len(numbers)))
    assert 0 < len(numbers) < sent
    # The server is fine.
    other = await h2_connect(server)
    h2_clients.append(other)
    answer = await other.request("GET", "/healthz")
    assert answer.headers[b":status"] == b"200"


async def test_streams_beyond_the_concurrency_limit_are_refused(
    start_server: StartServer, h2_clients: list[H2Client]
) -> None:
    server = await start_server(config=ServerConfig(max_concurrent_streams=2))
    client = await h2_connect(server)
    h2_clients.append(client)
    # Open three streams before the server's SETTINGS could be seen.
    ids = [client.open("GET", f"/topics/t{n}/events") for n in range(3)]
    await client.flush()
    await client.until(lambda: client.streams[ids[2]].reset is not None)
    assert client.streams[ids[2]].reset == ErrorCodes.REFUSED_STREAM
    await client.until(lambda: all(client.streams[i].headers for i in ids[:2]))


async def test_a_protocol_error_gets_goaway_and_others_are_unaffected(
    server: Server, h2_clients: list[H2Client]
) -> None:
    bystander = await h2_connect(server)
    h2_clients.append(bystander)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        # The preface, then a DATA frame on stream 0 (a connection error).
        await stream.send_all(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
            + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # DATA on stream 0
        )
        received = b""
        while True:
            data = await stream.receive_some()
            if not data:
                break
            received += data
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        events = client.receive_data(received)
        terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert [e.error_code for e in terminated] == [ErrorCodes.PROTOCOL_ERROR]
        assert received.count(b"\x07\x00\x00\x00\x00\x00") == 1  # one GOAWAY frame head
    finally:
        await trio.aclose_forcefully(stream)
    state = await bystander.request("GET", "/healthz")
    assert state.headers[b":status"] == b"200"


@pytest.mark.parametrize(
    "bad_header",
    [("last-event-id", "a\x00b"), ("connection", "keep-alive"), ("te", "gzip")],
)
async def test_a_malformed_request_gets_400_on_its_stream_alone(
    hub: Hub, server: Server, h2_clients: list[H2Client], bad_header: tuple[str, str]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    client.conn.config.validate_outbound_headers = False  # send what h2 would refuse
    client.conn.config.normalize_outbound_headers = False
    follower = client.open("GET", "/topics/t/events")
    await client.flush()
    await client.until(lambda: bool(client.streams[follower].headers))
    refused = await client.request("GET", "/topics/t/events", [bad_header])
    assert refused.headers[b":status"] == b"400"
    assert refused.body.startswith(b"Bad request")
    await hub.publish("t", "still here")
    [event] = await client.events(follower, 1)
    assert event.data == "still here"
    assert client.terminated is None


async def test_oversized_headers_get_431_on_their_stream_alone(
    server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    # Just over the limit by the RFC 9113 measure (name + value + 32 per field).
    big = "a" * (ServerConfig().max_header_size - 200)
    refused = await client.request("GET", "/healthz", [("x-big", big)])
    assert refused.headers[b":status"] == b"431"
    assert refused.body == b"Request Header Fields Too Large\n"
    fits = await client.request("GET", "/healthz", [("x-big", "a" * 1000)])
    assert fits.headers[b":status"] == b"200"
    assert client.terminated is None


async def test_a_publish_with_oversized_headers_gets_431_and_its_body_is_stopped(
    hub: Hub, server: Server, h2_clients: list[H2Client]
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)
    stream_id = client.open("POST", "/topics/t", [("x-big", "b" * 17000)])
    await client.flush()
    state = client.streams[stream_id]
    await client.until(lambda: state.ended or state.reset is not None)
    assert state.headers[b":status"] == b"431"
    assert hub.history.memory.head("t").offset == 0
    ok = await client.request("POST", "/topics/t", body=b"small")
    assert ok.headers[b":status"] == b"201"


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [
        ("x" * 8000, "malformed"),
        ("other-epoch.5", "unknown-epoch"),
        ("\u00e9t\u00e9.1", "malformed"),
    ],
)
async def test_hostile_last_event_ids_give_a_reset_on_http2(
    hub: Hub, server: Server, h2_clients: list[H2Client], last_event_id: str, reason: str
) -> None:
    head = await hub.publish("t", "x")
    client = await h2_connect(server)
    h2_clients.append(client)
    stream_id = client.open("GET", "/topics/t/events", [("last-event-id", last_event_id)])
    await client.flush()
    [reset] = await client.events(stream_id, 1)
    assert reset.type == "tidings.reset"
    assert json.loads(reset.data)["reason"] == reason
    if reason == "malformed":
        assert reset.last_event_id == head.format()  # names no place: live from now
    else:
        # Another epoch: every event still retained follows the reset.
        assert reset.last_event_id == f"{head.epoch}.0"
        [replayed] = await client.events(stream_id, 1)
        assert replayed.last_event_id == head.format()
    await hub.publish("t", "live")
    [live] = await client.events(stream_id, 1)
    assert live.data == "live"


async def test_pings_do_not_keep_an_idle_http2_connection_open(
    hub: Hub, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Server(hub, ServerConfig(idle_timeout=5))
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, right)
    client = H2Client(left)
    await client.start()
    start = trio.current_time()
    # A client that pings every half second, with no stream open.
    while client.terminated is None and not client.closed:
        assert trio.current_time() - start < 30, "PINGs kept the connection open"
        client.conn.ping(b"\x00" * 8)
        await client.flush()
        await client.pump()  # the PING ACK (or the GOAWAY)
        await trio.sleep(0.5)
    assert trio.current_time() - start == pytest.approx(5, abs=0.6)


async def test_http2_can_be_disabled(start_server: StartServer) -> None:
    server = await start_server(config=ServerConfig(http2=False))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = await stream.receive_some()
        assert data.startswith(b"HTTP/1.1 4")
    finally:
        await trio.aclose_forcefully(stream)


# -- hostile traffic ------------------------------------------------------------------


def tidings_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("tidings")]


async def test_refusing_a_stream_the_client_already_reset_keeps_the_connection(
    hub: Hub,
    start_server: StartServer,
    h2_clients: list[H2Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(config=ServerConfig(max_concurrent_streams=1))
    client = await h2_connect(server)
    h2_clients.append(client)
    # In one write: a stream that takes the only place, then one the server must
    # refuse, reset by the client in the same breath.  h2 has closed it by the
    # time the server refuses it.
    follower = client.open("GET", "/topics/t/events")
    refused = client.open("GET", "/healthz")
    client.conn.reset_stream(refused)
    await client.flush()
    with trio.fail_after(5):
        await client.until(lambda: bool(client.streams[follower].headers))
        await hub.publish("t", "still here")
        [event] = await client.events(follower, 1)
    assert event.data == "still here"
    assert client.terminated is None
    assert not [r for r in tidings_records(caplog) if r.levelno >= logging.WARNING]


async def _flood(client: H2Client, make_frames: Callable[[], None], rounds: int) -> None:
    """Send what *make_frames* queues, *rounds* times, while reading the answers."""
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            while client.terminated is None and not client.closed:
                data = await client.stream.receive_some()
                if not data:
                    client.closed = True
                    break
                with suppress(h2.exceptions.ProtocolError):
                    for event in client.conn.receive_data(bytes(data)):
                        client.dispatch(event)
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        with suppress(trio.BrokenResourceError, h2.exceptions.ProtocolError):
            for _ in range(rounds):
                make_frames()
                await client.flush()
        await trio.sleep_forever()  # until read() saw the end


async def test_rapid_reset_gets_goaway_enhance_your_calm(
    hub: Hub, server: Server, h2_clients: list[H2Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings")
    bystander = await h2_connect(server)
    h2_clients.append(bystander)
    follower = bystander.open("GET", "/topics/t/events")
    await bystander.flush()
    await bystander.until(lambda: bool(bystander.streams[follower].headers))
    attacker = await h2_connect(server)
    h2_clients.append(attacker)

    def open_and_reset() -> None:
        for _ in range(100):
            stream_id = attacker.open("GET", "/topics/t/events")
            attacker.conn.reset_stream(stream_id)

    with trio.fail_after(10):
        await _flood(attacker, open_and_reset, rounds=50)  # 5000 pairs at most
    terminated = attacker.terminated
    assert terminated is not None
    assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # Refusals count as resets too: no more than the budget of streams was opened.
    assert terminated.last_stream_id is not None
    assert terminated.last_stream_id <= 2 * server.config.max_stream_resets + 1
    records = tidings_records(caplog)
    assert 1 <= len(records) <= 5
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info]
    # Everyone else is fine.
    await hub.publish("t", "after the flood")
    [event] = await bystander.events(follower, 1)
    assert event.data == "after the flood"


@pytest.mark.parametrize("kind", ["settings", "ping"])
async def test_settings_and_ping_floods_get_goaway_enhance_your_calm(
    server: Server, h2_clients: list[H2Client], kind: str
) -> None:
    client = await h2_connect(server)
    h2_clients.append(client)

    def frames() -> None:
        for n in range(50):
            if kind == "ping":
                client.conn.ping(n.to_bytes(8, "big"))
            else:
                client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})

    with trio.fail_after(10):
        await _flood(client, frames, rounds=20)
    assert client.terminated is not None
    assert client.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_resets_pings_and_settings_within_their_budget_are_no_flood(
    hub: Hub, start_server: StartServer, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(config=ServerConfig(flood_interval=10))
    client = await h2_connect(server)
    try:
        config = server.config
        for _ in range(5):
            # Just under every budget, then the interval passes.
            for _ in range(config.max_stream_resets - 10):
                client.conn.reset_stream(client.open("GET", "/topics/t/events"))
            for n in range(config.max_ping_frames - 10):
                client.conn.ping(n.to_bytes(8, "big"))
            for _ in range(config.max_settings_frames - 10):
                client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
            await client.flush()
            await trio.sleep(config.flood_interval)
        state = await client.request("GET", "/healthz")
        assert state.headers[b":status"] == b"200"
        assert client.terminated is None
    finally:
        await trio.aclose_forcefully(client.stream)


@pytest.mark.parametrize(
    ("piece", "every", "cut_at"),
    [
        (b"", 5.0, 10.0),  # HEADERS, then nothing: held for as long as it lasted
        (b"x", 5.0, 10.0),  # a byte every 5 s
        (b"x" * 200, 1.0, 60.0),  # fast enough for the rate, but never done
    ],
)
async def test_http2_request_bodies_that_do_not_come_get_408_and_a_reset(
    hub: Hub,
    start_server: StartServer,
    autojump_clock: trio.testing.MockClock,
    piece: bytes,
    every: float,
    cut_at: float,
) -> None:
    config = ServerConfig(header_timeout=10, body_timeout=60, body_min_rate=100, idle_timeout=30)
    server = await start_server(config=config)
    client = await h2_connect(server)
    try:
        follower = client.open("GET", "/topics/t/events")
        slow = [client.open("POST", "/topics/u") for _ in range(20)]
        honest = client.open("POST", "/topics/u")  # 2000 bytes at 200 bytes/s
        await client.flush()
        start = trio.current_time()
        honest_left = 2000
        with trio.fail_after(cut_at + 30):
            while not all(client.streams[s].reset is not None for s in slow):
                with trio.move_on_after(every):
                    while True:
                        await client.pump()
                for stream_id in slow:
                    if piece and client.streams[stream_id].reset is None:
                        client.conn.send_data(stream_id, piece)
                if honest_left:
                    size = min(honest_left, int(200 * every))
                    honest_left -= size
                    client.conn.send_data(honest, b"y" * size, end_stream=not honest_left)
                await client.flush()
            cut = trio.current_time() - start
            await client.until(lambda: client.streams[honest].ended)
            await hub.publish("t", "still here")
            [event] = await client.events(follower, 1)
        assert event.data == "still here"
        assert cut == pytest.approx(cut_at, abs=every + 1.5)
        for stream_id in slow:
            state = client.streams[stream_id]
            assert state.headers[b":status"] == b"408"
            assert state.reset == ErrorCodes.NO_ERROR
        assert client.streams[honest].headers[b":status"] == b"201"
        assert hub.history.memory.head("u").offset == 1  # the honest publish only
        # Without streams, the connection closes after the idle timeout.
        client.conn.reset_stream(follower)
        await client.flush()
        idle_from = trio.current_time()
        with trio.fail_after(60):
            await client.until(lambda: client.terminated is not None)
        assert trio.current_time() - idle_from == pytest.approx(30, abs=1)
    finally:
        await trio.aclose_forcefully(client.stream)


async def test_health_probes_over_http2_are_answered_beyond_the_connection_limit(
    start_server: StartServer, h2_clients: list[H2Client]
) -> None:
    server = await start_server(config=ServerConfig(max_connections=1))
    holder = await h2_connect(server)
    h2_clients.append(holder)
    held = holder.open("GET", "/topics/t/events")
    await holder.flush()
    await holder.until(lambda: bool(holder.streams[held].headers))
    for path, status in (("/healthz", b"200"), ("/readyz", b"200"), ("/topics/t", b"503")):
        client = await h2_connect(server)
        h2_clients.append(client)
        state = await client.request("GET" if status == b"200" else "POST", path)
        assert state.headers[b":status"] == status
        # One answer, then the connection closes (GOAWAY).
        await client.until(lambda c=client: c.terminated is not None)  # type: ignore[misc]
    assert server.connection_count == 1


# Frame sequences as a hostile or broken client may send them: mostly well-formed
# frames (so that the server gets deep: streams opened, bodies, resets, refusals),
# in any order, on the current stream or a new one, plus now and then a frame of
# any type, flags and payload at all.
_REQUESTS = [
    [(":method", "GET"), (":path", "/topics/t/events"), (":scheme", "http"), (":authority", "a")],
    [(":method", "POST"), (":path", "/topics/t"), (":scheme", "http"), (":authority", "a")],
    [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "a")],
    [(":method", "GET"), (":path", "/topics/t/poll?timeout=5"), (":scheme", "http"), ("host", "a")],
    [(":method", "GET"), (":path", "/nope")],  # malformed: 400 on its stream
]
_KINDS = (
    ["headers"] * 4
    + ["data"] * 2
    + ["rst"] * 3
    + [
        "split-headers",
        "settings",
        "ping",
        "window",
        "priority",
        "garbage",
    ]
)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return head + stream_id.to_bytes(4, "big") + payload


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    encoder = hpack.Encoder()
    out = []
    current = 1
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(_KINDS))
        if current == 1 and kind in ("data", "rst", "priority"):
            kind = "headers"  # nothing open yet to send these on
        last = max(1, current - 2)  # the stream opened last
        if kind in ("headers", "split-headers"):
            block = encoder.encode(draw(st.sampled_from(_REQUESTS)))
            end_stream = draw(st.booleans())
            if kind == "headers":
                out.append(_frame(0x1, 0x4 | end_stream, current, block))
            else:
                out.append(_frame(0x1, end_stream, current, block[:3]))
                out.append(_frame(0x9, 0x4, current, block[3:]))
            current += 2
        elif kind == "data":
            stream_id = draw(st.sampled_from([last, max(1, last - 2)]))
            out.append(_frame(0x0, draw(st.sampled_from([0, 1])), stream_id, b"x" * 10))
        elif kind == "rst":
            stream_id = draw(st.sampled_from([last, max(1, last - 2), current]))
            out.append(_frame(0x3, 0, stream_id, draw(st.integers(0, 13)).to_bytes(4, "big")))
        elif kind == "settings":
            setting = draw(st.sampled_from([0x1, 0x2, 0x3, 0x4, 0x5, 0x6]))
            value = draw(st.sampled_from([0, 1, 100, 16384, 65535, 2**31 - 1]))
            payload = setting.to_bytes(2, "big") + value.to_bytes(4, "big")
            ack = draw(st.booleans())
            out.append(_frame(0x4, 1, 0, b"") if ack else _frame(0x4, 0, 0, payload))
        elif kind == "ping":
            out.append(_frame(0x6, draw(st.sampled_from([0, 1])), 0, b"12345678"))
        elif kind == "window":
            stream_id = draw(st.sampled_from([0, last]))
            increment = draw(st.sampled_from([1, 100, 65535] * 6 + [0, 2**31 - 1]))
            out.append(_frame(0x8, 0, stream_id, increment.to_bytes(4, "big")))
        elif kind == "priority":
            depends = draw(st.sampled_from([0, last, current + 2]))
            out.append(_frame(0x2, 0, current, depends.to_bytes(4, "big") + b"\x10"))
        else:
            out.append(
                _frame(
                    draw(st.integers(0, 12)),
                    draw(st.integers(0, 255)),
                    draw(st.sampled_from([0, current, last, 2, 2**31 - 1])),
                    draw(st.binary(max_size=12)),
                )
            )
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
def test_no_frame_sequence_makes_the_server_fail(frames: bytes) -> None:
    """Whatever the frames, the connection ends in order: no exception, no traceback."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("tidings")
    logger.addHandler(handler)

    async def scenario() -> None:
        hub = Hub(MemoryHistory(new_epoch(random.Random(1)), max_events=10))
        server = Server(hub, ServerConfig(max_concurrent_streams=2, max_stream_resets=4))
        client, remote = trio.testing.memory_stream_pair()
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve_stream, remote)
                await client.send_all(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frames)
                await hub.publish("t", "x")
                await trio.sleep(20)  # handlers run, timeouts pass (autojump)
                await client.send_eof()
                while await client.receive_some():
                    pass
            assert server.connection_count == 0

    try:
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(handler)
    assert not records, [record.getMessage() for record in records]


# -- TLS ----------------------------------------------------------------------------


def tls_contexts(ca: trustme.CA, alpn: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(alpn)
    return server_context, client_context


async def tls_connect(server: Server, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    await tls.do_handshake()
    return tls


async def test_tls_with_alpn_h2(
    hub: Hub, start_server: StartServer, ca: trustme.CA, h2_clients: list[H2Client]
) -> None:
    server_context, client_context = tls_contexts(ca, ["h2", "http/1.1"])
    server = await start_server(ssl_context=server_context)
    assert server.url.startswith("https://")
    tls = await tls_connect(server, client_context)
    assert tls.selected_alpn_protocol() == "h2"
    client = H2Client(tls)
    h2_clients.append(client)
    await client.start()
    await hub.publish("t", "one")
    sid = client.open("GET", "/topics/t/events?last-event-id=earliest")
    await client.flush()
    [event] = await client.events(sid, 1)
    assert event.data == "one"
    await hub.publish("t", "two")
    assert [e.data for e in await client.events(sid, 1)] == ["two"]


async def test_tls_with_alpn_http11(hub: Hub, start_server: StartServer, ca: trustme.CA) -> None:
    server_context, client_context = tls_contexts(ca, ["http/1.1"])
    server = await start_server(ssl_context=server_context)
    tls = await tls_connect(server, client_context)
    try:
        assert tls.selected_alpn_protocol() == "http/1.1"
        await tls.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok\n"):
            answer += await tls.receive_some()
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        await trio.aclose_forcefully(tls)


async def test_tls_handshake_garbage_does_not_disturb_the_server(
    start_server: StartServer, ca: trustme.CA
) -> None:
    server_context, client_context = tls_contexts(ca, ["http/1.1"])
    server = await start_server(ssl_context=server_context)
    plain = await trio.open_tcp_stream("127.0.0.1", server.port)
    received = b""
    try:
        with trio.fail_after(10):
            await plain.send_all(b"GET / HTTP/1.1\r\n\r\n")
            while data := await plain.receive_some():
                received += data
    except trio.BrokenResourceError:
        pass  # reset by the server: closed as well
    finally:
        await trio.aclose_forcefully(plain)
    # The server closed that connection, answering no HTTP (at most a TLS alert) ...
    assert not received.startswith(b"HTTP/")
    await trio.testing.wait_all_tasks_blocked()  # the server's task finished with it
    assert server.connection_count == 0
    # ... and serves TLS clients as before.
    tls = await tls_connect(server, client_context)
    try:
        await tls.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while not answer.endswith(b"ok\n"):
                answer += await tls.receive_some()
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        await trio.aclose_forcefully(tls)


async def test_http2_over_memory_streams_with_the_autojump_clock(
    hub: Hub, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Server(hub, ServerConfig(heartbeat_interval=10, idle_timeout=5))
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, right)
    client = H2Client(left)
    await client.start()
    sid = client.open("GET", "/topics/t/events")
    await client.flush()
    start = trio.current_time()
    await client.until(lambda: b":\n" in client.streams[sid].body)
    assert trio.current_time() - start == pytest.approx(10)
    # An idle connection (no streams) closes after the idle timeout.
    client.conn.reset_stream(sid)
    await client.flush()
    await client.until(lambda: client.terminated is not None)
    assert trio.current_time() - start == pytest.approx(15)
