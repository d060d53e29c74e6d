"""Reconnect storms: a crowd of clients loses its server at once, and comes back.

For each transport (``--transport``: ``sse``, ``poll``, ``ws``; all three by
default):

1. start ``python -m tidings serve`` in a subprocess and publish one event on topic
   ``storm``;
2. open ``--clients`` (1 000) clients of that transport -- the library's own openers
   with their default pacing -- spread over ``--processes`` (4) worker processes,
   each client following ``storm`` from the earliest event, so that it has a cursor
   to resume from;
3. once every client has the event, wait ``--settle`` seconds (8: past the 5 s
   stable period, as for clients that have been following for a while);
4. SIGKILL the server and start a new one on the same port at once -- a real
   restart: a new process with a new, empty history, which gets one event as soon
   as it listens;
5. record when each client arrives at the new server: when its first TCP
   connection after the kill is established (recorded around
   ``trio.open_tcp_stream``, which all three clients use), on the system-wide
   monotonic clock.  That is what the server sees.

Why several processes: clients are independent machines in real life.  In one
Python process, 1 000 WebSocket sessions make the event loop stall -- garbage
collections that scan every session take up to 0.4 s, and the CPU is shared -- and
connections that completed during a stall are all recorded at its end, which
bunches them artificially.  ``--processes 1`` shows that effect.

Printed per transport: the downtime (kill to listening again), the number of
arrivals in each 100 ms after the restart, the peak 100 ms bucket (count and share
of the clients; the goal is at most 5 %), and the time until all were back, from
the restart and from the kill.

    python bench/bench_storm.py                                 # ~3 minutes
    python bench/bench_storm.py --transport ws --clients 400    # quick

``--src DIR`` runs another source tree's server and clients (the workers use only
the openers' common arguments), to compare with an older version::

    git archive <commit> src | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before/src python bench/bench_storm.py --src /tmp/before/src

(A worker is this script run with ``--worker``; it talks to the coordinator over
its standard input and output.)
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import trio

from tidings.trio import open_event_stream, open_long_poll, open_session
from tidings.trio.client._http import open_request

TOPIC = "storm"
BUCKET = 0.1
#: The source tree the server and the workers run (``--src``; this checkout by default).
SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


# -- the worker: some of the clients ---------------------------------------------------------

_client: contextvars.ContextVar[int] = contextvars.ContextVar("client", default=-1)


class _Arrivals:
    """Wraps ``trio.open_tcp_stream``: when each client's first connection after the
    kill was established (the tasks of a client inherit its context variable)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.armed = False
        self.open = trio.open_tcp_stream

    async def open_tcp_stream(self, *args: object, **kwargs: object) -> trio.SocketStream:
        stream = await self.open(*args, **kwargs)  # type: ignore[arg-type]
        index = _client.get()
        if self.armed and index >= 0:
            self.times.setdefault(index, time.monotonic())
        return stream


async def _follow(transport: str, index: int, base: str, ready: list[int]) -> None:
    """One client: follow TOPIC from the earliest event, for ever."""
    _client.set(index)
    if transport == "sse":
        url = f"{base}/topics/{TOPIC}/events?c={index}"
        opener = open_event_stream(url, last_event_id="earliest")
    elif transport == "poll":
        opener = open_long_poll(f"{base}/topics/{TOPIC}/poll?c={index}", cursor="earliest")
    else:
        ws = base.replace("http://", "ws://")
        opener = open_session(f"{ws}/ws?c={index}", {TOPIC: "earliest"})
    async with opener as stream:  # type: ignore[attr-defined]
        first = True
        async for _ in stream:  # type: ignore[attr-defined]
            if first:
                ready[0] += 1
                first = False


async def _worker(transport: str, base: str, indices: list[int]) -> None:
    arrivals = _Arrivals()
    trio.open_tcp_stream = arrivals.open_tcp_stream  # type: ignore[assignment]
    ready = [0]
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        for n, index in enumerate(indices):
            nursery.start_soon(_follow, transport, index, base, ready)
            if n % 25 == 24:
                await trio.sleep(0.05)  # do not make a storm of the start
        while ready[0] < len(indices):  # noqa: ASYNC110 (a bench may poll)
            await trio.sleep(0.05)
        print("ready", flush=True)
        assert (await stdin.receive_some()).strip() == b"arm"
        arrivals.armed = True
        print("armed", flush=True)
        with trio.move_on_after(120):
            while len(arrivals.times) < len(indices):  # noqa: ASYNC110
                await trio.sleep(0.1)
        print(json.dumps(sorted(arrivals.times.values())), flush=True)
        nursery.cancel_scope.cancel()


