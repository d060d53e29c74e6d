"""Headless Chromium's ``new WebSocket(url, "tidings.v1")`` against ``GET /ws``.

Uses the browser machinery of ``test_interop_browser`` (``--dump-dom`` and a gate
script that holds the page's load until it posted its result).  A same-origin page
subscribes, publishes and receives; a page from another origin is refused before
the upgrade (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import trio

from tidings.trio import Hub, ServerConfig
from tidings.trio.server._app import default_router
from tidings.trio.server._http import Request, Responder
from tidings.trio.server._routes import Handler, Router

from .test_interop_browser import (
    BROWSER_TIME_LIMIT,
    PAGES,
    BrowserRun,
    Changes,
    PageState,
    chromium,
    run_chromium,
    start_server,
)

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["chromium"]  # the fixture, shared with test_interop_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

_JS = (b"content-type", b"text/javascript; charset=utf-8")
_HTML = (b"content-type", b"text/html; charset=utf-8")
_NO_STORE = (b"cache-control", b"no-store")
TOPIC = "news"


def page_routes(router: Router, state: PageState) -> None:
    def static(name: str, content_type: tuple[bytes, bytes]) -> Handler:
        async def handler(app: App, request: Request, responder: Responder) -> None:
            await responder.respond(200, [content_type, _NO_STORE], (PAGES / name).read_bytes())

        return handler

    async def gate(app: App, request: Request, responder: Responder) -> None:
        await state.release_gate.wait()
        await responder.respond(200, [_JS, _NO_STORE], b"// the page is done\n")

    async def done(app: App, request: Request, responder: Responder) -> None:
        state.result = json.loads(await responder.read_body(1024 * 1024))
        state.release_gate.set()
        state.changes.notify()
        await responder.respond(204, [])

    router.add("/page/websocket.html", {"GET": static("websocket.html", _HTML)})
    router.add("/page/websocket.js", {"GET": static("websocket.js", _JS)})
    router.add("/page/gate.js", {"GET": gate})
    router.add("/page/done", {"POST": done})


async def test_browser_websocket_subscribes_publishes_and_receives(
    chromium: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    hub = Hub()
    router = default_router()
    state = PageState(Changes())
    page_routes(router, state)
    server = await start_server(nursery, hub, router, ServerConfig())
    before = [(await hub.publish(TOPIC, f"n{i}")).format() for i in range(3)]
    ws_url = server.url.replace("http://", "ws://") + "/ws"
    # Same origin: the page and the WebSocket come from the same server.
    page = f"{server.url}/page/websocket.html"
    result = await run_page_with_routes(chromium, tmp_path, page, ws_url, 4, state)
    assert result["protocol"] == "tidings.v1"
    assert [e["data"] for e in result["events"]] == ["n0", "n1", "n2", "from the browser ✓"]
    assert [e["id"] for e in result["events"]][:3] == before
    assert result["events"][3]["event"] == "hello"
    assert result["published"]["id"] == result["events"][3]["id"]
    stored = hub.history.memory.head(TOPIC)
    assert stored.offset == 4


async def test_browser_page_from_another_origin_is_refused(
    chromium: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    hub = Hub()
    ws_server = await start_server(nursery, hub, default_router(), ServerConfig())
    state = PageState(Changes())
    page_router = Router()
    page_routes(page_router, state)
    page_server = await start_server(nursery, Hub(), page_router, ServerConfig())
    ws_url = ws_server.url.replace("http://", "ws://") + "/ws"
    page = f"{page_server.url}/page/websocket.html"
    result = await run_page_with_routes(chromium, tmp_path, page, ws_url, 1, state)
    # The handshake got 403: the browser reports an error and an abnormal close.
    assert result["protocol"] is None
    assert result["events"] == []
    assert result["errors"] == 1
    assert result["close"] == {"code": 1006, "clean": False}
    assert hub.history.memory.head(TOPIC).offset == 0


async def run_page_with_routes(
    chromium: str, tmp_path: Path, page_url: str, ws_url: str, count: int, state: PageState
) -> dict[str, Any]:
    url = f"{page_url}?count={count}&topic={TOPIC}&src={quote(ws_url, safe='')}"
    with trio.fail_after(BROWSER_TIME_LIMIT):
        async with trio.open_nursery() as nursery:
            run: BrowserRun = await nursery.start(run_chromium, chromium, url, tmp_path, (), state)
            await run.finished.wait()
    assert run.returncode == 0, run.log_tail()
    result = run.page_result()
    assert result == state.result
    return result
