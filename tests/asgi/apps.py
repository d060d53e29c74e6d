"""ASGI applications the tests serve with hypercorn (``apps:<factory>()``)."""

from __future__ import annotations

import os
import random

from quart_trio import QuartTrio

from tidings.asgi import TidingsASGI, create_app, mount
from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub, ServerConfig, publish_token
from tidings.trio.history import LocalHistory


def _hub() -> Hub:
    return Hub(LocalHistory(MemoryHistory(new_epoch(random.SystemRandom()), max_events=1000)))


def plain() -> TidingsASGI:
    """The tidings endpoints alone."""
    return create_app(_hub(), config=ServerConfig(sse_retry=100))


def guarded() -> TidingsASGI:
    """Publishing needs the token in $TIDINGS_TEST_TOKEN."""
    token = os.environ["TIDINGS_TEST_TOKEN"]
    return create_app(_hub(), config=ServerConfig(auth=publish_token(token)))


def quart():  # type: ignore[no-untyped-def]
    """A Quart-Trio application with its own page, and tidings under /rt."""
    page = QuartTrio(__name__)

    @page.route("/")
    async def index() -> str:
        return "<h1>the chat page</h1>"

    return mount("/rt", create_app(_hub()), page)
