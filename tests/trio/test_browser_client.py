"""tidings.js in headless Chromium (Playwright), against the real server.

Three paths to the server, one per transport the client should settle on:

* straight through (a proxy that relays everything, WebSocket included): WebSocket;
* through a proxy that refuses WebSocket handshakes: Server-Sent Events;
* through one that also buffers every response until it is complete: long polling
  (an event stream's first bytes never arrive, a poll answer does).

On each path the page follows a topic while the test publishes, publishes itself,
and the proxy cuts every connection at the worst moment -- when the page's publish is
stored but its acknowledgement not yet delivered -- and holds the reconnections back
while the test publishes more.  Every event must then arrive once and in order, and
the page's publish must resolve to its id, be stored once and come back once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tidings.cursor import Position, new_epoch
from tidings.history import MemoryHistory, StoredEvent
from tidings.trio import (
    Action,
    Hub,
    Refusal,
    Request,
    Server,
    ServerConfig,
    default_router,
    static,
)

from ._gateway import Gateway
from ._playwright import Console, in_browser, require_browser

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PAGE = (Path(__file__).parent / "pages" / "tidings_client.html").read_bytes()
TOPIC = "news"
#: How long the page gives a transport to open (the buffered event stream waits it out).
OPEN_TIMEOUT_MS = 3000
#: Chromium's own console line for the WebSocket handshake the proxy refuses.
WS_REFUSED = r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws' failed: .*403.*"
#: Chromium's own console line for a request the proxy cut (a fetch that failed).
REQUEST_CUT = r"Failed to load resource: net::ERR_(EMPTY_RESPONSE|INCOMPLETE_CHUNKED_ENCODING)"


def payload(n: int) -> str:
    # Several lines and non-ASCII text, which every transport must carry intact.
    return f"update {n} ✓\nline two of {n}"


FROM_THE_PAGE = "from the page ✓\nsecond line"


class RecordingHub(Hub):
    """A hub that notes the idempotency key of every publish it is asked to store."""

    def __init__(self) -> None:
        super().__init__(MemoryHistory(new_epoch(random.Random(3)), max_events=1000))
        self.keys: list[str] = []

    async def publish(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> Position:
        if key is not None:
            self.keys.append(key)
        return await super().publish(topic, data, event, key=key)

    def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        if key is not None:
            self.keys.append(key)
        return super().append(topic, data, event, key=key)


async def start_server(nursery: trio.Nursery, hub: Hub) -> Server:
    router = default_router()
    router.add("/test.html", {"GET": static(PAGE)})
    server = Server(hub, ServerConfig(), router=router)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(server.serve_listeners, listeners))
    return server


def open_page(page: Page, url: str, cursor: str | None, topic: str = TOPIC, **options: Any) -> None:
    page.goto(url + "/test.html")
    page.wait_for_function("window.ready === true")
    page.evaluate("([t, c, o]) => follow(t, c, o)", [topic, cursor, options])


def wait_for_events(page: Page, count: int) -> None:
    page.wait_for_function("n => seen.events.length >= n", arg=count)


def publisher(hub: Hub) -> Callable[..., list[str]]:
    """From the browser thread: publish ``payload(n)`` for each n, in Trio."""

    async def publish(numbers: tuple[int, ...]) -> list[str]:
        return [(await hub.publish(TOPIC, payload(n))).format() for n in numbers]

    return lambda *numbers: trio.from_thread.run(publish, numbers)


PATHS = [
    pytest.param(False, False, "ws", (), id="websocket"),
    pytest.param(True, False, "sse", (WS_REFUSED, REQUEST_CUT), id="websocket-refused-so-sse"),
    pytest.param(
        True, True, "poll", (WS_REFUSED, REQUEST_CUT), id="responses-buffered-so-long-poll"
    ),
]


@pytest.mark.parametrize(("refuse_websocket", "buffer", "transport", "expected_errors"), PATHS)
async def test_events_and_a_publish_around_a_cut_arrive_once_and_in_order(
    nursery: trio.Nursery,
    refuse_websocket: bool,
    buffer: bool,
    transport: str,
    expected_errors: tuple[str, ...],
) -> None:
    chromium = require_browser()
    hub = RecordingHub()
    server = await start_server(nursery, hub)
    gateway = await Gateway(server.port, refuse_websocket=refuse_websocket, buffer=buffer).start(
        nursery
    )
    publish = publisher(hub)
    ids = [(await hub.publish(TOPIC, payload(n))).format() for n in (1, 2, 3)]

    def session(page: Page, console: Console) -> dict[str, Any]:
        open_page(page, gateway.url, "earliest", openTimeout=OPEN_TIMEOUT_MS)
        wait_for_events(page, 3)
        page.wait_for_function("t => client.transport === t", arg=transport)
        ids.extend(publish(4, 5))
        wait_for_events(page, 5)
        # The page publishes; the proxy lets the publish be stored, withholds its
        # acknowledgement and cuts every connection, then holds new ones back while
        # two more events are published.
        cut = trio.from_thread.run_sync(gateway.cut_at_next_publish_answer)
        page.evaluate("d => publish('news', d)", FROM_THE_PAGE)
        trio.from_thread.run(cut.wait)
        ids.extend(["<the page's>", *publish(6, 7)])
        trio.from_thread.run_sync(gateway.release)
        page.wait_for_function("seen.published.length === 1")
        wait_for_events(page, 8)
        ids.extend(publish(8, 9))
        wait_for_events(page, 10)
        seen: dict[str, Any] = page.evaluate("seen")
        console.check(*expected_errors)
        return seen

    seen = await in_browser(chromium, session)
    [page_id] = seen["published"]
    ids[ids.index("<the page's>")] = page_id
    datas = (
        [payload(n) for n in (1, 2, 3, 4, 5)] + [FROM_THE_PAGE] + [payload(n) for n in (6, 7, 8, 9)]
    )
    assert [e["id"] for e in seen["events"]] == ids
    assert [e["data"] for e in seen["events"]] == datas
    assert {(e["topic"], e["event"]) for e in seen["events"]} == {(TOPIC, "message")}
    assert seen["resets"] == seen["errors"] == []
    # Stored once although sent twice under one key: before the cut and after it.
    assert len(hub.keys) >= 2
    assert set(hub.keys) == {hub.keys[0]}
    assert hub.history.memory.head(TOPIC).offset == 10  # type: ignore[attr-defined]
    # The transport opened, was lost in the cut, and came back the same.
    transports = seen["transports"]
    assert transports[0] == transports[-1] == transport
    assert set(transports) <= {transport, None}
    if transport != "poll":
        # (A poll on a kept-alive connection that the cut closed is retried by the
        # browser itself, unseen, when nothing of its answer had arrived.)
        assert None in transports
    assert gateway.cuts == 1
    paths = [path.partition("?")[0] for _, path in gateway.requests]
    if transport == "ws":
        assert paths.count("/ws") >= 2
        assert not [p for p in paths if p.startswith("/topics/")]
    else:
        assert gateway.refused_websockets >= 1
        assert "/ws" not in paths
    if transport == "sse":
        assert paths.count(f"/topics/{TOPIC}/events") >= 2
        assert f"/topics/{TOPIC}/poll" not in paths
    if transport == "poll":
        # The event stream was tried, and held back by the proxy until given up.
        assert gateway.held_back_streams >= 1
        assert paths.count(f"/topics/{TOPIC}/poll") >= 3


@pytest.mark.parametrize(("refuse_websocket", "buffer", "transport", "expected_errors"), PATHS)
async def test_a_live_subscription_cut_before_its_first_event_misses_nothing(
    nursery: trio.Nursery,
    refuse_websocket: bool,
    buffer: bool,
    transport: str,
    expected_errors: tuple[str, ...],
) -> None:
    # "Live from now" has no cursor to resume from until the first event: the client
    # learns where "now" is before it counts the subscription as made (the WebSocket
    # "subscribed" answer, a first poll), so a cut right after still loses nothing.
    chromium = require_browser()
    hub = RecordingHub()
    server = await start_server(nursery, hub)
    gateway = await Gateway(server.port, refuse_websocket=refuse_websocket, buffer=buffer).start(
        nursery
    )
    publish = publisher(hub)
    await hub.publish(TOPIC, "from before: not wanted")

    def session(page: Page, console: Console) -> dict[str, Any]:
        open_page(page, gateway.url, None, openTimeout=OPEN_TIMEOUT_MS)
        page.wait_for_function("t => client.transport === t && sub.cursor !== null", arg=transport)
        trio.from_thread.run_sync(gateway.hold)
        trio.from_thread.run_sync(gateway.cut)
        ids = publish(1, 2)
        trio.from_thread.run_sync(gateway.release)
        wait_for_events(page, 2)
        ids += publish(3)
        wait_for_events(page, 3)
        seen: dict[str, Any] = page.evaluate("seen")
        seen["ids"] = ids
        console.check(*expected_errors)
        return seen

    seen = await in_browser(chromium, session)
    assert [e["id"] for e in seen["events"]] == seen["ids"]
    assert [e["data"] for e in seen["events"]] == [payload(n) for n in (1, 2, 3)]
    assert seen["resets"] == seen["errors"] == []
    assert seen["transports"][0] == seen["transports"][-1] == transport


async def test_resets_reach_on_reset_on_every_transport(nursery: trio.Nursery) -> None:
    chromium = require_browser()
    hub = RecordingHub()
    server = await start_server(nursery, hub)
    # A cursor of another generation of the history (as after a server restart).
    foreign = Position(new_epoch(random.Random(99)), 7).format()
    kept = {}
    for transport in ("ws", "sse", "poll"):
        kept[transport] = (await hub.publish(f"resets-{transport}", "kept")).format()

    async def publish_live(topic: str) -> str:
        return (await hub.publish(topic, "live")).format()

    def session(page: Page, console: Console) -> dict[str, Any]:
        results = {}
        for transport in ("ws", "sse", "poll"):
            topic = f"resets-{transport}"
            open_page(page, server.url, foreign, topic, transports=[transport])
            # The reset, then what the server kept, then live events.
            wait_for_events(page, 1)
            live = trio.from_thread.run(publish_live, topic)
            wait_for_events(page, 2)
            seen = page.evaluate("seen")
            seen["live"] = live
            seen["cursor"] = page.evaluate("sub.cursor")
            page.evaluate("client.close()")
            results[transport] = seen
        console.check()
        return results

    results = await in_browser(chromium, session)
    for transport, seen in results.items():
        topic = f"resets-{transport}"
        assert seen["transports"] == [transport]
        [reset] = seen["resets"]
        assert reset["topic"] == topic
        assert reset["reason"] == "unknown-epoch"
        assert reset["after"] == 0  # before any event
        assert isinstance(reset["cursor"], str)
        assert reset["cursor"] != foreign
        assert [(e["topic"], e["id"], e["data"]) for e in seen["events"]] == [
            (topic, kept[transport], "kept"),
            (topic, seen["live"], "live"),
        ]
        assert seen["cursor"] == seen["live"]
        assert seen["errors"] == []


async def test_the_pacing_is_the_python_clients(nursery: trio.Nursery) -> None:
    # The same random numbers give the same delays as tidings.backoff.default_backoff
    # after failures, a connection that made progress and one that stayed up.
    from tidings.backoff import default_backoff

    chromium = require_browser()
    server = await start_server(nursery, RecordingHub())
    source = random.Random(7)
    draws = [source.random() for _ in range(40)]
    # (event, now): "c" connected, "p" progress, "d" disconnected (with a floor).
    script: list[tuple[str, float, float]] = []
    t = 0.0
    for _ in range(8):  # failures: the window grows to the cap
        script.append(("d", t, 0.0))
        t += 1
    script += [("c", t, 0), ("p", t, 0), ("d", t + 1, 0)]  # progress: U(0, 1)
    script += [("c", t + 2, 0), ("d", t + 2.5, 2.0)]  # a failure above a floor
    script += [("c", t + 3, 0), ("d", t + 9, 0), ("d", t + 10, 0)]  # stable: spread

    class Draws:
        def __init__(self) -> None:
            self.i = 0

        def random(self) -> float:
            self.i += 1
            return draws[self.i - 1]

    backoff = default_backoff()
    rng = Draws()
    expected = []
    for kind, now, floor in script:
        if kind == "c":
            backoff.connected(now)
        elif kind == "p":
            backoff.progress()
        else:
            expected.append(backoff.disconnected(now, rng, floor))

    def session(page: Page, console: Console) -> list[float]:
        page.goto(server.url + "/test.html")
        delays: list[float] = page.evaluate(
            """async ([draws, script]) => {
                const { Backoff } = await import("/tidings.js");
                let i = 0;
                const backoff = new Backoff({ random: () => draws[i++] });
                const delays = [];
                for (const [kind, now, floor] of script) {
                    if (kind === "c") backoff.connected(now);
                    else if (kind === "p") backoff.progress();
                    else delays.push(backoff.disconnected(now, floor));
                }
                return delays;
            }""",
            [draws, script],
        )
        console.check()
        return delays

    delays = await in_browser(chromium, session)
    assert delays == pytest.approx(expected, rel=1e-12)
    assert max(delays[:8]) <= 30


async def test_refusals_reach_the_subscription_and_the_publish_on_every_transport(
    nursery: trio.Nursery,
) -> None:
    # The server's authorisation hook refuses to show "secret" and to publish to
    # "readonly": the subscription's onError and the publish's rejection say so, and
    # the client goes on with the rest.
    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        if action is Action.SUBSCRIBE and topic == "secret":
            return Refusal(403, "not for you")
        if action is Action.PUBLISH and topic == "readonly":
            return Refusal(403, "read only")
        return None

    chromium = require_browser()
    hub = RecordingHub()
    router = default_router()
    router.add("/test.html", {"GET": static(PAGE)})
    server = Server(hub, ServerConfig(auth=hook), router=router)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(server.serve_listeners, listeners))

    def session(page: Page, console: Console) -> dict[str, Any]:
        results = {}
        for transport in ("ws", "sse", "poll"):
            open_page(page, server.url, "earliest", transports=[transport])
            outcome = page.evaluate(
                """async () => {
                    const refused = new Promise((resolve) => client.subscribe("secret", {
                        onEvent: () => resolve("an event"),
                        onError: (error) => resolve(error.message),
                    }));
                    const results = { refused: await refused };
                    results.rejected = await client.publish("readonly", "x").then(
                        (id) => `stored as ${id}`, (error) => error.message);
                    results.published = await client.publish("news", "fine");
                    return results;
                }"""
            )
            wait_for_events(page, 1)
            outcome["events"] = page.evaluate("seen.events")
            outcome["transport"] = page.evaluate("client.transport")
            page.evaluate("client.close()")
            results[transport] = outcome
        console.check(r"Failed to load resource: the server responded with a status of 403 .*")
        return results

    results = await in_browser(chromium, session)
    for transport, outcome in results.items():
        assert outcome["transport"] == transport
        assert "403" in outcome["refused"] or "forbidden" in outcome["refused"]
        assert "403" in outcome["rejected"] or "forbidden" in outcome["rejected"]
        assert "read only" in outcome["rejected"]
        assert outcome["events"][-1]["id"] == outcome["published"]
    assert hub.history.memory.head("readonly").offset == 0  # type: ignore[attr-defined]
