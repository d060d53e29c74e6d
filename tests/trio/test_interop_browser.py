"""A real browser as a client: headless Chromium's ``EventSource`` against our server.

The page (``pages/eventsource.html``) follows a stream until it has the events it
wants, reports every event to the test while it goes, and then writes its result
into the DOM.  Chromium runs with ``--dump-dom``, which prints the DOM once the
page has loaded; the page's last script is held back by the test until the page
posted its result, so the dump shows the finished page.

Each test publishes some events, lets the browser see them, cuts its stream on the
server side, publishes more while it is away and more once it is back, and then
checks that the browser reconnected by itself with ``Last-Event-ID`` (the server
saw the header) and ended with every event exactly once, in order.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import signal
import ssl
import subprocess
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import trio
import trustme

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory
from tidings.trio import CloseReason, Hub, Server, ServerConfig, Subscription
from tidings.trio.server._http import Request, Responder
from tidings.trio.server._routes import Handler, Router
from tidings.trio.server._sse_endpoint import sse_events

try:
    from tests.trio._tools import require_program
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _tools import require_program  # type: ignore[no-redef]

if TYPE_CHECKING:
    from tidings.trio.server._app import App

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

PAGES = Path(__file__).parent / "pages"
TOPIC = "news"
#: Bound on one whole browser run, start to finish.
BROWSER_TIME_LIMIT = 60.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable; skip when missing, except on CI (then fail)."""
    return require_program(
        "chromium",
        "chromium-browser",
        reason="chromium is not installed (Debian package 'chromium')",
    )


# -- observing the server and the page -------------------------------------------------


class Changes:
    """Wakes waiters whenever the observed state changes (no polling, no sleeps)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


@dataclass
class Subscribed:
    """One call of :meth:`Hub.subscribe` by the server."""

    after: str | None
    subscription: Subscription


class RecordingHub(Hub):
    """A hub that remembers every subscription the server makes, and from where."""

    def __init__(self, changes: Changes) -> None:
        super().__init__(MemoryHistory(new_epoch(random.Random(7)), max_events=100))
        self.changes = changes
        self.subscribed: list[Subscribed] = []

    def subscribe(
        self, topic: str, after: Position | str | bytes | None = None, **kwargs: Any
    ) -> Subscription:
        subscription = super().subscribe(topic, after, **kwargs)
        if isinstance(after, bytes):
            after = after.decode("ascii", "replace")
        assert not isinstance(after, Position)
        self.subscribed.append(Subscribed(after, subscription))
        self.changes.notify()
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        super()._remove(subscription)
        self.changes.notify()


@dataclass
class PageState:
    """What the page and the server told the test."""

    changes: Changes
    #: Events (of any type) the page reported having received so far.
    progress: int = 0
    #: The page's final result (``None`` until it posted it).
    result: dict[str, Any] | None = None
    #: Lets ``gate.js`` be answered: set when the page is done or the browser exited.
    release_gate: trio.Event = field(default_factory=trio.Event)
    #: ``(HTTP version, Last-Event-ID header)`` of every event-stream request.
    stream_requests: list[tuple[str, str | None]] = field(default_factory=list)
    browser_exited: bool = False


_JS = (b"content-type", b"text/javascript; charset=utf-8")
_HTML = (b"content-type", b"text/html; charset=utf-8")
_NO_STORE = (b"cache-control", b"no-store")


def page_routes(router: Router, state: PageState) -> None:
    """Serve the test page under ``/page/`` and the endpoints it reports to."""

    def static(name: str, content_type: tuple[bytes, bytes]) -> Handler:
        async def handler(app: App, request: Request, responder: Responder) -> None:
            body = (PAGES / name).read_bytes()
            await responder.respond(200, [content_type, _NO_STORE], body)

        return handler

    async def gate(app: App, request: Request, responder: Responder) -> None:
        await state.release_gate.wait()
        await responder.respond(200, [_JS, _NO_STORE], b"// the page is done\n")

    async def progress(app: App, request: Request, responder: Responder) -> None:
        report = json.loads(await responder.read_body(64 * 1024))
        state.progress = max(state.progress, int(report["count"]))
        state.changes.notify()
        await responder.respond(204, [])

    async def done(app: App, request: Request, responder: Responder) -> None:
        state.result = json.loads(await responder.read_body(1024 * 1024))
        state.release_gate.set()
        state.changes.notify()
        await responder.respond(204, [])

    router.add("/page/eventsource.html", {"GET": static("eventsource.html", _HTML)})
    router.add("/page/eventsource.js", {"GET": static("eventsource.js", _JS)})
    router.add("/page/gate.js", {"GET": gate})
    router.add("/page/progress", {"POST": progress})
    router.add("/page/done", {"POST": done})


def stream_route(router: Router, state: PageState) -> None:
    """Our SSE endpoint, noting the protocol and ``Last-Event-ID`` of each request."""

    async def recorded(app: App, request: Request, responder: Responder) -> None:
        header = request.header(b"last-event-id")
        state.stream_requests.append(
            (request.http_version, None if header is None else header.decode("ascii", "replace"))
        )
        await sse_events(app, request, responder)

    router.add("/topics/{topic}/events", {"GET": recorded})


async def start_server(
    nursery: trio.Nursery,
    hub: Hub,
    router: Router,
    config: ServerConfig,
    ssl_context: ssl.SSLContext | None = None,
) -> Server:
    server = Server(hub, config, ssl_context=ssl_context, router=router)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(server.serve_listeners, listeners))
    return server


# -- the browser ---------------------------------------------------------------


@dataclass
class BrowserRun:
    """One ``chromium --dump-dom`` process and what it printed."""

    log_path: Path
    returncode: int | None = None
    dom: str = ""
    finished: trio.Event = field(default_factory=trio.Event)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        interesting = [line for line in text.splitlines() if "dbus" not in line]
        return "\n".join(interesting[-lines:])

    def page_result(self) -> dict[str, Any]:
        match = re.search(r'<pre id="result">(.*?)</pre>', self.dom, re.DOTALL)
        assert match is not None, f"no result in the dumped DOM:\n{self.dom}\n{self.log_tail()}"
        result: dict[str, Any] = json.loads(html.unescape(match.group(1)))
        return result


def _kill_group(pid: int) -> None:
    # The browser runs in its own session (process group == its pid): this ends it
    # and every helper process it started, and nothing else.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_chromium(
    chromium: str,
    url: str,
    workdir: Path,
    extra_flags: Sequence[str],
    state: PageState,
    *,
    task_status: trio.TaskStatus[BrowserRun] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run headless Chromium on *url* with ``--dump-dom`` until it exits; always kill it."""
    profile = workdir / "profile"
    profile.mkdir()
    dom_path = workdir / "dom.html"
    run = BrowserRun(workdir / "chromium.log")
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *extra_flags,
        "--dump-dom",
        url,
    ]
    # Output goes to files, not pipes: a helper process that outlives the browser
    # could otherwise hold a pipe open.
    with dom_path.open("wb") as out, run.log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=log, start_new_session=True
        )
        try:
            task_status.started(run)
            await process.wait()
        finally:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
            run.returncode = process.returncode
            run.dom = dom_path.read_text("utf-8", "replace")
            state.browser_exited = True
            state.release_gate.set()
            state.changes.notify()
            run.finished.set()


