"""Headless Chromium through Playwright's sync API, driven from Trio tests.

Playwright's sync API runs its own event loop and must stay on one thread, while the
server under test runs on Trio's: each browser session is one function that runs in
a worker thread (:func:`in_browser`), and calls back into Trio with
:func:`trio.from_thread.run` for what the server side does meanwhile (publish, cut
connections, wait for the server to notice something).

Only the system Chromium is used (``executable_path``); Playwright never downloads a
browser here.  Without Chromium or the ``playwright`` package the test is skipped,
except under ``CI=true``, where it fails (:func:`~_tools.missing`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import trio

from ._tools import missing, require_program

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

T = TypeVar("T")

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_browser() -> str:
    """The system Chromium, with Playwright importable; skip (or fail on CI) otherwise."""
    chromium = require_program(
        "chromium", "chromium-browser", reason="chromium is not installed (Debian 'chromium')"
    )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    return chromium


@dataclass
class Console:
    """What the page reported as errors: console errors and uncaught exceptions.

    Chromium itself logs network failures to the console as errors (a refused
    WebSocket handshake, a fetch cut short).  A test that provokes them on purpose
    names them in *expected* (regular expressions matched against the whole text);
    everything else, and every uncaught exception, fails the test.
    """

    errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.exceptions.append(str(error)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def check(self, *expected: str) -> None:
        patterns = [re.compile(p) for p in expected]
        unexpected = []
        for text in self.errors:
            if any(p.fullmatch(text) for p in patterns):
                self.tolerated.append(text)
            else:
                unexpected.append(text)
        assert not self.exceptions, self.exceptions
        assert not unexpected, unexpected


async def in_browser(
    chromium: str, session: Callable[[Page, Console], T], *, time_limit: float = 90.0
) -> T:
    """Run *session(page, console)* in a worker thread with a fresh headless Chromium.

    Playwright's own waits time out (after half of *time_limit*) before Trio's bound
    does, so that a failure says what the page was waiting for.
    """
    from playwright.sync_api import sync_playwright

    def run() -> T:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page()
                page.set_default_timeout(time_limit * 500)
                console = Console()
                console.watch(page)
                return session(page, console)
            finally:
                browser.close()

    with trio.fail_after(time_limit):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
