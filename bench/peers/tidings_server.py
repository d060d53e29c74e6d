"""The tidings server for bench/bench_sse_server.py, with event producers.

    python bench/peers/tidings_server.py --events 100000

Serves on 127.0.0.1 (a free port, printed as ``PORT <n>`` once listening) with the
default :class:`~tidings.trio.ServerConfig` and an in-memory history large enough
for ``--events`` events per topic.  Producers, for (a):

- topic ``replay`` is filled with ``--events`` events before listening; a client
  asking for ``last-event-id=earliest`` reads them as a replay of the history;
- a topic named ``live-await-<anything>`` gets ``--events`` events published with
  ``await hub.publish(...)`` in a tight loop, starting as soon as it has a subscriber;
- a topic named ``live-burst-<anything>`` gets them with ``hub.publish_nowait`` in
  bursts of 64, the producer yielding (a Trio checkpoint) after each burst.

Live producers pause (yielding) while a subscriber of their topic has more than
half of its buffer (``subscriber_max_events``) pending -- checked before each
burst, or every 64 ``await hub.publish`` -- so that they go as fast as the client
reads and nobody is cut off; they look at nothing else.  Event
data is ``bench_payload(i)``, the same text the sse-starlette peer sends.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import random
import resource
import sys

import trio

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub
from tidings.trio.server import Server, ServerConfig


def bench_payload(i: int) -> str:
    return f'{{"seq": {i}, "user": "alice", "text": "hello world", "ok": true}}'


async def _produce(server: Server, topic: str, count: int, burst: bool) -> None:
    hub = server.hub
    limit = server.config.subscriber_max_events // 2

    def lagging() -> bool:
        return any(s.topic == topic and s.pending > limit for s in server.app.subscriptions)

    # Pausing polls (yields until the consumer caught up): the hub has no "wait
    # until subscribers drained" signal, and a bench must not add one.
    if burst:
        for start in range(0, count, 64):
            while lagging():
                await trio.lowlevel.checkpoint()
            for i in range(start, min(start + 64, count)):
                hub.publish_nowait(topic, bench_payload(i))
            await trio.lowlevel.checkpoint()
    else:
        for i in range(count):
            if not i % 64:
                while lagging():
                    await trio.lowlevel.checkpoint()
            await hub.publish(topic, bench_payload(i))


async def _producers(server: Server, count: int) -> None:
    # Bench scaffolding only: notice new live topics by looking every millisecond.
    seen: set[str] = set()
    async with trio.open_nursery() as nursery:
        while True:
            for topic in server.hub.topics_with_subscribers():
                if topic.startswith("live-") and topic not in seen:
                    seen.add(topic)
                    burst = topic.startswith("live-burst-")
                    nursery.start_soon(_produce, server, topic, count, burst)
            await trio.sleep(0.001)


async def main(count: int, seconds: float = math.inf) -> None:
    history = MemoryHistory(
        new_epoch(random.SystemRandom()),
        max_events=max(count, 1000),
        max_bytes=1 << 30,
    )
    for i in range(count):
        history.append("replay", bench_payload(i))
    hub = Hub(history)
    server = Server(hub, ServerConfig())
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, listeners)
        print("PORT", server.port, flush=True)
        with trio.move_on_after(seconds):
            await _producers(server, count)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the run into FILE")
    parser.add_argument("--seconds", type=float, default=math.inf, help="stop after this")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        if args.profile:
            cProfile.run("trio.run(main, args.events, args.seconds)", args.profile)
        else:
            trio.run(main, args.events, args.seconds)
    except KeyboardInterrupt:
        sys.exit(0)
