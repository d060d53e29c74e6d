"""TidingsASGI driven directly with ASGI messages: lifespan, drain, refusals, routing."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
import trio
import trio.testing

from tidings.asgi import create_app, mount
from tidings.trio import Action, Refusal, Request, ServerConfig

Message = MutableMapping[str, Any]


class Peer:
    """One ASGI connection as the server sees it: what the app sent, what it reads."""

    def __init__(self) -> None:
        self.to_app_send, self.to_app = trio.open_memory_channel[Message](10)
        self.sent: list[Message] = []
        self.new = trio.Event()

    async def receive(self) -> Message:
        return await self.to_app.receive()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.new.set()
        self.new = trio.Event()

    async def until(self, predicate: Any) -> None:
        with trio.fail_after(5):
            while not predicate(self.sent):
                await self.new.wait()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def http_scope(path: str, method: str = "GET", **extra: Any) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        **extra,
    }


async def test_the_lifespan_drain_ends_event_streams_with_a_short_retry(
    nursery: trio.Nursery,
) -> None:
    app = create_app(config=ServerConfig(drain_retry=250))
    lifespan = Peer()
    nursery.start_soon(
        app, {"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan.receive, lifespan.send
    )
    await lifespan.to_app_send.send({"type": "lifespan.startup"})
    await lifespan.until(lambda sent: sent and sent[-1]["type"] == "lifespan.startup.complete")

    stream = Peer()
    finished = trio.Event()

    async def serve_stream() -> None:
        await app(http_scope("/topics/t/events"), stream.receive, stream.send)
        finished.set()

    nursery.start_soon(serve_stream)
    await stream.until(lambda sent: any(m["type"] == "http.response.body" for m in sent))
    await app.hub.publish("t", "before the drain")
    await stream.until(
        lambda sent: b"before the drain" in b"".join(m.get("body", b"") for m in sent)
    )

    await lifespan.to_app_send.send({"type": "lifespan.shutdown"})
    await lifespan.until(lambda sent: sent[-1]["type"] == "lifespan.shutdown.complete")
    with trio.fail_after(5):
        await finished.wait()
    assert stream.body().endswith(b"retry: 250\n\n")
    assert stream.sent[-1] == {"type": "http.response.body", "body": b""}  # a clean end
    assert app.draining


async def test_a_websocket_handshake_refused_by_the_hook_is_an_http_answer(
    nursery: trio.Nursery,
) -> None:
    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        return Refusal(401, "who are you?", [(b"www-authenticate", b"Bearer")])

    app = create_app(config=ServerConfig(auth=hook))
    peer = Peer()
    scope = {
        **http_scope("/ws"),
        "type": "websocket",
        "subprotocols": ["tidings.v1"],
        "extensions": {"websocket.http.response": {}},
    }
    await peer.to_app_send.send({"type": "websocket.connect"})
    with trio.fail_after(5):
        await app(scope, peer.receive, peer.send)
    start, body = peer.sent
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 401)
    assert (b"www-authenticate", b"Bearer") in start["headers"]
    assert body["body"] == b"who are you?\n"


async def test_without_the_http_response_extension_a_refusal_closes_before_accepting() -> None:
    app = create_app()
    peer = Peer()
    scope = {**http_scope("/ws"), "type": "websocket", "subprotocols": ["chat"]}
    await peer.to_app_send.send({"type": "websocket.connect"})
    with trio.fail_after(5):
        await app(scope, peer.receive, peer.send)
    assert [m["type"] for m in peer.sent] == ["websocket.close"]


async def test_routes_are_found_below_the_root_path_and_connection_headers_are_dropped() -> None:
    app = create_app()
    peer = Peer()
    scope = http_scope("/rt/healthz", root_path="/rt", raw_path=b"/rt/healthz")
    await peer.to_app_send.send({"type": "http.request", "body": b""})
    with trio.fail_after(5):
        await app(scope, peer.receive, peer.send)
    assert peer.sent[0]["status"] == 200
    assert peer.body() == b"ok\n"
    # A 413 carries "Connection: close" on the built-in server; not through ASGI.
    big = Peer()
    await big.to_app_send.send({"type": "http.request", "body": b"x" * (2 * 1024 * 1024)})
    with trio.fail_after(5):
        await app(http_scope("/topics/t", "POST"), big.receive, big.send)
    assert big.sent[0]["status"] == 413
    assert all(name != b"connection" for name, _ in big.sent[0]["headers"])


async def test_mount_sends_other_paths_to_the_other_app() -> None:
    calls: list[str] = []

    async def other(scope: Message, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    asgi = mount("/rt", create_app(), other)
    for path in ("/", "/rtx", "/rt/healthz"):
        peer = Peer()
        await peer.to_app_send.send({"type": "http.request", "body": b""})
        with trio.fail_after(5):
            await asgi(http_scope(path), peer.receive, peer.send)
    assert calls == ["/", "/rtx"]
    with pytest.raises(ValueError, match="prefix"):
        mount("rt/", create_app(), other)


def test_the_app_refuses_to_run_outside_trio() -> None:
    import asyncio

    app = create_app()

    async def call() -> None:
        await app(http_scope("/healthz"), None, None)  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="Trio only"):
        asyncio.run(call())
