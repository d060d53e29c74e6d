"""A live dashboard: a server-side producer's bursts, coalesced, pushed to pages.

    python examples/dashboard/server.py --port 8002    # then open http://127.0.0.1:8002/

A stand-in for real instruments produces bursts of metric readings (a few to a few
dozen within milliseconds, every second or so); "Spike" on the page asks it for a
burst of 100.  Readings go through a memory channel to :func:`coalesce.publish_coalesced`,
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
Spikes = trio.MemoryReceiveChannel[None]


async def instruments(updates: Updates, spikes: Spikes, rng: random.Random) -> None:
    """Bursts of readings now and then, as real instruments would send them; a spike
    (asked for on *spikes*) is :data:`SPIKE` request-rate readings at once, climbing."""
    values = {name: (low + high) / 4 for name, (low, high) in METRICS.items()}

    async def read(name: str, change: float) -> None:
        low, high = METRICS[name]
        values[name] = round(min(high, max(low, values[name] + change)), 1)
        await updates.send((name, values[name]))

    async with updates, spikes:
        while True:
            asked = False
            with trio.move_on_after(rng.uniform(0.2, 1.5)):
                await spikes.receive()
                asked = True
            if asked:
                for _ in range(SPIKE):
                    await read("requests", 10.0)
                continue
            for _ in range(rng.randint(3, 40)):
                name = rng.choice(list(METRICS))
                low, high = METRICS[name]
                # A random step, pulled back towards a quarter of the range.
                pull = ((low + high) / 4 - values[name]) / 10
                await read(name, rng.gauss(pull, (high - low) / 40))
                await trio.sleep(rng.uniform(0, 0.005))


def spike(spikes: trio.MemorySendChannel[None]) -> Handler:
    """``POST /spike``: ask the instruments for a burst of :data:`SPIKE` readings."""

    async def handler(app: App, request: Request, responder: Responder) -> None:
        await spikes.send(None)
        body = json.dumps({"readings": SPIKE}).encode()
        await responder.respond(202, app.headers((b"content-type", b"application/json")), body)

    return handler


async def main(host: str, port: int, seed: int | None) -> None:
    # One snapshot per topic is all a dashboard needs: the latest is the whole state.
    hub = Hub(MemoryHistory(new_epoch(random.SystemRandom()), max_events=1))
    readings, to_publish = trio.open_memory_channel[tuple[str, float]](1000)
    ask_spike, spikes = trio.open_memory_channel[None](0)
    router = default_router()
    router.add("/", {"GET": static(PAGE.read_text(encoding="utf-8"))}, push=["/tidings.js"])
    router.add("/spike", {"POST": spike(ask_spike)})
    async with trio.open_nursery() as nursery:

        async def run_server(task_status: trio.TaskStatus[Server]) -> None:
            await serve(
                hub, port, host=host, router=router, handle_signals=True, task_status=task_status
            )
            nursery.cancel_scope.cancel()  # drained (Ctrl-C): stop the producer too

        server: Server = await nursery.start(run_server)
        print(f"{server.url}/", flush=True)
        nursery.start_soon(publish_coalesced, hub, TOPIC, to_publish)
        nursery.start_soon(instruments, readings, spikes, random.Random(seed))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--seed", type=int, help="make the instruments' readings repeatable")
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.seed)