# -- the coordinator: the server, the kill, the histogram ------------------------------------


class Server:
    """``python -m tidings serve`` in a subprocess."""

    def __init__(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "-q", "serve", "--port", str(port)],
            stdout=subprocess.PIPE,
            env=_env(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        #: When it was listening (it prints its URL once it does).
        self.listening = time.monotonic()
        if not line.startswith("http://"):
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def _publish(url: str, data: str) -> None:
    async def post() -> None:
        async with open_request("POST", f"{url}/topics/{TOPIC}", body=data.encode()) as response:
            await response.read()
            assert response.status == 201, response.status

    trio.run(post)


def _line(worker: subprocess.Popen[bytes]) -> bytes:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise SystemExit("a worker died")
    return line.strip()


def storm(transport: str, clients: int, processes: int, settle: float) -> dict[str, float]:
    server = Server()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        _publish(server.url, "before")
        for p in range(processes):
            indices = ",".join(str(i) for i in range(p, clients, processes))
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", transport, server.url, indices],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=_env(),
                )
            )
        for worker in workers:
            assert _line(worker) == b"ready"
        time.sleep(settle)
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"arm\n")
            worker.stdin.flush()
        for worker in workers:
            assert _line(worker) == b"armed"
        t_kill = time.monotonic()
        server.kill()
        server = Server(server.port)
        t_up = server.listening
        _publish(server.url, "after")
        times = sorted(t for worker in workers for t in json.loads(_line(worker)))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        server.stop()
    since_up = [t - t_up for t in times]
    buckets = Counter(math.floor(t / BUCKET) for t in since_up)
    peak_bucket, peak = max(buckets.items(), key=lambda kv: kv[1])
    print(
        f"\n== {transport}: {clients} clients in {processes} processes, server killed and restarted"
    )
    print(f"downtime (kill to listening again): {t_up - t_kill:.2f} s")
    print(f"back: {len(times)} of {clients} (first TCP connection to the new server)")
    print(
        f"peak 100 ms bucket: {peak} clients ({100 * peak / clients:.1f} %), "
        f"at {peak_bucket * BUCKET:+.1f} s"
    )
    print(
        f"all back: {since_up[-1]:.1f} s after the restart ({times[-1] - t_kill:.1f} s after "
        f"the kill); p50 {statistics.median(since_up):.1f} s, "
        f"p90 {since_up[int(0.9 * (len(since_up) - 1))]:.1f} s"
    )
    width = 50 / max(buckets.values())
    print("arrivals per 100 ms after the restart (empty buckets skipped):")
    for bucket in sorted(buckets):
        count = buckets[bucket]
        print(f"  {bucket * BUCKET:+5.1f} s {count:4d} {'#' * max(1, round(count * width))}")
    return {
        "downtime": t_up - t_kill,
        "peak": peak,
        "peak_share": peak / clients,
        "all_back": since_up[-1],
        "back": len(times),
    }


def main() -> None:
    global SRC
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _, _, transport, base, indices = sys.argv
        trio.run(_worker, transport, base, [int(i) for i in indices.split(",")])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["sse", "poll", "ws"], action="append")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument(
        "--src",
        type=Path,
        default=SRC,
        help="the tidings source tree to run, e.g. an older version's, to compare [this one]",
    )
    args = parser.parse_args()
    SRC = args.src.resolve()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = {}
    for transport in args.transport or ["sse", "poll", "ws"]:
        results[transport] = storm(transport, args.clients, args.processes, args.settle)
    print("\n| transport | clients | downtime | peak 100 ms | all back after restart |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for transport, r in results.items():
        print(
            f"| {transport} | {args.clients} | {r['downtime']:.2f} s | {r['peak']:.0f} "
            f"({100 * r['peak_share']:.1f} %) | {r['all_back']:.1f} s |"
        )


if __name__ == "__main__":
    main()
