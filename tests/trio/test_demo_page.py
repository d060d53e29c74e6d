"""The demo page of ``python -m tidings serve``, used as a person would, in Chromium.

The reference server runs as a real process; the test types and clicks in the page
(Playwright), publishes from outside as another client would, and checks what the
page shows.  A screenshot of the page at the end is kept in the test's temporary
directory (``demo.png``).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from ._cli import Lines, start_cli
from ._playwright import Console, in_browser, require_browser
from .conftest import HTTP1

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def post(port: int, topic: str, data: str) -> str:
    """Publish *data* to *topic* over HTTP, as any other client; returns the id."""
    with trio.fail_after(10):
        client = HTTP1(await trio.open_tcp_stream("127.0.0.1", port))
        try:
            status, _, body = await client.request(
                "POST",
                f"/topics/{topic}",
                [("content-type", "text/plain; charset=utf-8")],
                data.encode(),
            )
        finally:
            await trio.aclose_forcefully(client.stream)
    assert status == 201, body
    event_id: str = json.loads(body)["id"]
    return event_id


async def test_a_person_subscribes_publishes_drops_the_connection_and_switches_transport(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    chromium = require_browser()
    process = await start_cli(nursery, "serve", "--host", "127.0.0.1", "--port", "0")
    assert process.stdout is not None
    with trio.fail_after(30):
        url = (await Lines(process.stdout).next()).strip()
    port = int(url.rsplit(":", 1)[1])
    kept = await post(port, "lobby", "kept from before")

    def publish(data: str) -> str:
        return trio.from_thread.run(post, port, "lobby", data)

    def session(page: Page, console: Console) -> dict[str, str]:
        from playwright.sync_api import expect

        page.goto(url + "/")
        expect(page).to_have_title("tidings demo")
        transport = page.locator("#transport")
        log = page.locator("#log")
        expect(transport).to_have_text("none")

        # Follow "lobby", with what the server kept.
        topic = page.get_by_label("Topic", exact=True).first
        topic.clear()
        topic.press_sequentially("lobby")
        expect(page.get_by_label("replay what the server kept")).to_be_checked()
        page.get_by_role("button", name="Subscribe").click()
        expect(page.locator("#topics")).to_contain_text("lobby")
        expect(transport).to_have_text("ws")
        expect(log.locator("li", has_text="kept from before")).to_contain_text(kept)

        # Publish from the page.
        page.locator("#publish-topic").fill("lobby")
        page.get_by_label("Event type (optional)").press_sequentially("greeting")
        page.get_by_label("Data").press_sequentially("hello, I am a person ✓")
        page.get_by_role("button", name="Publish").click()
        expect(page.locator("#published")).to_have_text(re.compile(r"stored in lobby as \S+"))
        published = page.locator("#published").inner_text().rsplit(" ", 1)[1]
        mine = log.locator("li", has_text="hello, I am a person ✓")
        expect(mine).to_contain_text("lobby · greeting")
        expect(mine).to_contain_text(published)
        expect(page.get_by_label("Data")).to_have_value("")

        # Another client publishes: it shows up.
        other = publish("from another client")
        expect(log.locator("li", has_text="from another client")).to_contain_text(other)

        # Drop the connection: the page says so, reconnects and goes on.
        page.get_by_role("button", name="Drop connection").click()
        expect(log.locator("li", has_text="connection lost: resuming")).to_have_count(1)
        expect(log.locator("li", has_text="connected over ws")).to_have_count(2)
        expect(transport).to_have_text("ws")
        after_drop = publish("after the drop")
        expect(log.locator("li", has_text="after the drop")).to_contain_text(after_drop)

        # Long polling only: a new client takes over from the topic's cursor.
        page.get_by_label("transports to try").select_option(label="long poll only")
        expect(transport).to_have_text("poll")
        polled = publish("over long polling")
        expect(log.locator("li", has_text="over long polling")).to_contain_text(polled)
        expect(page.locator("#topics")).to_contain_text(polled)  # the topic's cursor

        # Nothing was shown twice.
        for text in (
            "kept from before",
            "hello, I am a person ✓",
            "from another client",
            "after the drop",
            "over long polling",
        ):
            expect(log.locator("li", has_text=text)).to_have_count(1)

        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

        # Unsubscribe: the topic leaves the list.
        page.get_by_role("button", name="unsubscribe from lobby").click()
        expect(page.locator("#topics li")).to_have_count(0)
        expect(log.locator("li", has_text="unsubscribed from lobby")).to_have_count(1)
        console.check()
        return {"published": published}

    result = await in_browser(chromium, session)
    assert result["published"].startswith(kept.rsplit(".", 1)[0])  # same epoch
    screenshot = (tmp_path / "demo.png").read_bytes()
    assert screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(screenshot) > 10_000
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await process.wait() == 0
