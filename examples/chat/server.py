"""A chat with rooms: each room is a topic, and joining one shows what was said.

    python examples/chat/server.py --port 8001         # then open http://127.0.0.1:8001/

Scale out: two processes sharing Redis serve the same rooms (see examples/README.md)::

    python examples/chat/server.py --port 8001 --redis redis://127.0.0.1:6379/0
    python examples/chat/server.py --port 8011 --redis redis://127.0.0.1:6379/0

The page publishes each message (JSON ``{"name", "text"}``, event type ``message``) to
the topic ``room.<name>`` with tidings.js, which stores it exactly once; joining a room
subscribes with ``cursor: "earliest"``, so the last :data:`HISTORY` messages come
first, then what is said live.  Everything else is the tidings server as it is.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import History, Hub, Server, default_router, serve, static

PAGE = Path(__file__).with_name("index.html")
HISTORY = 200  # messages each room keeps for those who join later


@asynccontextmanager
async def open_history(redis: str | None) -> AsyncIterator[History | MemoryHistory]:
    """The rooms' history: in this process, or in Redis shared by every process."""
    if redis is None:
        yield MemoryHistory(new_epoch(random.SystemRandom()), max_events=HISTORY)
        return
    from tidings.redis import open_redis_history  # pip install 'tidings[redis]'

    async with open_redis_history(redis, max_events=HISTORY) as history:
        yield history


async def main(host: str, port: int, redis: str | None) -> None:
    router = default_router()
    router.add("/", {"GET": static(PAGE.read_text(encoding="utf-8"))}, push=["/tidings.js"])
    async with open_history(redis) as history, trio.open_nursery() as nursery:
        # Ctrl-C drains the server (streams end cleanly) and serve() returns.
        serving = partial(serve, Hub(history), port, host=host, router=router, handle_signals=True)
        server: Server = await nursery.start(serving)
        print(f"{server.url}/", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis", metavar="URL", help="share the rooms with other processes")
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.redis)
