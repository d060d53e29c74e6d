"""A live dashboard: a server-side producer's bursts, coalesced, pushed to pages.

    python examples/dashboard/server.py --port 8002    # then open http://127.0.0.1:8002/

A stand-in for real instruments produces bursts of metric readings (a few to a few
dozen within milliseconds, every second or so); "Spike" on the page asks for a burst
of 100.  Readings go through a memory channel to :func:`coalesce.publish_coalesced`,
which publishes at most one snapshot per 500 ms to the topic ``metrics``.  The topic
keeps only its latest snapshot, so a page that opens (or comes back) asks for
``cursor: "earliest"`` and gets the current state at once, then every new one.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import trio
from coalesce import publish_coalesced

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import (
    App,
    Handler,
    Hub,
    Request,
    Responder,
    Server,
    default_router,
    serve,
    static,
)

PAGE = Path(__file__).with_name("index.html")
TOPIC = "metrics"
#: Each metric's range: a reading moves by a random step within it.
METRICS = {
    "cpu": (0.0, 100.0),
    "requests": (0.0, 2000.0),
    "latency": (1.0, 400.0),
    "queue": (0.0, 50.0),
}
SPIKE = 100  # readings in the burst the page's "Spike" button asks for

Updates = trio.MemorySendChannel[tuple[str, float]]


async def instruments(updates: Updates, rng: random.Random) -> None:
    """Bursts of readings now and then, as real instruments would send them."""
    values = {name: (low + high) / 4 for name, (low, high) in METRICS.items()}
    async with updates:
        while True:
            await trio.sleep(rng.uniform(0.2, 1.5))
            for _ in range(rng.randint(3, 40)):
                name = rng.choice(list(METRICS))
                low, high = METRICS[name]
                values[name] = min(high, max(low, values[name] + rng.gauss(0, (high - low) / 20)))
                await updates.send((name, round(values[name], 1)))
                await trio.sleep(rng.uniform(0, 0.005))


def spike(updates: Updates) -> Handler:
    """``POST /spike``: a burst of :data:`SPIKE` request-rate readings at once."""

    async def handler(app: App, request: Request, responder: Responder) -> None:
        for step in range(1, SPIKE + 1):
            await updates.send(("requests", 1000.0 + step * 1000.0 / SPIKE))
        body = json.dumps({"readings": SPIKE}).encode()
        await responder.respond(202, app.headers((b"content-type", b"application/json")), body)

    return handler


async def main(host: str, port: int, seed: int | None) -> None:
    # One snapshot per topic is all a dashboard needs: the latest is the whole state.
    hub = Hub(MemoryHistory(new_epoch(random.SystemRandom()), max_events=1))
    send, receive = trio.open_memory_channel[tuple[str, float]](1000)
    router = default_router()
    router.add("/", {"GET": static(PAGE.read_text(encoding="utf-8"))}, push=["/tidings.js"])
    router.add("/spike", {"POST": spike(send.clone())})
    async with trio.open_nursery() as nursery:

        async def run_server(task_status: trio.TaskStatus[Server]) -> None:
            await serve(
                hub, port, host=host, router=router, handle_signals=True, task_status=task_status
            )
            nursery.cancel_scope.cancel()  # drained (Ctrl-C): stop the producer too

        server: Server = await nursery.start(run_server)
        print(f"{server.url}/", flush=True)
        nursery.start_soon(publish_coalesced, hub, TOPIC, receive)
        nursery.start_soon(instruments, send, random.Random(seed))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--seed", type=int, help="make the instruments' readings repeatable")
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.seed)
