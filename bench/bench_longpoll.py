"""The tidings long-poll endpoint against the same endpoint in Starlette on uvicorn.

One run, same machine, side by side; every server runs in its own process and the
clients in another one, on 127.0.0.1 only, HTTP/1.1 with keep-alive.  Both servers
serve the protocol of DESIGN §4 (``GET /topics/{topic}/poll``, ``POST /topics/{topic}``);
the Starlette peer is ``bench/peers/starlette_longpoll_app.py`` (one asyncio.Event per
topic wakes its held requests).  RLIMIT_NOFILE is raised in every process.

(a) wake-all: ``--held`` (default 5000) connections each send a poll with the
    topic's head cursor, so each is held; after a pause (so that the server has
    taken them all, and checking that none was answered) one event is published
    with a POST.  Latency of each poll = from sending the POST to having read the
    poll's complete answer (status line, headers, whole body), measured in the
    client process (epoll, non-blocking sockets).  ``--rounds`` rounds on the same
    connections (keep-alive, each next poll carries the cursor of its answer):
    p50, p99 and max per round.  Goal: p99 <= 250 ms.

(b) throughput of immediately answered polls: ``--conns`` (default 32) keep-alive
    connections, each sending its next poll as soon as the previous answer is
    complete; every poll has one event waiting (``cursor`` = the event before it),
    so it is answered at once with a one-event body.  Answers per second over
    ``--seconds`` (after a one-second warm-up).  Goal: tidings >= the peer.
    Floors, in the same run (``bench/peers/h11_floor.py``): each request answered
    with a constant answer of the same size, through h11 (parse, serialise, next
    cycle) in one Trio task per connection, through h11 in one epoll loop with no
    framework, and with no HTTP parsing at all.

    python bench/bench_longpoll.py                           # both parts (~1 minute)
    python bench/bench_longpoll.py --only a --held 2000 --rounds 1
    python bench/bench_longpoll.py --only b --seconds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SERVER_START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 300.0
# --baseline-src: a source tree (its src/ directory) served as "baseline" in (b).
BASELINE_SRC = ""
NAMES = {
    "tidings": "tidings (trio, h11)",
    "uvicorn": "Starlette on uvicorn",
    "baseline": "tidings, --baseline-src",
    "h11-floor": "floor: h11 echo, epoll",
    "trio-floor": "floor: h11 echo on Trio",
    "raw-floor": "floor: raw socket echo",
}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- servers ---------------------------------------------------------------------------


def serve_tidings(port: int) -> None:
    """Run the tidings server (default config, in-memory history) on *port*."""
    _raise_nofile()
    import random
    from functools import partial

    import trio

    from tidings.cursor import new_epoch
    from tidings.history import MemoryHistory
    from tidings.trio import Hub, serve

    hub = Hub(MemoryHistory(new_epoch(random.SystemRandom()), max_events=1000))
    trio.run(partial(serve, hub, port, host=HOST))


def serve_starlette(port: int) -> None:
    """Run the Starlette peer on uvicorn (its best available loop and parser)."""
    _raise_nofile()
    import uvicorn

    uvicorn.run(
        "starlette_longpoll_app:app",
        app_dir=str(PEERS),
        host=HOST,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=8192,
    )


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def _server(name: str) -> Iterator[Running]:
    port = _free_port()
    if name in ("h11-floor", "trio-floor", "raw-floor"):
        command = [sys.executable, str(PEERS / "h11_floor.py"), str(port)]
        command += {"raw-floor": ["--raw"], "trio-floor": ["--trio"]}.get(name, [])
    else:
        mode = "_serve-starlette" if name == "uvicorn" else "_serve-tidings"
        command = [sys.executable, __file__, mode, str(port)]
    env = dict(os.environ)
    if name == "baseline":
        # The same server, importing tidings from another source tree.
        env["PYTHONPATH"] = os.pathsep.join([BASELINE_SRC, env.get("PYTHONPATH", "")])
    process = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in time")
            time.sleep(0.05)
        yield Running(name, process, port)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# -- a tiny HTTP/1.1 client ------------------------------------------------------------


def _get(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n\r\n".encode()
    )


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


def _exchange(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port)) as s:
        s.sendall(request)
        buffer = b""
        while not (size := _complete(buffer)):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed: {buffer!r}")
            buffer += chunk
    head, _, body = buffer[:size].partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _publish(port: int, topic: str, data: bytes) -> None:
    status, body = _exchange(port, _post(f"/topics/{topic}", port, data))
    if status != 201:
        raise RuntimeError(f"publish answered {status}: {body!r}")


def _poll_json(port: int, query: str, topic: str) -> dict[str, object]:
    status, body = _exchange(port, _get(f"/topics/{topic}/poll?{query}", port))
    if status != 200:
        raise RuntimeError(f"poll answered {status}: {body!r}")
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


# -- (a) wake-all ------------------------------------------------------------------------


def client_wake(port: int, n: int, rounds: int, settle: float) -> list[dict[str, float]]:
    _raise_nofile()
    topic = f"wake{os.getpid()}"
    cursor = str(_poll_json(port, "timeout=0", topic)["cursor"])
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    cursors: dict[int, str] = {}
    # Connect in batches: at most `batch` connections in progress at once.
    batch, opened, sent = 500, 0, 0
    deadline = time.monotonic() + 120
    while sent < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sent} of {n} polls sent")
        while opened < n and opened - sent < batch:
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((HOST, port))
            socks[s.fileno()] = s
            cursors[s.fileno()] = cursor
            ep.register(s.fileno(), select.EPOLLOUT)
            opened += 1
        for fd, mask in ep.poll(1.0):
            if mask & select.EPOLLOUT:
                socks[fd].send(_get(f"/topics/{topic}/poll?cursor={cursor}&timeout=30", port))
                ep.modify(fd, select.EPOLLIN)
                sent += 1
    results = []
    for round_number in range(rounds):
        time.sleep(settle)  # let the server take every request (and hold it)
        early = ep.poll(0)
        if early:
            raise RuntimeError(f"{len(early)} polls were answered before the publish")
        marker = b"wake-%d-%d" % (round_number, time.time_ns())
        publish = socket.create_connection((HOST, port))
        publish.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers: dict[int, bytes] = dict.fromkeys(socks, b"")
        arrived: dict[int, float] = {}
        start = time.perf_counter()
        publish.sendall(_post(f"/topics/{topic}", port, marker))
        deadline = time.monotonic() + 60
        while len(arrived) < n and time.monotonic() < deadline:
            for fd, _mask in ep.poll(1.0):
                try:
                    data = socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("a held poll's connection closed")
                buffer = buffers[fd] + data
                size = _complete(buffer)
                if size:
                    arrived[fd] = time.perf_counter() - start
                    body = buffer[:size].partition(b"\r\n\r\n")[2]
                    answer = json.loads(body)
                    if answer["events"][-1]["data"] != marker.decode():
                        raise RuntimeError(f"unexpected answer {body[:200]!r}")
                    cursors[fd] = answer["cursor"]
                buffers[fd] = buffer[size:] if size else buffer
        publish.recv(4096)
        publish.close()
        latencies = sorted(arrived.values())
        results.append(
            {
                "answered": len(latencies),
                "p50": statistics.median(latencies) * 1000,
                "p99": _percentile(latencies, 0.99) * 1000,
                "max": latencies[-1] * 1000,
            }
        )
        if round_number + 1 < rounds:  # the next poll of every connection, held again
            for fd, s in socks.items():
                s.send(_get(f"/topics/{topic}/poll?cursor={cursors[fd]}&timeout=30", port))
    for s in socks.values():
        s.close()
    return results


# -- (b) throughput ----------------------------------------------------------------------


def client_rate(port: int, conns: int, seconds: float) -> dict[str, float]:
    _raise_nofile()
    topic = f"rate{os.getpid()}"
    _publish(port, topic, b"first")
    _publish(port, topic, b'{"user": "alice", "text": "hello world", "n": 2}')
    cursor = _poll_json(port, "cursor=earliest&limit=1", topic)["cursor"]
    request = _get(f"/topics/{topic}/poll?cursor={cursor}&timeout=0", port)
    check = _poll_json(port, f"cursor={cursor}&timeout=0", topic)
    assert len(check["events"]) == 1, check  # type: ignore[arg-type]
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    buffers: dict[int, bytes] = {}
    for _ in range(conns):
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        buffers[s.fileno()] = b""
        ep.register(s.fileno(), select.EPOLLIN)
        s.send(request)
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
                if not buffer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"bad answer {buffer[:200]!r}")
                buffer = buffer[size:]
                count += 1
                s.send(request)
            buffers[fd] = buffer
    elapsed = time.perf_counter() - started
    for s in socks.values():
        s.close()
    return {"rate": count / elapsed, "answers": count, "seconds": elapsed}


# -- orchestration -----------------------------------------------------------------------


def _run_client(*args: str) -> object:
    result = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def bench_a(held: int, rounds: int, settle: float) -> None:
    rows = []
    for name in ("tidings", "uvicorn"):
        with _server(name) as running:
            out = _run_client(
                "_client-wake", str(running.port), str(held), str(rounds), str(settle)
            )
            assert isinstance(out, list)
            rows.append((name, out))
        print(f"  ... {name} done", file=sys.stderr, flush=True)
    print()
    print(f"(a) {held} held polls (HTTP/1.1), one publish: time until each poll is answered")
    header = f"{'server':24} {'round':>5} {'answered':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    for name, results in rows:
        for i, r in enumerate(results, 1):
            print(
                f"{NAMES[name]:24} {i:5} {int(r['answered']):8} {r['p50']:8.1f}"
                f" {r['p99']:8.1f} {r['max']:8.1f}"
            )
    print("From sending the publish POST to reading each complete answer, in the client")
    print("process.  Goal: p99 <= 250 ms.")


def bench_b(conns: int, seconds: float, repeat: int) -> None:
    rows = []
    names = ["tidings", "uvicorn", "trio-floor", "h11-floor", "raw-floor"]
    if BASELINE_SRC:
        names.insert(1, "baseline")
    for name in names:
        with _server(name) as running:
            best: dict[str, float] | None = None
            for _ in range(repeat):
                out = _run_client("_client-rate", str(running.port), str(conns), str(seconds))
                assert isinstance(out, dict)
                if best is None or out["rate"] > best["rate"]:
                    best = out
            assert best is not None
            rows.append((name, best))
        print(f"  ... {name} done", file=sys.stderr, flush=True)
    print()
    print(f"(b) immediately answered polls: {conns} keep-alive connections, one event each")
    header = f"{'server':24} {'answers/s':>10} {'x peer':>7} {'of h11 floor':>13}"
    print(header)
    print("-" * len(header))
    rates = {name: r["rate"] for name, r in rows}
    for name, r in rows:
        print(
            f"{NAMES[name]:24} {r['rate']:10.0f} {r['rate'] / rates['uvicorn']:6.2f}x"
            f" {100 * r['rate'] / rates['h11-floor']:12.1f}%"
        )
    print(f"Best of {repeat} runs of {seconds:g} s each.  Goal: tidings >= the peer.")
    print("Floors (bench/peers/h11_floor.py): every request answered with a constant of the")
    print("same size, through h11 in one Trio task per connection, through h11 in one epoll")
    print("loop, or with no HTTP parsing at all.")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, args = sys.argv[1], sys.argv[2:]
        if mode == "_serve-tidings":
            serve_tidings(int(args[0]))
        elif mode == "_serve-starlette":
            serve_starlette(int(args[0]))
        elif mode == "_client-wake":
            print(json.dumps(client_wake(int(args[0]), int(args[1]), int(args[2]), float(args[3]))))
        elif mode == "_client-rate":
            print(json.dumps(client_rate(int(args[0]), int(args[1]), float(args[2]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--held", type=int, default=5000, help="held polls in (a)")
    parser.add_argument("--rounds", type=int, default=3, help="publishes in (a)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before publishing")
    parser.add_argument("--conns", type=int, default=32, help="connections in (b)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds in (b)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (b), best kept")
    parser.add_argument("--only", choices=["a", "b"], help="run one part only")
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run (b) with tidings imported from DIR (a src/ directory, e.g. from "
        "`git archive <commit> src`), labelled 'baseline'",
    )
    args = parser.parse_args()
    global BASELINE_SRC
    BASELINE_SRC = str(Path(args.baseline_src).resolve()) if args.baseline_src else ""
    _raise_nofile()
    if args.only in (None, "a"):
        bench_a(args.held, args.rounds, args.settle)
    if args.only in (None, "b"):
        bench_b(args.conns, args.seconds, args.repeat)


if __name__ == "__main__":
    main()
