"""tidings nodes on Redis against the single-process in-memory hub, in the same run.

The bench starts its own ``redis-server`` (a free port, no persistence), every node
in its own process (``bench/peers/tidings_node.py``: what ``python -m tidings serve
[--redis URL]`` serves) and the clients in other processes, all on 127.0.0.1, HTTP/1.1
with keep-alive; it stops them all at the end.  Each measure runs ``--repeat``
times (default 2), the in-memory server and the Redis nodes taking turns, and every
run is printed.  RLIMIT_NOFILE is raised in every process.

(a) Publishes per second per node, ``POST /topics/T`` (a 48-byte body, answered
    ``201``) on one topic nobody follows, counted over ``--seconds`` after a
    one-second warm-up:

    - one connection, each POST sent when the previous answer is complete;
    - ``--conns`` (default 32) connections doing the same at once (at most one
      request in flight per connection: HTTP/1.1 without pipelining);
    - in-process, no HTTP: ``await hub.publish(...)`` in a loop in 1 task and in
      ``--conns`` tasks, in a process of its own (one Redis connection pool; coredis
      multiplexes concurrent commands on its connections).

(b) Delivery latency with ``--connections`` (default 5000) SSE subscribers, opened
    from one client process (epoll, non-blocking sockets) on node B, ``--open-rate``
    (default 500) per second.  Every event's data starts with the publisher's
    ``time.monotonic_ns()`` taken just before the POST is written (CLOCK_MONOTONIC
    is shared by the processes of one machine); the reader takes the clock when
    ``recv`` returns the bytes that complete the event.  In-memory: publisher and
    subscribers on the one node.  Redis: publishes go to node A, the subscribers are
    on node B, both on the same Redis.  Before publishing, the bench waits until
    every subscription had its first answer from the history (``settle``: the server
    reads the head of the topic for each new stream, on Redis one round trip each;
    the node reports it on SIGUSR1, see the peer).

    - fan-out: all subscribers follow one new topic.  The first publish creates it
      (each subscriber then reads the history once: the first event of a new epoch
      is never taken on trust), waited for by every subscriber for at most a
      minute; once no subscription waits for a read any more, ``--rounds`` (default
      3) single publishes, one second apart.  The same case as
      ``bench_sse_server.py`` part (b), to compare with it.
    - steady: the subscribers follow ``--topics`` (default 1000) topics, the same
      number on each, every topic created (one publish) before they come; a
      publisher process sends ``--rate`` (default 1000) publishes per second,
      round-robin over the topics, on a fixed schedule for ``--steady`` seconds
      (default 10) after a one-second warm-up, through 64 keep-alive connections
      (the longest idle one for each send).  Also reported: the POST answer times,
      how far the publisher ran behind its schedule, events received against
      expected, history reads that failed on B, and the CPU time of each server
      process per publish.

    One topic followed by all 5 000 subscribers at 1 000 publishes/s would be 5 million
    deliveries per second, far beyond any server process on this machine (one event
    to 5 000 subscribers takes about a hundred milliseconds of CPU): the steady case
    spreads them over topics.

    python bench/bench_redis.py                       # everything (about 5 minutes)
    python bench/bench_redis.py --only a --seconds 1 --repeat 1
    python bench/bench_redis.py --only b --connections 1000 --topics 200 --steady 3

``BENCH_PROFILE_DIR=DIR`` makes every node write a cProfile file into DIR.

Goals (issue): cross-node p99 <= 50 ms at 1 000 publishes/s; in-memory figures
unchanged (compare with ``bench_sse_server.py --only b --connections 5000``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SERVER_START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 300.0
PUBLISHER_CONNS = 64
STEADY_WARMUP = 1.0
KINDS = ("memory", "redis")
NAMES = {"memory": "in-memory", "redis": "Redis"}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": _percentile(values, 0.99),
        "max": values[-1],
    }


# -- processes -------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class RedisServer:
    """A ``redis-server`` of our own: a free port, no persistence, a temporary dir."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.binary = binary
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        for word in out.split():
            if word.startswith("v="):
                return word[2:]
        return "?"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                if self.command("PING") == b"+PONG":
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def command(self, *words: str) -> bytes:
        """One inline command; the reply's first line."""
        with socket.create_connection((HOST, self.port), timeout=5) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(4096).split(b"\r\n", 1)[0]

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)  # type: ignore[arg-type]
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int

    def stats(self) -> dict[str, int]:
        """The node's counters so far (see bench/peers/tidings_node.py)."""
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGUSR1)
        line = self.process.stdout.readline().decode()
        if not line.startswith("STATS "):
            raise RuntimeError(f"node did not answer with its stats: {line!r}")
        counts = json.loads(line[6:])
        assert isinstance(counts, dict)
        return counts


