"""The example servers, started by their documented command, used as a person would.

Each example runs as a real process (``python examples/NAME/server.py --port 0``);
Chromium (Playwright, the system browser) loads its page from the same port, types
and clicks, and the test checks what appears, that the page logged no error, and
keeps a screenshot in the test's temporary directory.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from ..trio._cli import ENV, Lines
from ..trio._gateway import Gateway
from ..trio._playwright import Console, in_browser, require_browser

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120), pytest.mark.deadline(90)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
START = 30  # seconds a starting example may take to print its URL (a loaded machine)


@asynccontextmanager
async def example(name: str, *args: str) -> AsyncIterator[str]:
    """Run ``python examples/NAME/server.py --port 0 *args``; yield the URL it prints.

    Leaving the block sends SIGTERM, which drains the server: it must exit with 0.
    """
    command = [sys.executable, str(EXAMPLES / name / "server.py"), "--port", "0", *args]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, env=ENV, check=False)
        )
        try:
            assert process.stdout is not None
            with trio.fail_after(START):
                url = (await Lines(process.stdout).next()).strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
            yield url.rstrip("/")
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(START):
                status = await process.wait()
    assert status == 0


async def http(method: str, url: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the stdlib client, in a thread (bounded)."""
    import urllib.error
    import urllib.request

    def run() -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=body or None, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    with trio.fail_after(15):
        return await trio.to_thread.run_sync(run)


def another_page(page: Page, console: Console) -> Page:
    """A page in a browser context of its own (another person), watched by *console*."""
    browser = page.context.browser
    assert browser is not None
    other = browser.new_context().new_page()
    other.set_default_timeout(30_000)
    console.watch(other)
    return other


def screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)


def check_screenshots(*paths: Path) -> None:
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 5_000


# -- chat ---------------------------------------------------------------------------


def say(page: Page, name: str, text: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Your name").fill(name)
    page.get_by_label("Message").press_sequentially(text)
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_label("Message")).to_have_value("")


def messages(page: Page, text: str):  # type: ignore[no-untyped-def]
    return page.locator("#messages li", has_text=text)


async def test_chat_rooms_history_on_join_and_two_people(tmp_path: Path) -> None:
    chromium = require_browser()
    async with example("chat") as url:
        earlier = json.dumps({"name": "Grace", "text": "said before anyone came"})
        status, _ = await http("POST", f"{url}/topics/room.general?event=message", earlier.encode())
        assert status == 201

        def session(page: Page, console: Console) -> None:
            from playwright.sync_api import expect

            page.goto(url + "/")
            expect(page).to_have_title("tidings chat")
            expect(page.locator("#transport")).to_have_text("ws")
            # History on join: what was said before the page opened.
            expect(messages(page, "said before anyone came")).to_contain_text("Grace")
            say(page, "Ada", "hello everyone")
            expect(messages(page, "hello everyone")).to_have_count(1)

            other = another_page(page, console)
            other.goto(url + "/")
            expect(messages(other, "said before anyone came")).to_have_count(1)
            expect(messages(other, "hello everyone")).to_contain_text("Ada")
            say(other, "Bob", "hi Ada")
            expect(messages(page, "hi Ada")).to_contain_text("Bob")

            # Ada opens a room of her own; Bob joins it later and gets its history.
            page.get_by_placeholder("room name").fill("trio")
            page.get_by_role("button", name="Join").click()
            expect(page.locator("#room-title")).to_have_text("#trio")
            expect(page.locator("#messages li")).to_have_count(0)
            say(page, "Ada", "only in this room")
            expect(messages(page, "only in this room")).to_have_count(1)
            expect(messages(other, "only in this room")).to_have_count(0)
            other.get_by_placeholder("room name").fill("trio")
            other.get_by_role("button", name="Join").click()
            expect(messages(other, "only in this room")).to_contain_text("Ada")
            screenshot(other, tmp_path / "chat-bob.png")

            # Back to #general: its whole history again, and nothing from #trio.
            page.get_by_role("button", name="#general").click()
            expect(page.locator("#room-title")).to_have_text("#general")
            for text in ("said before anyone came", "hello everyone", "hi Ada"):
                expect(messages(page, text)).to_have_count(1)
            expect(messages(page, "only in this room")).to_have_count(0)
            screenshot(page, tmp_path / "chat-ada.png")
            console.check()

        await in_browser(chromium, session, time_limit=60)
    check_screenshots(tmp_path / "chat-ada.png", tmp_path / "chat-bob.png")


# -- dashboard ----------------------------------------------------------------------


async def test_dashboard_shows_coalesced_snapshots_and_a_spike_as_one(tmp_path: Path) -> None:
    chromium = require_browser()
    async with example("dashboard", "--seed", "7") as url:

        def session(page: Page, console: Console) -> None:
            from playwright.sync_api import expect

            page.goto(url + "/")
            expect(page).to_have_title("tidings dashboard")
            expect(page.locator("#transport")).to_have_text("ws")
            # The producer's bursts arrive as snapshots of every metric.
            expect(page.locator("#totals")).to_have_text(
                re.compile(r"\d+ readings in \d+ snapshots")
            )
            for label in ("CPU", "Requests", "p99 latency", "Queue depth"):
                expect(page.get_by_label(label, exact=True)).to_have_text(re.compile(r"[\d,.]+"))
            page.get_by_role("button", name="Spike: 100 readings at once").click()
            # A hundred readings within a window: one snapshot merging them all.
            spike = page.locator("#log li").filter(
                has_text=re.compile(r"^([1-9]\d{2,}) readings merged")
            )
            expect(spike).to_have_count(1)
            expect(page.get_by_role("button", name="Spike: 100 readings at once")).to_be_enabled()
            screenshot(page, tmp_path / "dashboard.png")
            console.check()

        await in_browser(chromium, session, time_limit=60)
        # The topic keeps the latest snapshot only: the whole state, for pages to come.
        status, body = await http("GET", f"{url}/topics/metrics/poll?cursor=earliest")
    assert status == 200
    [latest] = json.loads(body)["events"]
    snapshot = json.loads(latest["data"])
    assert set(snapshot["values"]) == {"cpu", "requests", "latency", "queue"}
    assert latest["event"] == "snapshot"
    check_screenshots(tmp_path / "dashboard.png")


