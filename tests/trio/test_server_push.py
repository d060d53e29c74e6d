"""HTTP/2 server push: a route's ``push`` paths are promised to clients that allow it.

Real sockets on 127.0.0.1: an h2 client (push allowed or not), and ``nghttp``
(Debian ``nghttp2-client``), which marks pushed streams with ``*`` in its statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
from h2.errors import ErrorCodes

from tidings.trio import Router, ServerConfig, default_router, static

from ._tools import require_program

if TYPE_CHECKING:
    from conftest import StartServer

pytestmark = pytest.mark.timeout(30)


@dataclass
class Answer:
    """One stream's answer as the client saw it."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False


@dataclass
class Client:
    """An h2 client on a real socket that records every stream, pushed ones too."""

    stream: trio.SocketStream
    conn: h2.connection.H2Connection
    answers: dict[int, Answer] = field(default_factory=dict)
    #: Promises as (promised stream id, parent stream id, request headers), in order.
    promises: list[tuple[int, int, dict[bytes, bytes]]] = field(default_factory=list)
    #: Every event the client saw, in order, as (kind, stream id).
    order: list[tuple[str, int]] = field(default_factory=list)
    #: Promised streams to reset as soon as they are promised.
    refuse_pushes: bool = False

    @classmethod
    async def open(
        cls, port: int, *, push: bool, refuse_pushes: bool = False, window: int = 65535
    ) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: int(push),
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            }
        )
        client = cls(stream, conn, refuse_pushes=refuse_pushes)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def get(self, path: str, method: str = "GET") -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", b"example.test"),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.answers[stream_id] = Answer()
        await self.flush()
        return stream_id

    async def until(self, *stream_ids: int) -> None:
        """Read until every stream in *stream_ids* ended (or was reset)."""
        while not all(
            self.answers[i].ended or self.answers[i].reset for i in stream_ids if i in self.answers
        ) or any(i not in self.answers for i in stream_ids):
            data = await self.stream.receive_some()
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                self._on(event)
            await self.flush()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.PushedStreamReceived):
            headers = dict(event.headers)
            self.promises.append((event.pushed_stream_id, event.parent_stream_id, headers))
            self.order.append(("promise", event.parent_stream_id))
            self.answers[event.pushed_stream_id] = Answer()
            if self.refuse_pushes:
                self.conn.reset_stream(event.pushed_stream_id, ErrorCodes.CANCEL)
                self.answers[event.pushed_stream_id].reset = True
        elif isinstance(event, h2.events.ResponseReceived):
            self.answers[event.stream_id].headers = dict(event.headers)
            self.order.append(("headers", event.stream_id))
        elif isinstance(event, h2.events.DataReceived):
            self.answers[event.stream_id].body += event.data
            self.order.append(("data", event.stream_id))
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.answers[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset) and event.stream_id in self.answers:
            self.answers[event.stream_id].reset = True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def same_answer(pushed: Answer, fetched: Answer) -> bool:
    """The same status, body and headers (``date`` aside: a second may have turned)."""

    def comparable(headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return {k: v for k, v in headers.items() if k != b"date"}

    same_body = bytes(pushed.body) == bytes(fetched.body)
    return same_body and comparable(pushed.headers) == comparable(fetched.headers)


async def test_a_client_that_allows_push_gets_the_client_script_with_the_page(
    start_server: StartServer,
) -> None:
    server = await start_server(config=ServerConfig())
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True)
        try:
            page = await client.get("/")
            await client.until(page)
            [(promised, parent, request)] = client.promises
            await client.until(promised)
            fetched = await client.get("/tidings.js")
            await client.until(fetched)
        finally:
            await client.aclose()
    assert parent == page
    assert promised % 2 == 0
    assert request == {
        b":method": b"GET",
        b":scheme": b"http",
        b":authority": b"example.test",
        b":path": b"/tidings.js",
    }
    # The promise comes before anything of the page (which refers to the script).
    assert client.order.index(("promise", page)) < client.order.index(("headers", page))
    assert client.answers[page].headers[b":status"] == b"200"
    assert b"tidings.js" in client.answers[page].body
    pushed = client.answers[promised]
    assert pushed.ended
    assert not pushed.reset
    assert pushed.headers[b":status"] == b"200"
    assert pushed.headers[b"content-type"] == b"text/javascript; charset=utf-8"
    assert pushed.body.startswith(b"// tidings.js")
    assert same_answer(pushed, client.answers[fetched])


async def test_a_client_that_disabled_push_gets_no_promise(start_server: StartServer) -> None:
    server = await start_server(config=ServerConfig())
    with trio.fail_after(10):
        client = await Client.open(server.port, push=False)
        try:
            page = await client.get("/")
            head = await client.get("/", method="HEAD")
            await client.until(page, head)
        finally:
            await client.aclose()
    assert client.promises == []
    assert set(client.answers) == {page, head}
    assert client.answers[page].headers[b":status"] == b"200"
    assert b"tidings.js" in client.answers[page].body


async def test_no_push_for_head_nor_for_routes_without_push_paths(
    start_server: StartServer,
) -> None:
    server = await start_server(config=ServerConfig())
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True)
        try:
            head = await client.get("/", method="HEAD")
            script = await client.get("/tidings.js")
            health = await client.get("/healthz")
            await client.until(head, script, health)
        finally:
            await client.aclose()
    assert client.promises == []
    assert client.answers[head].headers[b":status"] == b"200"


