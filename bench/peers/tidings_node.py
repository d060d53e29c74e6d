"""One tidings server node for bench/bench_redis.py: in memory, or on Redis.

    python bench/peers/tidings_node.py                                  # in memory
    python bench/peers/tidings_node.py --redis redis://127.0.0.1:6379/0

Serves on 127.0.0.1 (a free port, printed as ``PORT <n>`` once listening) what
``python -m tidings serve [--redis URL]`` serves: a :class:`~tidings.trio.Hub` with
the default :class:`~tidings.trio.ServerConfig`, on a
:class:`~tidings.history.MemoryHistory` of 1000 events per topic, or on
:func:`~tidings.redis.open_redis_history` with its defaults (1000 events per
topic, no expiry).  Unlike ``serve`` it picks a free port and can profile itself;
SIGTERM stops it cleanly (and writes the profile).

On SIGUSR1 it prints ``STATS {...}``: the open event streams (``subscriptions``),
how many of them still wait for their first history answer (``starting``) or for
a history read (``reading``), how many
history reads of a subscription failed so far (``failed_reads``: the hub retries
them and logs each at DEBUG, counted here instead of printed) and how many warnings
``tidings.redis`` logged.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import random
import resource
import signal
import sys
from collections.abc import AsyncIterator

import trio

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub
from tidings.trio.history import History
from tidings.trio.server import Server, ServerConfig


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts = {"failed_reads": 0, "redis_warnings": 0}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "tidings.hub" and str(record.msg).startswith("history read for"):
            self.counts["failed_reads"] += 1
        elif record.name == "tidings.redis" and record.levelno >= logging.WARNING:
            self.counts["redis_warnings"] += 1


COUNTER = _Counter()


@contextlib.asynccontextmanager
async def _history(redis: str | None, prefix: str) -> AsyncIterator[History | MemoryHistory]:
    if redis is None:
        yield MemoryHistory(new_epoch(random.SystemRandom()), max_events=1000)
        return
    from tidings.redis import open_redis_history

    async with open_redis_history(redis, prefix=prefix) as history:
        yield history


async def main(redis: str | None, prefix: str) -> None:
    for name in ("tidings.hub", "tidings.redis"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if name == "tidings.hub" else logging.WARNING)
        logger.addHandler(COUNTER)
        logger.propagate = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with _history(redis, prefix) as history:
            server = Server(Hub(history), ServerConfig())
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_listeners, listeners)
                print("PORT", server.port, flush=True)
                async for signum in signals:
                    if signum != signal.SIGUSR1:
                        break
                    subscriptions = server.app.subscriptions
                    stats = dict(
                        COUNTER.counts,
                        subscriptions=len(subscriptions),
                        starting=sum(1 for sub in subscriptions if sub.last is None),
                        reading=sum(1 for sub in subscriptions if sub.needs_read),
                    )
                    print("STATS", json.dumps(stats), flush=True)
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", metavar="URL", help="keep topics in this Redis")
    parser.add_argument("--prefix", default="tidings:", help="key prefix in Redis")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the run into FILE")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.profile:
        cProfile.run("trio.run(main, args.redis, args.prefix)", args.profile)
    else:
        trio.run(main, args.redis, args.prefix)
    sys.exit(0)