# -- board --------------------------------------------------------------------------


async def test_board_edits_made_offline_are_sent_on_reconnect_and_stored_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    chromium = require_browser()
    async with example("board") as url:
        port = int(url.rsplit(":", 1)[1])
        gateway = await Gateway(port).start(nursery)  # Ada's way to the server

        def run(action: Callable[[], object]) -> None:
            trio.from_thread.run_sync(action)

        def wait(event: trio.Event) -> None:
            wait_for: Callable[[], Awaitable[None]] = event.wait
            trio.from_thread.run(wait_for)

        def session(page: Page, console: Console) -> None:
            from playwright.sync_api import expect

            ada = page
            ada.goto(gateway.url + "/")
            expect(ada).to_have_title("tidings board")
            expect(ada.locator("#transport")).to_have_text("ws")
            bob = another_page(ada, console)
            bob.goto(url + "/")
            expect(bob.locator("#transport")).to_have_text("ws")

            ada.get_by_label("New note").fill("buy milk")
            ada.get_by_role("button", name="Pin").click()
            expect(bob.get_by_label("Note text")).to_have_value("buy milk")
            expect(ada.locator("#pending")).to_have_text("all edits saved")

            # Ada's connection goes (and new ones wait): she edits meanwhile.
            run(gateway.hold)
            run(gateway.cut)
            expect(ada.locator("#state")).to_have_text("offline: edits wait here")
            ada.get_by_label("Note text").fill("buy oat milk")
            ada.get_by_label("New note").focus()  # leaving the note is the edit
            expect(ada.locator("#pending")).to_have_text("1 edit waiting to be sent")
            expect(bob.get_by_label("Note text")).to_have_value("buy milk")
            screenshot(ada, tmp_path / "board-offline.png")

            # Back online: the edit is sent, and Bob sees it once.
            run(gateway.release)
            expect(ada.locator("#pending")).to_have_text("all edits saved")
            expect(ada.locator("#state")).to_have_text("online")
            expect(bob.get_by_label("Note text")).to_have_value("buy oat milk")
            expect(bob.locator("#activity li", has_text="buy oat milk")).to_have_count(1)

            # The worst moment: the edit is stored, the acknowledgement lost in a cut.
            cut = trio.from_thread.run_sync(gateway.cut_at_next_publish_answer)
            ada.get_by_label("Note text").fill("buy oat milk and bread")
            ada.get_by_label("New note").focus()
            wait(cut)
            expect(ada.locator("#pending")).to_have_text("1 edit waiting to be sent")
            run(gateway.release)
            expect(ada.locator("#pending")).to_have_text("all edits saved")
            expect(bob.get_by_label("Note text")).to_have_value("buy oat milk and bread")
            expect(bob.locator("#activity li", has_text="and bread")).to_have_count(1)
            expect(ada.locator("#activity li", has_text="and bread")).to_have_count(1)
            screenshot(bob, tmp_path / "board-bob.png")
            console.check()

        await in_browser(chromium, session, time_limit=60)
        status, body = await http("GET", f"{url}/topics/board/poll?cursor=earliest")
    assert status == 200
    texts = [json.loads(event["data"])["text"] for event in json.loads(body)["events"]]
    assert texts == ["buy milk", "buy oat milk", "buy oat milk and bread"]  # each once
    assert gateway.cuts == 2
    check_screenshots(tmp_path / "board-offline.png", tmp_path / "board-bob.png")


# -- chat on two processes sharing Redis ---------------------------------------------


@pytest.mark.redis
async def test_chat_on_two_processes_sharing_redis(tmp_path: Path) -> None:
    from ..redis._redis import RedisServer
    from ..trio._tools import missing

    chromium = require_browser()
    try:
        import coredis  # noqa: F401
    except ImportError:
        missing("coredis is not installed (pip install -e '.[redis]')")
    redis = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    await trio.to_thread.run_sync(redis.start)
    try:
        async with (
            example("chat", "--redis", redis.url) as first,
            example("chat", "--redis", redis.url) as second,
        ):
            assert first != second

            def session(page: Page, console: Console) -> None:
                from playwright.sync_api import expect

                page.goto(first + "/?room=ops")
                other = another_page(page, console)
                other.goto(second + "/?room=ops")
                for each in (page, other):
                    expect(each.locator("#transport")).to_have_text("ws")
                    expect(each.locator("#room-title")).to_have_text("#ops")
                say(page, "Ada", "from the first process")
                expect(messages(other, "from the first process")).to_contain_text("Ada")
                say(other, "Bob", "from the second process")
                expect(messages(page, "from the second process")).to_contain_text("Bob")
                for each in (page, other):
                    expect(each.locator("#messages li")).to_have_count(2)
                # A third page, on the first process, gets the history of both.
                third = another_page(page, console)
                third.goto(first + "/?room=ops")
                expect(third.locator("#messages li")).to_have_text(
                    [re.compile("from the first process"), re.compile("from the second process")]
                )
                screenshot(other, tmp_path / "chat-redis.png")
                console.check()

            await in_browser(chromium, session, time_limit=60)
    finally:
        await trio.to_thread.run_sync(redis.kill)
    check_screenshots(tmp_path / "chat-redis.png")
