"""``GET /tidings.js`` and the demo page ``GET /``: served by the default routes of the
built-in server (under a prefix too) and of the ASGI app, from the installed package."""

from __future__ import annotations

from importlib.resources import files

import trio

from tidings.asgi import create_app, mount
from tidings.trio import Hub, ServerConfig, default_router, static

from .conftest import Connect, StartServer

JS = b"text/javascript; charset=utf-8"
HTML = b"text/html; charset=utf-8"


def shipped(name: str) -> bytes:
    return files("tidings").joinpath("static", name).read_bytes()


async def test_the_server_serves_the_client_module_and_the_demo_page(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig())
    client = await connect(server)
    with trio.fail_after(10):
        script = await client.request("GET", "/tidings.js")
        head = await client.request("HEAD", "/tidings.js")
        page = await client.request("GET", "/")
    assert (script[0], script[1][b"content-type"]) == (200, JS)
    assert script[2] == shipped("tidings.js")
    assert b"export function connect(" in script[2]
    assert (head[0], head[1][b"content-type"], head[2]) == (200, JS, b"")
    assert head[1][b"content-length"] == str(len(script[2])).encode()
    assert (page[0], page[1][b"content-type"]) == (200, HTML)
    # Relative to the page, so that the demo works under a prefix as well.
    assert b'import { connect } from "./tidings.js";' in page[2]


async def test_under_a_prefix_and_replaced_by_your_own_page(
    start_server: StartServer, connect: Connect
) -> None:
    router = default_router(prefix="/rt")
    router.add("/rt/", {"GET": static("<h1>mine</h1>")})
    server = await start_server(config=ServerConfig(), router=router)
    client = await connect(server)
    with trio.fail_after(10):
        script = await client.request("GET", "/rt/tidings.js")
        page = await client.request("GET", "/rt/")
        root = await client.request("GET", "/")
    assert (script[0], script[1][b"content-type"]) == (200, JS)
    assert page[2] == b"<h1>mine</h1>"
    assert root[0] == 404


async def test_a_cross_origin_publish_may_send_an_idempotency_key(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(config=ServerConfig(allow_origin="https://app.example"))
    client = await connect(server)
    with trio.fail_after(10):
        status, headers, _ = await client.request(
            "OPTIONS",
            "/topics/news",
            [("origin", "https://app.example"), ("access-control-request-method", "POST")],
        )
    assert status == 204
    assert b"idempotency-key" in headers[b"access-control-allow-headers"]


async def test_the_asgi_app_serves_them_too() -> None:
    from tests.asgi.test_app import Peer, http_scope

    app = mount("/rt", create_app(Hub()), create_app(Hub()))
    answers = {}
    for path in ("/rt/tidings.js", "/rt/", "/"):
        peer = Peer()
        await peer.to_app_send.send({"type": "http.request", "body": b""})
        with trio.fail_after(5):
            await app(http_scope(path, raw_path=path.encode()), peer.receive, peer.send)
        start = peer.sent[0]
        answers[path] = (start["status"], dict(start["headers"])[b"content-type"], peer.body())
    assert answers["/rt/tidings.js"] == (200, JS, shipped("tidings.js"))
    assert answers["/rt/"] == (200, HTML, shipped("demo.html"))
    assert answers["/"] == answers["/rt/"]