# -- the scenario --------------------------------------------------------------


def payload(n: int) -> str:
    # Several lines and non-ASCII text: the browser must join and decode them.
    return f"update {n} ✓\nline two of {n}"


@dataclass
class Setup:
    chromium: str
    state: PageState
    hub: RecordingHub
    page_url: str
    stream_url: str
    extra_flags: Sequence[str] = ()


async def follow_through_a_cut(
    setup: Setup, workdir: Path, cut: CloseReason
) -> tuple[dict[str, Any], list[Position]]:
    """Publish 1-4, browser reads them, cut, publish 5-6, browser returns, publish 7-9.

    Returns the page's result and the positions published.
    """
    state, hub = setup.state, setup.hub
    positions = [(await hub.publish(TOPIC, payload(n))) for n in range(1, 5)]
    # Nothing has been seen yet: start from everything retained.  The reconnection's
    # Last-Event-ID header must then take precedence over this query parameter.
    src = setup.stream_url + "?last-event-id=earliest"
    url = f"{setup.page_url}?count=9&src={quote(src, safe='')}"
    with trio.fail_after(BROWSER_TIME_LIMIT):
        async with trio.open_nursery() as nursery:
            run: BrowserRun = await nursery.start(
                run_chromium, setup.chromium, url, workdir, setup.extra_flags, state
            )
            await state.changes.wait_for(lambda: state.progress >= 4 or state.browser_exited)
            assert state.progress >= 4, f"browser did not get 4 events\n{run.log_tail()}"
            [first] = hub.subscribed
            assert first.after == "earliest"
            first.subscription.close(cut)
            positions += [(await hub.publish(TOPIC, payload(n))) for n in (5, 6)]
            await state.changes.wait_for(lambda: len(hub.subscribed) > 1 or state.browser_exited)
            assert len(hub.subscribed) == 2, f"browser did not reconnect\n{run.log_tail()}"
            positions += [(await hub.publish(TOPIC, payload(n))) for n in (7, 8, 9)]
            await run.finished.wait()
            # The page closed its EventSource and the browser is gone: the server
            # let go of the subscription.
            await state.changes.wait_for(lambda: hub.subscriber_count() == 0)
    assert run.returncode == 0, run.log_tail()
    assert state.result is not None
    result = run.page_result()
    assert result == state.result
    # The browser resumed from the last event it had, announced in the header.
    assert hub.subscribed[1].after == positions[3].format()
    assert [last_event_id for _, last_event_id in state.stream_requests] == [
        None,
        positions[3].format(),
    ]
    return result, positions


