"""curl as a real client of our server: SSE and publishing over HTTP/1.1, HTTP/2
with prior knowledge, and TLS with ALPN.

Each test starts the server on 127.0.0.1 (random port) and runs the ``curl`` binary
against it; streaming answers are read from curl's output as they arrive (``-N``,
headers included with ``-i``) and curl is killed once the test has what it needs.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trustme

from tidings.cursor import Position
from tidings.history import Replay
from tidings.sse.parser import EventStreamParser, MessageEvent
from tidings.trio import Hub, Server, ServerConfig

try:
    from tests.trio._tools import require_program
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _tools import require_program  # type: ignore[no-redef]

if TYPE_CHECKING:
    from conftest import StartServer

pytestmark = [pytest.mark.external, pytest.mark.timeout(60)]

SSE = "/topics/t/events"
#: Hard bound on one curl run (``--max-time``); the tests' own bounds are shorter.
CURL_MAX_TIME = "20"
#: Bound on each test's waiting for curl.
WAIT = 10.0

PROTOCOLS = [
    pytest.param(("--http1.1",), "HTTP/1.1", id="http1.1"),
    pytest.param(("--http2-prior-knowledge",), "HTTP/2", id="h2c-prior-knowledge"),
]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"}


@pytest.fixture(scope="module")
def curl() -> str:
    """The curl executable; skip when missing, except on CI (then fail)."""
    return require_program("curl", reason="curl is not installed")


@dataclass
class Head:
    """The status line and headers curl printed (``-i``)."""

    version: str
    status: int
    headers: dict[str, str]

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        lines = raw.decode("latin-1").split("\r\n")
        version, status = lines[0].split()[:2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(version, int(status), headers)


@dataclass
class CurlStream:
    """A running curl whose output is read as it arrives."""

    process: trio.Process
    output: bytearray = field(default_factory=bytearray)
    head: Head | None = None
    body: bytearray = field(default_factory=bytearray)
    events: list[MessageEvent] = field(default_factory=list)
    parser: EventStreamParser = field(default_factory=EventStreamParser)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        chunk = await self.process.stdout.receive_some()
        if not chunk:
            await self.process.wait()
            raise AssertionError(
                f"curl ended early (exit status {self.process.returncode}); "
                f"output so far: {bytes(self.output)!r}"
            )
        self.output += chunk
        if self.head is None:
            end = self.output.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = Head.parse(bytes(self.output[:end]))
            chunk = bytes(self.output[end + 4 :])
        self.body += chunk
        self.events += self.parser.receive_data(bytes(chunk))

    async def read_head(self) -> Head:
        while self.head is None:
            await self._read()
        return self.head

    async def read_events(self, count: int) -> list[MessageEvent]:
        """Wait until *count* events in total arrived; return them all."""
        while len(self.events) < count:
            await self._read()
        return self.events

    async def read_body_until(self, marker: bytes) -> bytes:
        while marker not in self.body:
            await self._read()
        return bytes(self.body)


@asynccontextmanager
async def curl_stream(curl: str, *args: str) -> AsyncIterator[CurlStream]:
    """Run ``curl -sS -N -i ARGS`` for the duration of the block; always kill it."""
    process = await trio.lowlevel.open_process(
        [curl, "-sS", "-N", "-i", "--max-time", CURL_MAX_TIME, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(WAIT):
            yield CurlStream(process)
    finally:
        with suppress(ProcessLookupError):
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()


async def curl_output(curl: str, *args: str) -> bytes:
    """Run ``curl -sS ARGS`` to completion; return what it printed."""
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [curl, "-sS", "--max-time", CURL_MAX_TIME, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def run_curl(curl: str, *args: str) -> tuple[Head, bytes]:
    """Run ``curl -sS -i ARGS`` to completion; return the head and body."""
    head, _, body = (await curl_output(curl, "-i", *args)).partition(b"\r\n\r\n")
    return Head.parse(head), body


async def publish_numbers(hub: Hub, count: int, topic: str = "t") -> list[Position]:
    return [(await hub.publish(topic, f"event {n}")) for n in range(1, count + 1)]


def assert_event_stream_head(head: Head, version: str) -> None:
    assert (head.version, head.status) == (version, 200)
    assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in head.headers


# -- event streams ---------------------------------------------------------------


@pytest.mark.parametrize(("flags", "version"), PROTOCOLS)
async def test_curl_gets_sse_headers_retry_and_replay_after_last_event_id_then_live(
    curl: str, hub: Hub, server: Server, flags: Sequence[str], version: str
) -> None:
    positions = await publish_numbers(hub, 5)
    async with curl_stream(
        curl,
        *flags,
        "--compressed",  # asks for gzip & co.: an event stream is never compressed
        "-H",
        f"Last-Event-ID: {positions[1].format()}",
        f"{server.url}{SSE}",
    ) as stream:
        events = await stream.read_events(3)
        assert_event_stream_head(await stream.read_head(), version)
        if version == "HTTP/2":
            assert not HOP_BY_HOP & set(stream.head.headers)  # type: ignore[union-attr]
        # The stream opens with the reconnection time (ServerConfig.sse_retry).
        assert stream.body.startswith(b"retry: 3000\n")
        assert stream.parser.retry == 3000
        assert [(e.last_event_id, e.data) for e in events] == [
            (positions[n - 1].format(), f"event {n}") for n in (3, 4, 5)
        ]
        # Live after the replay, with neither gap nor duplicate.
        live = await hub.publish("t", "event 6")
        events = await stream.read_events(4)
        assert [e.last_event_id for e in events[3:]] == [live.format()]
        assert len(events) == 4


@pytest.mark.parametrize(("flags", "version"), PROTOCOLS)
async def test_curl_gets_a_reset_event_for_a_bogus_last_event_id(
    curl: str, hub: Hub, server: Server, flags: Sequence[str], version: str
) -> None:
    positions = await publish_numbers(hub, 3)
    async with curl_stream(
        curl, *flags, "-H", "Last-Event-ID: bogus", f"{server.url}{SSE}"
    ) as stream:
        [reset] = await stream.read_events(1)
        assert_event_stream_head(await stream.read_head(), version)
        head = positions[-1].format()
        assert reset.type == "tidings.reset"
        assert reset.last_event_id == head  # so a plain EventSource resumes there
        assert json.loads(reset.data)["cursor"] == head
        live = await hub.publish("t", "after the reset")
        events = await stream.read_events(2)
        assert [(e.type, e.last_event_id, e.data) for e in events[1:]] == [
            ("message", live.format(), "after the reset")
        ]


async def test_curl_replays_after_the_last_event_id_query_parameter(
    curl: str, hub: Hub, server: Server
) -> None:
    positions = await publish_numbers(hub, 4)
    url = f"{server.url}{SSE}?last-event-id={positions[1].format()}"
    async with curl_stream(curl, url) as stream:
        events = await stream.read_events(2)
        assert [e.data for e in events] == ["event 3", "event 4"]


async def test_curl_reads_an_event_stream_over_tls_h2_negotiated_by_alpn(
    curl: str, hub: Hub, start_server: StartServer, ca: trustme.CA, tmp_path: Path
) -> None:
    server, cafile = await start_tls_server(start_server, ca, tmp_path)
    positions = await publish_numbers(hub, 3)
    url = f"{server.url}{SSE}"
    assert url.startswith("https://")
    async with curl_stream(
        curl,
        "--http2",
        "--cacert",
        str(cafile),
        "-H",
        f"Last-Event-ID: {positions[0].format()}",
        url,
    ) as stream:
        events = await stream.read_events(2)
        assert_event_stream_head(await stream.read_head(), "HTTP/2")
        assert not HOP_BY_HOP & set(stream.head.headers)  # type: ignore[union-attr]
        assert [e.data for e in events] == ["event 2", "event 3"]


async def test_curl_reads_an_event_stream_over_tls_http1_when_it_asks_for_it(
    curl: str, hub: Hub, start_server: StartServer, ca: trustme.CA, tmp_path: Path
) -> None:
    server, cafile = await start_tls_server(start_server, ca, tmp_path)
    positions = await publish_numbers(hub, 2)
    async with curl_stream(
        curl,
        "--http1.1",
        "--cacert",
        str(cafile),
        f"{server.url}{SSE}?last-event-id={positions[0].format()}",
    ) as stream:
        events = await stream.read_events(1)
        assert_event_stream_head(await stream.read_head(), "HTTP/1.1")
        assert [e.data for e in events] == ["event 2"]


# -- publishing ------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "version"), PROTOCOLS)
async def test_curl_publish_answers_201_with_the_position_as_json(
    curl: str, hub: Hub, server: Server, flags: Sequence[str], version: str
) -> None:
    before = hub.history.memory.head("t")
    data = "first line\nsecond line ✓"
    head, body = await run_curl(
        curl, *flags, "--data-binary", data, f"{server.url}/topics/t?event=greeting"
    )
    assert (head.version, head.status) == (version, 201)
    assert head.headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"id"}
    replay = hub.history.memory.read("t", before)
    assert isinstance(replay, Replay)
    [stored] = replay.events
    assert (stored.position.format(), stored.data, stored.event) == (
        answer["id"],
        data,
        "greeting",
    )


async def test_curl_publish_reaches_a_curl_subscriber_live(curl: str, server: Server) -> None:
    async with curl_stream(curl, f"{server.url}{SSE}") as stream:
        # The retry line is written after the server subscribed: from now on
        # nothing published can be missed.
        await stream.read_body_until(b"retry: 3000\n\n")
        head, body = await run_curl(
            curl, "--http2-prior-knowledge", "-d", "hello", f"{server.url}/topics/t"
        )
        assert head.status == 201
        [event] = await stream.read_events(1)
        assert (event.last_event_id, event.data) == (json.loads(body)["id"], "hello")


async def test_curl_publish_over_tls_h2(
    curl: str, hub: Hub, start_server: StartServer, ca: trustme.CA, tmp_path: Path
) -> None:
    server, cafile = await start_tls_server(start_server, ca, tmp_path)
    head, body = await run_curl(
        curl,
        "--http2",
        "--cacert",
        str(cafile),
        "--data-binary",
        "secure",
        f"{server.url}/topics/t",
    )
    assert (head.version, head.status) == ("HTTP/2", 201)
    assert json.loads(body)["id"] == hub.history.memory.head("t").format()


async def test_curl_publish_with_expect_100_continue_gets_100_then_201(
    curl: str, hub: Hub, server: Server
) -> None:
    data = "x" * 4000
    output = await curl_output(
        curl,
        "-i",
        "--http1.1",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        data,
        f"{server.url}/topics/t",
    )
    interim, _, rest = output.partition(b"\r\n\r\n")
    # The server invites the body at once (curl would otherwise wait a second).
    assert Head.parse(interim).status == 100
    head, _, body = rest.partition(b"\r\n\r\n")
    assert Head.parse(head).status == 201
    assert hub.history.memory.head("t").format() == json.loads(body)["id"]


async def test_curl_asking_to_upgrade_to_h2c_is_served_over_http1(
    curl: str, hub: Hub, server: Server
) -> None:
    # ``curl --http2`` on http:// sends ``Upgrade: h2c``; declining it is allowed
    # and the connection must go on as HTTP/1.1 (stream, then keep-alive).
    positions = await publish_numbers(hub, 2)
    async with curl_stream(
        curl, "--http2", "-H", f"Last-Event-ID: {positions[0].format()}", f"{server.url}{SSE}"
    ) as stream:
        [event] = await stream.read_events(1)
        assert_event_stream_head(await stream.read_head(), "HTTP/1.1")
        assert event.data == "event 2"
    output = await curl_output(
        curl,
        "--http2",
        "-w",
        "[%{http_version} %{response_code} %{num_connects}]\n",
        f"{server.url}/healthz",
        f"{server.url}/readyz",
    )
    # Two answers on one connection (the second made no new connection).
    assert output == b"ok\n[1.1 200 1]\nready\n[1.1 200 0]\n"


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "version"), PROTOCOLS)
async def test_curl_gets_clear_4xx_for_bad_topics_and_unknown_paths(
    curl: str, server: Server, flags: Sequence[str], version: str
) -> None:
    head, _ = await run_curl(curl, *flags, f"{server.url}/topics/a%20b/events")
    assert (head.version, head.status) == (version, 400)
    head, _ = await run_curl(curl, *flags, f"{server.url}/no/such/path")
    assert (head.version, head.status) == (version, 404)


# -- helpers ---------------------------------------------------------------------


async def start_tls_server(
    start_server: StartServer, ca: trustme.CA, tmp_path: Path
) -> tuple[Server, Path]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server = await start_server(config=ServerConfig(), ssl_context=context)
    return server, cafile
