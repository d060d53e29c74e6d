"""A collaborative board of sticky notes: edits go over WebSocket, exactly once.

    python examples/board/server.py --port 8003        # then open http://127.0.0.1:8003/

Every page follows the topic ``board`` from ``cursor: "earliest"`` and folds its
events into the board: ``note`` (JSON ``{"id", "text"}``: pin or edit a note) and
``remove`` (``{"id"}``).  Edits are published with tidings.js over the WebSocket
session; one made while the connection is down waits in the client's outbox and is
resent, under the same key, when it comes back, so the server stores it once even
when the first attempt did arrive but its acknowledgement did not.
"""

from __future__ import annotations

import argparse
import random
from functools import partial
from pathlib import Path

import trio

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub, Server, default_router, serve, static

PAGE = Path(__file__).with_name("index.html")
HISTORY = 10_000  # board events kept: a page that opens replays them all


async def main(host: str, port: int) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.SystemRandom()), max_events=HISTORY))
    router = default_router()
    router.add("/", {"GET": static(PAGE.read_text(encoding="utf-8"))}, push=["/tidings.js"])
    async with trio.open_nursery() as nursery:
        # Ctrl-C drains the server (sessions end cleanly) and serve() returns.
        serving = partial(serve, hub, port, host=host, router=router, handle_signals=True)
        server: Server = await nursery.start(serving)
        print(f"{server.url}/", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