def assert_every_event_once_in_order(result: dict[str, Any], positions: list[Position]) -> None:
    events = result["events"]
    assert [event["type"] for event in events] == ["message"] * 9
    assert [event["id"] for event in events] == [p.format() for p in positions]
    assert [event["data"] for event in events] == [payload(n) for n in range(1, 10)]
    # One open per connection; the cut was seen as an error (then a reconnection).
    assert result["opens"] == 2
    assert result["errors"] >= 1


CUTS = [
    pytest.param(CloseReason.CUT, id="abrupt-cut"),
    pytest.param(CloseReason.CLOSED, id="end-of-stream"),
]


@pytest.mark.parametrize("cut", CUTS)
async def test_eventsource_over_http1_resumes_with_last_event_id_after_a_cut(
    chromium: str, nursery: trio.Nursery, tmp_path: Path, cut: CloseReason
) -> None:
    # Cross-origin, as when the page and the event server are different services:
    # the page comes from a second server, the stream needs CORS.
    changes = Changes()
    state = PageState(changes)
    hub = RecordingHub(changes)
    router = Router()
    stream_route(router, state)
    events_server = await start_server(
        nursery, hub, router, ServerConfig(sse_retry=50, allow_origin="*")
    )
    page_router = Router()
    page_routes(page_router, state)
    page_server = await start_server(nursery, Hub(), page_router, ServerConfig())
    setup = Setup(
        chromium,
        state,
        hub,
        f"{page_server.url}/page/eventsource.html",
        f"{events_server.url}/topics/{TOPIC}/events",
    )
    result, positions = await follow_through_a_cut(setup, tmp_path, cut)
    assert_every_event_once_in_order(result, positions)
    assert [version for version, _ in state.stream_requests] == ["1.1", "1.1"]
    assert result["protocol"] == "http/1.1"


@pytest.fixture
def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.mark.parametrize("cut", CUTS)
async def test_eventsource_over_h2_with_tls_resumes_with_last_event_id_after_a_cut(
    chromium: str,
    nursery: trio.Nursery,
    tmp_path: Path,
    cut: CloseReason,
    tls_context: ssl.SSLContext,
) -> None:
    # Same origin over HTTPS: page and stream both over HTTP/2 (negotiated by ALPN).
    changes = Changes()
    state = PageState(changes)
    hub = RecordingHub(changes)
    router = Router()
    stream_route(router, state)
    page_routes(router, state)
    server = await start_server(
        nursery, hub, router, ServerConfig(sse_retry=50), ssl_context=tls_context
    )
    assert server.url.startswith("https://")
    setup = Setup(
        chromium,
        state,
        hub,
        f"{server.url}/page/eventsource.html",
        f"{server.url}/topics/{TOPIC}/events",
        extra_flags=("--ignore-certificate-errors",),
    )
    result, positions = await follow_through_a_cut(setup, tmp_path, cut)
    assert_every_event_once_in_order(result, positions)
    assert [version for version, _ in state.stream_requests] == ["2", "2"]
    assert result["protocol"] == "h2"


async def test_eventsource_gets_a_reset_for_an_unknown_id_and_follows_from_the_head(
    chromium: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    changes = Changes()
    state = PageState(changes)
    hub = RecordingHub(changes)
    router = Router()
    stream_route(router, state)
    page_routes(router, state)
    server = await start_server(nursery, hub, router, ServerConfig(sse_retry=50))
    old = [(await hub.publish(TOPIC, payload(n))) for n in (1, 2, 3)]
    src = f"{server.url}/topics/{TOPIC}/events?last-event-id=no-such-id"
    url = f"{server.url}/page/eventsource.html?count=2&src={quote(src, safe='')}"
    with trio.fail_after(BROWSER_TIME_LIMIT):
        async with trio.open_nursery() as browser_nursery:
            run: BrowserRun = await browser_nursery.start(
                run_chromium, chromium, url, tmp_path, (), state
            )
            # Publish only once the browser has its reset: the reset's cursor is the
            # head when the server reads the history.
            await state.changes.wait_for(lambda: state.progress >= 1 or state.browser_exited)
            assert state.progress >= 1, f"browser got no reset\n{run.log_tail()}"
            new = [(await hub.publish(TOPIC, payload(n))) for n in (4, 5)]
            await run.finished.wait()
    assert run.returncode == 0, run.log_tail()
    events = run.page_result()["events"]
    # The reset comes first, its id is the head (so EventSource continues from
    # there), then the live events follow; nothing from before the head.
    assert [event["type"] for event in events] == ["tidings.reset", "message", "message"]
    reset = json.loads(events[0]["data"])
    assert reset["cursor"] == events[0]["id"] == old[-1].format()
    assert [event["id"] for event in events[1:]] == [p.format() for p in new]
    assert [event["data"] for event in events[1:]] == [payload(4), payload(5)]