async def test_declined_pushes_cost_nothing_and_the_connection_goes_on(
    start_server: StartServer,
) -> None:
    # A client that has the script cached resets each promised stream at once (its
    # small stream window holds every pushed answer back until the reset arrived):
    # the server stops that stream alone, and a budget of 2 stream resets is no
    # reason to end the connection (declined pushes are not the client's flood).
    server = await start_server(config=ServerConfig(max_stream_resets=2))
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True, refuse_pushes=True, window=1024)
        try:
            pages = []
            for _ in range(5):
                pages.append(await client.get("/"))
                await client.until(pages[-1])
            script = await client.get("/tidings.js")
            await client.until(script)
        finally:
            await client.aclose()
    assert len(client.promises) == 5
    for promised, _, _ in client.promises:
        assert len(client.answers[promised].body) <= 1024
    for page in pages:
        assert client.answers[page].ended
        assert b"tidings.js" in client.answers[page].body
    assert client.answers[script].headers[b":status"] == b"200"


async def test_declining_pushes_not_yet_answered_is_not_a_reset_flood(
    start_server: StartServer,
) -> None:
    # The pushed path is a long poll, held until an event: each reset reaches a
    # stream that has not answered yet, which from a client's own stream would be
    # a "rapid reset" counted against the budget of 2.
    router: Router = default_router()
    router.add("/app", {"GET": static("<p>app</p>")}, push=["/topics/news/poll"])
    server = await start_server(config=ServerConfig(max_stream_resets=2), router=router)
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True, refuse_pushes=True)
        try:
            pages = []
            for _ in range(5):
                pages.append(await client.get("/app"))
                await client.until(pages[-1])
            health = await client.get("/healthz")
            await client.until(health)
        finally:
            await client.aclose()
    assert len(client.promises) == 5
    assert all(client.answers[page].body == b"<p>app</p>" for page in pages)
    assert client.answers[health].headers[b":status"] == b"200"


async def test_pushed_streams_leave_the_client_its_concurrent_streams(
    start_server: StartServer,
) -> None:
    router: Router = default_router()
    router.add("/app", {"GET": static("<p>app</p>")}, push=["/topics/news/poll"])
    server = await start_server(config=ServerConfig(max_concurrent_streams=1), router=router)
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True)
        try:
            page = await client.get("/app")
            await client.until(page)
            # The pushed poll is held open; the client's one stream is free again.
            health = await client.get("/healthz")
            await client.until(health)
        finally:
            await client.aclose()
    [(held, _, _)] = client.promises
    assert not client.answers[held].ended
    assert not client.answers[held].reset
    assert client.answers[health].headers[b":status"] == b"200"


async def test_a_route_pushes_its_paths_through_the_router(start_server: StartServer) -> None:
    router: Router = default_router()
    router.add("/app", {"GET": static("<p>app</p>")}, push=["/style.css?v=2", "/missing"])
    router.add("/style.css", {"GET": static("p { color: red }", "text/css")})
    server = await start_server(config=ServerConfig(), router=router)
    with trio.fail_after(10):
        client = await Client.open(server.port, push=True)
        try:
            page = await client.get("/app")
            await client.until(page)
            await client.until(*(promised for promised, _, _ in client.promises))
        finally:
            await client.aclose()
    paths = [request[b":path"] for _, _, request in client.promises]
    assert paths == [b"/style.css?v=2", b"/missing"]
    (css, _, _), (missing, _, _) = client.promises
    assert client.answers[css].headers[b":status"] == b"200"
    assert client.answers[css].body == b"p { color: red }"
    assert client.answers[missing].headers[b":status"] == b"404"  # the router answered


async def test_no_push_over_http1(start_server: StartServer) -> None:
    server = await start_server(config=ServerConfig())
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            received = bytearray()
            while chunk := await stream.receive_some():
                received += chunk
        finally:
            await stream.aclose()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"link:" not in head.lower()
    assert b"tidings.js" in body


@pytest.mark.parametrize(
    "push",
    [["tidings.js"], ["/a b"], ["/a#b"], ["/caf\u00e9"]],
)
def test_pushed_paths_must_be_request_targets(push: Sequence[str]) -> None:
    with pytest.raises(ValueError, match="pushed paths"):
        Router().add("/", {"GET": static("x")}, push=push)


@pytest.mark.external
async def test_nghttp_sees_the_script_pushed(start_server: StartServer) -> None:
    nghttp = require_program("nghttp", reason="nghttp is not installed (nghttp2-client)")
    server = await start_server(config=ServerConfig())
    url = f"http://127.0.0.1:{server.port}/"
    with trio.fail_after(20):
        pushed = await trio.run_process(
            [nghttp, "-ans", url], capture_stdout=True, capture_stderr=True
        )
        declined = await trio.run_process(
            [nghttp, "-ans", "--no-push", url], capture_stdout=True, capture_stderr=True
        )
        verbose = await trio.run_process(
            [nghttp, "-nv", url], capture_stdout=True, capture_stderr=True
        )
    # The statistics mark a pushed stream's start with '*'.
    rows = [line.split() for line in pushed.stdout.decode().splitlines() if line.strip()]
    assert any(row[-1] == "/tidings.js" and "*" in row and row[-3] == "200" for row in rows), (
        pushed.stdout.decode()
    )
    assert any(row[-1] == "/" and row[-3] == "200" for row in rows)
    assert b"/tidings.js" not in declined.stdout
    assert b"recv PUSH_PROMISE frame" in verbose.stdout
    assert b"promised_stream_id=2" in verbose.stdout