@dataclass
class Setup:
    """The server side of one case: where to publish, where to subscribe."""

    kind: str  # memory | redis
    publish: Node
    subscribe: Node
    processes: dict[str, int] = field(default_factory=dict)  # label -> pid (CPU shares)


def _start_node(redis_url: str | None, started: list[subprocess.Popen[bytes]]) -> Node:
    command = [sys.executable, str(PEERS / "tidings_node.py")]
    if redis_url is not None:
        command += ["--redis", redis_url]
    profile = os.environ.get("BENCH_PROFILE_DIR")
    if profile:
        command += ["--profile", f"{profile}/node-{len(started)}-{time.time_ns()}.prof"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    started.append(process)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("PORT "):
        raise RuntimeError(f"node did not start: {line!r}")
    return Node(process, int(line.split()[1]))


@contextlib.contextmanager
def _setup(kind: str, redis: RedisServer, nodes: int) -> Iterator[Setup]:
    """The in-memory node, or *nodes* (1 or 2) Redis nodes: A publishes, B subscribes."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        if kind == "memory":
            node = _start_node(None, started)
            yield Setup(kind, node, node, {"node": node.process.pid})
        else:
            assert redis.process is not None
            a = _start_node(redis.url, started)
            b = _start_node(redis.url, started) if nodes > 1 else a
            pids = {"A": a.process.pid}
            if nodes > 1:
                pids["B"] = b.process.pid
            pids["redis"] = redis.process.pid
            yield Setup(kind, a, b, pids)
    finally:
        for process in started:
            _stop(process)


def _run_client(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    assert isinstance(result, dict)
    return result


# -- a tiny HTTP/1.1 client ------------------------------------------------------------


def _post(path: str, port: int, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _complete(buffer: bytes) -> int:
    """Length of the first complete response in *buffer* (0 if incomplete)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buffer[:end].lower()
    at = head.find(b"content-length:")
    length = 0
    if at >= 0:
        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
    total = end + 4 + length
    return total if len(buffer) >= total else 0


def _payload(seq: int) -> bytes:
    # 48 bytes for small seq; the bench parses the first word (the send time).
    return b'%d {"seq": %d, "text": "hello world"}' % (time.monotonic_ns(), seq)


# -- (a) publishes per second ----------------------------------------------------------


def client_rate(port: int, conns: int, seconds: float, topic: str) -> dict[str, float]:
    """*conns* keep-alive connections, each POSTing as soon as its last answer is in."""
    _raise_nofile()
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    buffers: dict[int, bytes] = {}
    path = f"/topics/{topic}"
    seq = 0
    for _ in range(conns):
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        buffers[s.fileno()] = b""
        ep.register(s.fileno(), select.EPOLLIN)
        s.send(_post(path, port, _payload(seq)))
        seq += 1
    count = 0
    warm_until = time.perf_counter() + 1.0
    started = 0.0
    stop = warm_until + seconds
    while True:
        now = time.perf_counter()
        if not started and now >= warm_until:
            started, count = now, 0
        if now >= stop:
            break
        for fd, _mask in ep.poll(0.5):
            s = socks[fd]
            data = s.recv(65536)
            if not data:
                raise RuntimeError("connection closed by the server")
            buffer = buffers[fd] + data
            while size := _complete(buffer):
                if not buffer.startswith(b"HTTP/1.1 201"):
                    raise RuntimeError(f"bad answer {buffer[:200]!r}")
                buffer = buffer[size:]
                count += 1
                s.send(_post(path, port, _payload(seq)))
                seq += 1
            buffers[fd] = buffer
    elapsed = time.perf_counter() - started
    for s in socks.values():
        s.close()
    return {"rate": count / elapsed, "publishes": count, "seconds": elapsed}


def client_inproc(redis_url: str, tasks: int, seconds: float, topic: str) -> dict[str, float]:
    """``await hub.publish`` from *tasks* tasks in this process (no HTTP)."""
    import random

    import trio

    from tidings.cursor import new_epoch
    from tidings.history import MemoryHistory
    from tidings.trio import Hub

    counts = {"n": 0, "started": 0.0, "stopped": 0.0}

    async def publisher(hub: Hub, stop: float) -> None:
        seq = 0
        while trio.current_time() < stop:
            await hub.publish(topic, _payload(seq).decode())
            seq += 1
            counts["n"] += 1

    async def run(hub: Hub) -> None:
        # Warm-up (the first connections, the script load), then the measured run.
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(publisher, hub, trio.current_time() + 1.0)
        counts["n"] = 0
        counts["started"] = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(publisher, hub, trio.current_time() + seconds)
        counts["stopped"] = time.perf_counter()

    async def main() -> None:
        if redis_url == "memory":
            await run(Hub(MemoryHistory(new_epoch(random.SystemRandom()), max_events=1000)))
            return
        from tidings.redis import open_redis_history

        async with open_redis_history(redis_url) as history:
            await run(Hub(history))

    trio.run(main)
    elapsed = counts["stopped"] - counts["started"]
    return {"rate": counts["n"] / elapsed, "publishes": counts["n"], "seconds": elapsed}


def bench_a(redis: RedisServer, seconds: float, conns: int, repeat: int) -> None:
    cases = [
        ("http", 1, "HTTP, 1 connection awaiting each POST"),
        ("http", conns, f"HTTP, {conns} connections, each awaiting its own"),
        ("inproc", 1, "in-process, await hub.publish in 1 task"),
        ("inproc", conns, f"in-process, await hub.publish in {conns} tasks"),
    ]
    rates: dict[tuple[int, str, int], float] = {}
    for run in range(repeat):
        for kind in KINDS:
            with _setup(kind, redis, 1) as setup:
                for mode, n, _label in cases:
                    topic = f"rate-{mode}-{n}-{run}"
                    if mode == "http":
                        out = _run_client("_rate", str(setup.publish.port), str(n), str(seconds),
                                          topic)  # fmt: skip
                    else:
                        where = "memory" if kind == "memory" else redis.url
                        out = _run_client("_inproc", where, str(n), str(seconds), topic)
                    rates[(run, kind, cases.index((mode, n, _label)))] = float(out["rate"])
            print(f"  ... (a) run {run + 1}, {NAMES[kind]} done", file=sys.stderr, flush=True)
    print()
    print(f"(a) publishes per second per node, one topic without subscribers, {seconds:g} s")
    print("    per run after a 1 s warm-up; each run's figure, runs separated by '/'")
    width = 12 * repeat
    header = f"{'publisher':46} {'in-memory':>{width}} {'Redis node':>{width}} {'Redis/mem':>10}"
    print(header)
    print("-" * len(header))
    for index, (_mode, _n, label) in enumerate(cases):
        mem = [rates[(run, "memory", index)] for run in range(repeat)]
        red = [rates[(run, "redis", index)] for run in range(repeat)]
        ratio = max(red) / max(mem)
        print(
            f"{label:46} {' / '.join(f'{r:,.0f}' for r in mem):>{width}}"
            f" {' / '.join(f'{r:,.0f}' for r in red):>{width}} {ratio:9.3f}x"
        )
    print("Ratio: best Redis run over best in-memory run.  No goal: for comparison.")


# -- (b) delivery latency ---------------------------------------------------------------


def _open_subscribers(port: int, topics: list[str], rate: float) -> Reader:
    """One SSE subscriber per entry of *topics*, opening at most *rate* per second (0:
    as fast as we can); returns once every one has its head."""
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    got_head: set[int] = set()
    # What came so far: the head until it is complete, then the stream (a
    # heartbeat may come while the others are still connecting).
    received: dict[int, bytes] = {}
    batch = 250
    opened = 0
    n = len(topics)
    request: dict[int, bytes] = {}
    start = time.monotonic()
    deadline = start + 120 + (n / rate if rate else 0)
    while len(got_head) < n:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"only {len(got_head)} of {n} subscribers connected")
        allowed = n if not rate else min(n, int((now - start) * rate) + 1)
        while opened < allowed and opened - len(got_head) < batch:
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((HOST, port))
            socks[s.fileno()] = s
            request[s.fileno()] = (
                f"GET /topics/{topics[opened]}/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            ep.register(s.fileno(), select.EPOLLOUT)
            opened += 1
        for fd, mask in ep.poll(0.01 if opened < n else 1.0):
            s = socks[fd]
            if mask & select.EPOLLOUT:
                s.send(request[fd])
                ep.modify(fd, select.EPOLLIN)
            elif mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                data = received.get(fd, b"") + s.recv(65536)
                if fd not in got_head:
                    if not b"HTTP/1.1 200".startswith(data[:12]):
                        raise RuntimeError(f"bad answer: {data[:200]!r}")
                    head, end, data = data.partition(b"\r\n\r\n")
                    if not end:
                        data = head
                    else:
                        got_head.add(fd)
                received[fd] = data
    reader = Reader(ep, socks)
    reader.tails.update(received)
    return reader


class Reader:
    """Reads the subscribers' streams; notes each event's send time and delay."""

    def __init__(self, ep: select.epoll, socks: dict[int, socket.socket]) -> None:
        self.ep = ep
        self.socks = socks
        self.tails: dict[int, bytes] = dict.fromkeys(socks, b"")
        self.delays: list[tuple[int, int]] = []  # (send ns, delay ns)
        self.counts: collections.Counter[int] = collections.Counter()  # send ns -> events
        self.resets = 0
        self.closed = 0
        self.stdin = -1

    def watch_stdin(self) -> None:
        """Make :meth:`poll` say when a line can be read from stdin."""
        self.stdin = sys.stdin.fileno()
        self.ep.register(self.stdin, select.EPOLLIN)

    def poll(self, timeout: float) -> bool:
        """Read what arrived (waiting at most *timeout*); whether stdin is readable."""
        stdin = False
        for fd, _mask in self.ep.poll(timeout):
            if fd == self.stdin:
                stdin = True
                continue
            try:
                data = self.socks[fd].recv(65536)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not data:
                self.ep.unregister(fd)
                self.closed += 1
                continue
            blocks = (self.tails[fd] + data).split(b"\n\n")
            self.tails[fd] = blocks.pop()
            for block in blocks:
                at = block.find(b"data: ")
                if at < 0:
                    continue  # retry:, heartbeat comments
                if b"event: tidings.reset" in block:
                    self.resets += 1
                    continue
                sent = int(block[at + 6 : block.index(b" ", at + 6)])
                self.delays.append((sent, now - sent))
                self.counts[sent] += 1
        return stdin

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.ep.close()


def _publish_once(port: int, topic: str, seq: int) -> int:
    """One publish; its send time (ns)."""
    # A connection per publish: a keep-alive one could time out while we wait.
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _payload(seq)
        s.sendall(_post(f"/topics/{topic}", port, body))
        buffer = b""
        while not _complete(buffer):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by the server")
            buffer += chunk
    if not buffer.startswith(b"HTTP/1.1 201"):
        raise RuntimeError(f"publish answered {buffer[:200]!r}")
    return int(body.split(b" ", 1)[0])


def client_fanout(pub_port: int, sub_port: int, n: int, open_rate: float) -> None:
    """*n* subscribers of a new topic on *sub_port*.  On each ``ROUND`` line, one
    publish on *pub_port* (the first creates the topic), waited for by every
    subscriber (at most a minute); on ``END``, the delays."""
    _raise_nofile()
    topic = f"fan{os.getpid()}"
    print("OPENING", flush=True)
    reader = _open_subscribers(sub_port, [topic] * n, open_rate)
    print("OPENED", flush=True)
    per_round: list[list[float]] = []
    while sys.stdin.readline().strip() == "ROUND":
        reader.poll(0)
        sent = _publish_once(pub_port, topic, len(per_round))
        deadline = time.monotonic() + 60
        while reader.counts[sent] < n and time.monotonic() < deadline:
            reader.poll(0.5)
        per_round.append([d / 1e6 for at, d in reader.delays if at == sent])
        print("DONE", len(per_round[-1]), flush=True)
    first = _summary(per_round[0])
    later = _summary([d for delays in per_round[1:] for d in delays])
    result = {
        "first": dict(first, expected=n),
        "next": dict(later, expected=n * (len(per_round) - 1)),
        "rounds_p99": [_summary(delays)["p99"] for delays in per_round[1:]],
        "resets": reader.resets,
    }
    reader.close()
    print(json.dumps(result), flush=True)


def _prime(port: int, names: list[str]) -> None:
    """One event in each topic, so that the subscribers find them existing."""
    for seq, name in enumerate(names):
        _publish_once(port, name, seq)


def client_steady(
    pub_port: int, sub_port: int, n: int, topics: int, prefix: str, open_rate: float
) -> None:
    """*n* subscribers over *topics* topics (created first, with one event each);
    reads until told ``STOP <cut ns>``."""
    _raise_nofile()
    _prime(pub_port, [f"{prefix}-{i}" for i in range(topics)])
    names = [f"{prefix}-{i % topics}" for i in range(n)]
    print("OPENING", flush=True)
    reader = _open_subscribers(sub_port, names, open_rate)
    print("OPENED", flush=True)
    reader.watch_stdin()
    while not reader.poll(1.0):
        pass
    command = sys.stdin.readline().strip()
    cut = int(command.split()[1])
    delays = [d / 1e6 for sent, d in reader.delays if sent >= cut]
    result = _summary(delays)
    result["resets"] = reader.resets
    result["closed"] = reader.closed
    reader.close()
    print(json.dumps(result), flush=True)


def client_publisher(
    port: int, prefix: str, topics: int, rate: float, seconds: float, warmup: float
) -> dict[str, float]:
    """*rate* publishes per second on a fixed schedule, round-robin over the topics."""
    _raise_nofile()
    ep = select.epoll()
    idle: collections.deque[socket.socket] = collections.deque()
    socks: dict[int, socket.socket] = {}
    buffers: dict[int, bytes] = {}
    sent_at: dict[int, int] = {}
    for _ in range(PUBLISHER_CONNS):
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        buffers[s.fileno()] = b""
        ep.register(s.fileno(), select.EPOLLIN)
        idle.append(s)
    total = int(rate * (warmup + seconds))
    start = time.monotonic_ns() + 20_000_000
    cut = start + int(warmup * 1e9)
    interval = 1e9 / rate
    seq = answered = measured = 0
    lags: list[float] = []
    answers: list[float] = []
    errors = 0
    while seq < total or answered < seq:
        now = time.monotonic_ns()
        while seq < total and start + seq * interval <= now and idle:
            s = idle.popleft()  # the longest idle: every connection stays in use
            body = _payload(seq)
            sent = int(body.split(b" ", 1)[0])
            s.send(_post(f"/topics/{prefix}-{seq % topics}", port, body))
            sent_at[s.fileno()] = sent
            if sent >= cut:
                measured += 1
                lags.append((sent - (start + seq * interval)) / 1e6)
            seq += 1
            now = time.monotonic_ns()
        due = start + seq * interval
        timeout = max(0.0, (due - time.monotonic_ns()) / 1e9) if seq < total and idle else 0.5
        for fd, _mask in ep.poll(timeout):
            s = socks[fd]
            data = s.recv(65536)
            got = time.monotonic_ns()
            if not data:
                raise RuntimeError("connection closed by the server")
            buffer = buffers[fd] + data
            while size := _complete(buffer):
                if not buffer.startswith(b"HTTP/1.1 201"):
                    errors += 1
                buffer = buffer[size:]
                answered += 1
                if sent_at[fd] >= cut:
                    answers.append((got - sent_at[fd]) / 1e6)
                idle.append(s)
            buffers[fd] = buffer
    for s in socks.values():
        s.close()
    lag = _summary(lags)
    answer = _summary(answers)
    return {
        "published": seq,
        "measured": measured,
        "cut": cut,
        "errors": errors,
        "rate": measured / seconds,
        "lag_p99": lag["p99"],
        "lag_max": lag["max"],
        "answer_p50": answer["p50"],
        "answer_p99": answer["p99"],
    }


@dataclass
class OptionsB:
    connections: int
    rounds: int
    topics: int
    rate: float
    seconds: float
    open_rate: float


def _with_stats(node: Node, result: dict[str, object], before: dict[str, int]) -> None:
    after = node.stats()
    for name, value in after.items():
        result[name] = value - before.get(name, 0)


@contextlib.contextmanager
def _reader(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
        process.wait(CLIENT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _line(process: subprocess.Popen[str], expected: str | None = None) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line or (expected is not None and line.strip() != expected):
        raise RuntimeError(f"client said {line!r}, not {expected!r}")
    return line


def _tell(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _settle(process: subprocess.Popen[str], node: Node, n: int) -> float:
    """Wait until every one of the *n* subscribers the client is opening on *node*
    has its first answer from the history (at most 3 minutes); the seconds from
    the first connection until then."""
    _line(process, "OPENING")
    since = time.monotonic()
    _line(process, "OPENED")
    deadline = since + 180
    while time.monotonic() < deadline:
        stats = node.stats()
        if stats["subscriptions"] >= n and not stats["starting"]:
            return time.monotonic() - since
        time.sleep(0.1)
    raise RuntimeError(f"subscribers not started after 3 minutes: {stats}")


def _quiet(node: Node) -> float:
    """Wait until no subscription of *node* waits for a history read (at most a
    minute); the seconds waited."""
    since = time.monotonic()
    while time.monotonic() < since + 60:
        if not node.stats()["reading"]:
            break
        time.sleep(0.1)
    return time.monotonic() - since


def _fanout(setup: Setup, o: OptionsB) -> dict[str, object]:
    node = setup.subscribe
    before = node.stats()
    with _reader(
        "_fanout", str(setup.publish.port), str(node.port), str(o.connections), str(o.open_rate)
    ) as reader:
        settle = _settle(reader, node, o.connections)
        quiet = []
        for k in range(o.rounds + 1):
            if k:
                # The first event of a new topic makes every subscriber read the
                # history (on Redis, a round trip each): the next round waits.
                quiet.append(_quiet(node))
                time.sleep(1.0)
            _tell(reader, "ROUND")
            _line(reader)
        _tell(reader, "END")
        result = dict(json.loads(_line(reader)))
    result["quiet"] = quiet[0] if quiet else 0.0
    result["settle"] = settle
    _with_stats(node, result, before)
    return result


def _steady(setup: Setup, o: OptionsB, run: int) -> dict[str, object]:
    node = setup.subscribe
    prefix = f"steady-{run}-{setup.kind}"
    before = node.stats()
    with _reader(
        "_steady", str(setup.publish.port), str(node.port), str(o.connections), str(o.topics),
        prefix, str(o.open_rate),
    ) as reader:  # fmt: skip
        settle = _settle(reader, node, o.connections)
        publisher = subprocess.Popen(
            [sys.executable, __file__, "_publish", str(setup.publish.port), prefix,
             str(o.topics), str(o.rate), str(o.seconds), str(STEADY_WARMUP)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # CPU time over the measured seconds (the warm-up left out).
        time.sleep(STEADY_WARMUP)
        cpu_before = {label: _cpu_seconds(pid) for label, pid in setup.processes.items()}
        wall = time.monotonic()
        out, _ = publisher.communicate(timeout=CLIENT_TIMEOUT)
        wall = time.monotonic() - wall
        cpu = {
            label: _cpu_seconds(pid) - cpu_before[label] for label, pid in setup.processes.items()
        }
        if publisher.returncode != 0:
            raise RuntimeError("publisher failed")
        pub = json.loads(out)
        time.sleep(1.0)  # stragglers
        _tell(reader, f"STOP {pub['cut']}")
        result = dict(json.loads(_line(reader)))
    result["settle"] = settle
    result["publisher"] = pub
    result["expected"] = pub["measured"] * (o.connections // o.topics)
    # CPU milliseconds per publish (the publishes made while it was measured).
    result["cpu"] = {label: 1000 * seconds / (o.rate * wall) for label, seconds in cpu.items()}
    _with_stats(node, result, before)
    return result


def bench_b(redis: RedisServer, o: OptionsB, repeat: int) -> None:
    connections, rounds, topics, rate, seconds = (
        o.connections,
        o.rounds,
        o.topics,
        o.rate,
        o.seconds,
    )
    if connections % topics:
        raise SystemExit("--connections must be a multiple of --topics")
    fan: list[tuple[int, str, dict[str, object]]] = []
    steady: list[tuple[int, str, dict[str, object]]] = []
    for run in range(repeat):
        for kind in KINDS:
            with _setup(kind, redis, 2) as setup:
                fan.append((run, kind, _fanout(setup, o)))
                steady.append((run, kind, _steady(setup, o, run)))
            print(f"  ... (b) run {run + 1}, {NAMES[kind]} done", file=sys.stderr, flush=True)
    where = {"memory": "in-memory", "redis": "Redis A->B"}
    per_topic = connections // topics
    rows: list[tuple[str, str, int, dict[str, object]]] = []
    for label, key in (("fan-out: first event, new topic", "first"),
                       (f"fan-out: next {rounds} events", "next")):  # fmt: skip
        for kind in KINDS:
            for run, k, r in fan:
                if k == kind:
                    result = r[key]
                    assert isinstance(result, dict)
                    rows.append((label, kind, run, result))
    for kind in KINDS:
        for run, k, r in steady:
            if k == kind:
                rows.append((f"steady: {rate:g}/s over {topics} topics", kind, run, r))
    print()
    print(f"(b) {connections} SSE subscribers (HTTP/1.1): delay from writing the POST to")
    print("    reading the event, per subscriber and event, in ms")
    header = (
        f"{'case':34} {'server':10} {'run':>3} {'got / expected':>17} {'p50':>7} {'p99':>7}"
        f" {'max':>7}  goal"
    )
    print(header)
    print("-" * len(header))
    previous = ""
    for label, kind, run, r in rows:
        goal = ""
        if kind == "redis" and label.startswith("steady"):
            goal = "p99 <= 50: " + ("met" if r["p99"] <= 50 else "MISSED")  # type: ignore[operator]
        print(
            f"{label if label != previous else '':34} {where[kind]:10} {run + 1:3}"
            f" {r['n']:>8}/{r['expected']:<8} {r['p50']:7.1f} {r['p99']:7.1f} {r['max']:7.1f}"
            f"  {goal}"
        )
        previous = label
    print(f"fan-out: all subscribers on one topic; its first publish creates it, then {rounds}")
    print("more, 1 s apart, once the history reads the first one caused are over.")
    print(f"steady: {rate:g} publishes/s for {seconds:g} s after a 1 s warm-up, {per_topic}")
    print(f"subscribers per topic ({rate * per_topic:,.0f} deliveries/s), every topic created")
    print("before the subscribers came.  Goal: Redis steady p99 <= 50 ms.")
    print()
    header = (
        f"{'case':34} {'server':10} {'run':>3} {'settle s':>8} {'rate/s':>7} {'POST p50':>8}"
        f" {'POST p99':>8} {'late p99':>8} {'late max':>8} {'resets':>6} {'failed':>6}"
        "  CPU ms per publish"
    )
    print(header)
    print("-" * len(header))
    for run, kind, r in fan:
        rounds_p99 = r["rounds_p99"]
        assert isinstance(rounds_p99, list)
        print(
            f"{'fan-out':34} {where[kind]:10} {run + 1:3} {r['settle']:8.1f} {'':7} {'':8}"
            f" {'':8} {'':8} {'':8} {r['resets']:6} {r['failed_reads']:6}"
            f"  reads after the first event over {r['quiet']:.1f} s later;"
            f" p99 of each next event {', '.join(f'{v:.0f}' for v in rounds_p99)} ms"
        )
    for label, kind, run, r in rows:
        if not label.startswith("steady"):
            continue
        pub = r["publisher"]
        cpu = r["cpu"]
        assert isinstance(pub, dict)
        assert isinstance(cpu, dict)
        shares = " + ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
        print(
            f"{'steady':34} {where[kind]:10} {run + 1:3} {r['settle']:8.1f} {pub['rate']:7.0f}"
            f" {pub['answer_p50']:8.1f} {pub['answer_p99']:8.1f} {pub['lag_p99']:8.1f}"
            f" {pub['lag_max']:8.1f} {r['resets']:6} {r['failed_reads']:6}  {shares}"
        )
    print(f"settle: from opening the first subscriber ({o.open_rate:g}/s, 0: all at once) until")
    print("every one had its first answer from the history (the server reads each new")
    print("subscriber's head; on Redis, one round trip each).  failed: history reads of a")
    print("subscription that failed on that node (HistoryUnavailable, retried by the hub).")
    print("POST: the publisher's answer times (ms); late: how far behind its schedule it wrote")
    print("(ms); CPU ms per publish: each server process's user+system time over the measured")
    print("seconds, per publish made meanwhile.")


# -- main ------------------------------------------------------------------------------


def _versions(redis: RedisServer) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {sys.version.split()[0]}", f"{os.cpu_count()} CPUs"]
    for name in ("tidings", "trio", "h11", "coredis", "anyio"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} ?")
    parts.append(f"redis-server {redis.version()}")
    return ", ".join(parts)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, args = sys.argv[1], sys.argv[2:]
        if mode == "_rate":
            print(json.dumps(client_rate(int(args[0]), int(args[1]), float(args[2]), args[3])))
        elif mode == "_inproc":
            print(json.dumps(client_inproc(args[0], int(args[1]), float(args[2]), args[3])))
        elif mode == "_fanout":
            client_fanout(int(args[0]), int(args[1]), int(args[2]), float(args[3]))
        elif mode == "_steady":
            client_steady(
                int(args[0]), int(args[1]), int(args[2]), int(args[3]), args[4], float(args[5])
            )
        elif mode == "_publish":
            result = client_publisher(
                int(args[0]), args[1], int(args[2]), float(args[3]), float(args[4]),
                float(args[5]),
            )  # fmt: skip
            print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds in (a)")
    parser.add_argument("--conns", type=int, default=32, help="connections/tasks in (a)")
    parser.add_argument("--connections", type=int, default=5000, help="subscribers in (b)")
    parser.add_argument("--rounds", type=int, default=3, help="fan-out publishes in (b)")
    parser.add_argument("--topics", type=int, default=1000, help="topics of steady (b)")
    parser.add_argument("--rate", type=float, default=1000.0, help="publishes/s of steady (b)")
    parser.add_argument("--steady", type=float, default=10.0, help="measured seconds, steady (b)")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=500.0,
        help="subscribers opened per second in (b), 0: all at once",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of everything")
    parser.add_argument("--only", choices=("a", "b"), help="run only part a or b")
    args = parser.parse_args()
    _raise_nofile()
    redis = RedisServer()
    print(_versions(redis), flush=True)
    print(f"start: {_load()}", flush=True)
    redis.start()
    try:
        if args.only in (None, "a"):
            bench_a(redis, args.seconds, args.conns, args.repeat)
        if args.only in (None, "b"):
            options = OptionsB(
                args.connections, args.rounds, args.topics, args.rate, args.steady, args.open_rate
            )
            bench_b(redis, options, args.repeat)
    finally:
        redis.stop()
    print(f"end: {_load()}")


if __name__ == "__main__":
    main()
