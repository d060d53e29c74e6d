"""The tidings SSE server against sse-starlette on uvicorn and on hypercorn (trio).

One run, same machine, side by side; every server runs in its own process and
every client in another one, on 127.0.0.1 only.

(a) One client reads an ``--events``-event stream (default 100 000) over HTTP/1.1
    and over HTTP/2 (cleartext, prior knowledge).  The client is the same for every
    server: a raw blocking socket (h1) or the ``h2`` library over a socket (h2, with
    windows so large that flow control never stalls a server, 16 KiB frames, nothing
    acknowledged); it counts event blocks with ``bytes.count(b"\\n\\n")`` and stops
    at the block carrying the last sequence number.  Time runs from sending the
    request to that block.  Servers:

    - tidings ``replay``: the stream replays a history already holding the events
      (``last-event-id=earliest``; history ``max_events`` >= ``--events``);
    - tidings ``live-burst``: a producer in the server publishes them while the
      client reads, ``hub.publish_nowait`` in bursts of 64, yielding after each;
    - tidings ``live-await``: the same with ``await hub.publish(...)`` per event;
    - the floor (``bench/peers/raw_floor.py``): the same bytes, encoded before the
      request, written to the socket by a blocking loop in 64 KiB writes; and the
      same with one write (one DATA frame) per event;
    - sse-starlette: an async generator yields the events as ``ServerSentEvent``
      objects, as fast as the server's send lets it (``bench/peers``), on uvicorn
      (HTTP/1.1 only: uvicorn has no HTTP/2) and on ``hypercorn --worker-class trio``.

    Live producers pause while the subscriber has more than half its buffer
    pending, so that both kinds of producer go as fast as the client reads.
    Best of ``--repeat`` runs.  Ratios compare each tidings variant with the
    sse-starlette server on the same protocol (uvicorn: its HTTP/1.1 number).

(b) ``--connections`` (default 10 000) SSE subscribers of one topic are opened from
    a client process (epoll, non-blocking sockets, RLIMIT_NOFILE raised), then one
    event is published with a POST; the client notes when each subscriber got it,
    measured from the moment the POST was sent (p50, p99, max).  Server memory per
    idle connection = (VmRSS with all connected - VmRSS before) / N, from
    ``/proc/<pid>/status``.  tidings against uvicorn + sse-starlette (a broadcast via
    one bounded asyncio queue per subscriber).

    python bench/bench_sse_server.py                   # everything (about a minute)
    python bench/bench_sse_server.py --only a --events 20000 --repeat 1
    python bench/bench_sse_server.py --only b --connections 2000
    python bench/bench_sse_server.py --only a --baseline-src /tmp/old/src  # before/after

Goals (issue 3): (a) >= 1.5x uvicorn + sse-starlette and >= 5x hypercorn-trio +
sse-starlette; (b) p99 <= 250 ms and <= 10 KiB per connection.
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
CLIENT_A_TIMEOUT = 120.0
CLIENT_B_TIMEOUT = 300.0
# --baseline-src: a source tree (its src/ directory) whose tidings runs as the
# "baseline" server of (a), in the same run.
BASELINE_SRC = ""


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _last_marker(n: int) -> bytes:
    # The data of the last event, as both servers write it (see bench/peers).
    return b'{"seq": %d, ' % (n - 1)


# -- servers ---------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    port: int


def _wait_port(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start in time")


def _start(name: str, events: int, started: list[subprocess.Popen[bytes]]) -> Running:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if name == "baseline":
        # The same bench server, importing tidings from another source tree.
        env["PYTHONPATH"] = os.pathsep.join([BASELINE_SRC, env.get("PYTHONPATH", "")])
        name = "tidings"
    if name in ("tidings", "floor"):
        script = "tidings_server.py" if name == "tidings" else "raw_floor.py"
        command = [sys.executable, str(PEERS / script), "--events", str(events)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{name} server did not start: {line!r}")
        port = int(line.split()[1])
    else:
        port = _free_port()
        if name == "uvicorn":
            command = [
                sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "--host", HOST,
                "--port", str(port), "--log-level", "warning", "--no-access-log",
                "--backlog", "4096", "sse_starlette_app:app",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--bind",
                f"{HOST}:{port}", "--log-level", "warning", "--backlog", "4096",
                "sse_starlette_app:app",
            ]  # fmt: skip
        process = subprocess.Popen(command, cwd=PEERS, env=env)
        started.append(process)
    _wait_port(process, port)
    return Running(name, process, port)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def _server(name: str, events: int) -> Iterator[Running]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield _start(name, events, started)
    finally:
        for process in started:
            _stop(process)


# -- (a) one client, many events -------------------------------------------------------


def client_a(proto: str, port: int, path: str, n: int) -> dict[str, float]:
    """Read until the last of *n* events arrived; return events/s."""
    marker = _last_marker(n)
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    blocks = 0
    total = 0
    tail = b""
    if proto == "h1":
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        sock.sendall(request)
        first = True
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"stream ended after {blocks} blocks")
            if first:
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"bad answer: {data[:200]!r}")
                first = False
            total += len(data)
            window = tail + data
            blocks += data.count(b"\n\n") + (tail[-1:] == b"\n" and data[:1] == b"\n")
            index = window.find(marker)
            if index >= 0 and window.find(b"\n\n", index) >= 0:
                break
            tail = window[-64:]
    else:
        import h2.config
        import h2.connection
        import h2.events
        from h2.settings import SettingCodes, Settings

        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        # Our settings go in the first SETTINGS frame and apply at once, so that no
        # server is ever stalled by flow control (nothing is acknowledged).
        conn.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(2**31 - 1 - 65535)
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", f"{HOST}:{port}".encode()),
            (b":path", path.encode()),
            (b"accept", b"text/event-stream"),
        ]
        start = time.perf_counter()
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"stream ended after {blocks} blocks")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(b":status")
                    if status != b"200":
                        raise RuntimeError(f"bad answer: {event.headers!r}")
                elif isinstance(event, h2.events.DataReceived):
                    chunk = event.data
                    total += len(chunk)
                    window = tail + chunk
                    blocks += chunk.count(b"\n\n") + (tail[-1:] == b"\n" and chunk[:1] == b"\n")
                    index = window.find(marker)
                    if index >= 0 and window.find(b"\n\n", index) >= 0:
                        done = True
                    tail = window[-64:]
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise RuntimeError(f"stream ended after {blocks} blocks: {event}")
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    elapsed = time.perf_counter() - start
    sock.close()
    return {"seconds": elapsed, "events_per_s": n / elapsed, "blocks": blocks, "bytes": total}


def _run_client_a(proto: str, port: int, path: str, n: int) -> dict[str, float]:
    command = [sys.executable, __file__, "_client-a", proto, str(port), path, str(n)]
    out = subprocess.run(command, capture_output=True, timeout=CLIENT_A_TIMEOUT, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-2000:])
    return dict(json.loads(out.stdout))


@dataclass
class CaseA:
    server: str  # tidings | uvicorn | hypercorn-trio
    label: str
    proto: str
    path: str


def bench_a(events: int, repeat: int) -> None:
    tidings_cases = []
    for proto in ("h1", "h2"):
        tidings_cases += [
            CaseA("tidings", "tidings replay (history)", proto,
                  "/topics/replay/events?last-event-id=earliest"),
            CaseA("tidings", "tidings live-burst (publish_nowait x64)", proto,
                  "/topics/live-burst-{k}/events"),
            CaseA("tidings", "tidings live-await (await publish)", proto,
                  "/topics/live-await-{k}/events"),
        ]  # fmt: skip
    stream = f"/stream?n={events}"
    groups = {
        "tidings": tidings_cases,
        "baseline": [
            CaseA("baseline", case.label.replace("tidings", "baseline"), case.proto, case.path)
            for case in tidings_cases
            if "replay" not in case.label
        ]
        if BASELINE_SRC
        else [],
        "uvicorn": [CaseA("uvicorn", "sse-starlette on uvicorn", "h1", stream)],
        "hypercorn-trio": [
            CaseA("hypercorn-trio", "sse-starlette on hypercorn-trio", proto, stream)
            for proto in ("h1", "h2")
        ],
        "floor": [
            case
            for proto in ("h1", "h2")
            for case in (
                CaseA("floor", "floor: raw socket, 64 KiB writes", proto, "/bulk"),
                CaseA("floor", "raw socket, one write per event", proto, "/per-event"),
            )
        ],
    }
    results: dict[tuple[str, str], float] = {}
    rows: list[tuple[CaseA, dict[str, float] | None, str]] = []
    counter = 0
    for server_name, cases in groups.items():
        if not cases:
            continue
        with _server(server_name, events) as running:
            for case in cases:
                best: dict[str, float] | None = None
                error = ""
                for _ in range(repeat):
                    counter += 1
                    path = case.path.replace("{k}", str(counter))
                    try:
                        result = _run_client_a(case.proto, running.port, path, events)
                    except Exception as exc:
                        error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                        continue
                    if best is None or result["events_per_s"] > best["events_per_s"]:
                        best = result
                if best is None:
                    rows.append((case, None, error))
                    continue
                results[(case.label, case.proto)] = best["events_per_s"]
                rows.append((case, best, ""))
            print(f"  ... {server_name} done", file=sys.stderr, flush=True)

    uvicorn = results.get(("sse-starlette on uvicorn", "h1"))
    print()
    print(f"(a) one client reading {events} events, best of {repeat}")
    header = f"{'server / producer':44} {'proto':5} {'events/s':>10} {'B/event':>8}"
    header += f" {'x uvicorn':>10} {'x hyp-trio':>10} {'of floor':>8}  goals"
    print(header)
    print("-" * len(header))
    for case, best, error in rows:
        if best is None:
            print(f"{case.label:44} {case.proto:5} FAILED: {error}")
            continue
        rate = best["events_per_s"]
        floor = results.get(("floor: raw socket, 64 KiB writes", case.proto))
        of_floor = f"{100 * rate / floor:7.1f}%" if floor else ""
        hyp = results.get(("sse-starlette on hypercorn-trio", case.proto))
        ratio_u = ratio_h = goals = ""
        if case.server in ("tidings", "baseline") and uvicorn and hyp:
            ratio_u = f"{rate / uvicorn:.2f}x"
            ratio_h = f"{rate / hyp:.2f}x"
            met_u = "met" if rate >= 1.5 * uvicorn else "MISSED"
            met_h = "met" if rate >= 5 * hyp else "MISSED"
            goals = f"{met_u}/{met_h}"
        print(
            f"{case.label:44} {case.proto:5} {rate:10,.0f} {best['bytes'] / events:8.1f}"
            f" {ratio_u:>10} {ratio_h:>10} {of_floor:>8}  {goals}"
        )
    print("uvicorn has no HTTP/2: the 'x uvicorn' of h2 rows compares with its HTTP/1.1")
    print("number.  Goals (last column, uvicorn/hyp-trio): >= 1.5x uvicorn, >= 5x hyp-trio.")
    print("Floor: the same bytes, encoded before the request, written by a blocking loop")
    print("(bench/peers/raw_floor.py); 'of floor' compares with it on the same protocol.")


# -- (b) many idle subscribers, one event -------------------------------------------


def client_b(port: int, n: int, path_topic: str) -> None:
    """Open *n* subscribers, say READY, wait for GO, publish, report latencies."""
    _raise_nofile()
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    got_head: set[int] = set()
    heads: dict[int, bytes] = {}  # what arrived before a subscriber's status line did
    status_line = b"HTTP/1.1 200"
    request = (
        f"GET /topics/{path_topic}/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    batch = 250
    opened = 0
    deadline = time.monotonic() + 120
    while len(got_head) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(got_head)} of {n} subscribers connected")
        # Keep at most `batch` connections in progress.
        while opened < n and opened - len(got_head) < batch:
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((HOST, port))
            socks[s.fileno()] = s
            ep.register(s.fileno(), select.EPOLLOUT)
            opened += 1
        for fd, mask in ep.poll(1.0):
            s = socks[fd]
            if mask & select.EPOLLOUT:
                s.send(request)
                ep.modify(fd, select.EPOLLIN)
            elif mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                data = s.recv(65536)
                if not data:
                    raise RuntimeError(f"a subscriber was closed: {heads.get(fd, b'')[:200]!r}")
                if fd in got_head:
                    # Opened already: a heartbeat (or any other part of the stream)
                    # arriving while the others connect.  Only the head is checked.
                    continue
                head = heads[fd] = heads.get(fd, b"") + data
                if len(head) < len(status_line) and status_line.startswith(head):
                    continue  # the status line, split: wait for the rest
                if not head.startswith(status_line):
                    raise RuntimeError(f"bad answer: {head[:200]!r}")
                del heads[fd]
                got_head.add(fd)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    marker = b"marker-%d" % time.time_ns()
    body = b"data " + marker
    publish = (
        f"POST /topics/{path_topic} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pub = socket.create_connection((HOST, port))
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    arrived: dict[int, float] = {}
    tails: dict[int, bytes] = {}
    start = time.perf_counter()
    pub.sendall(publish)
    deadline = time.monotonic() + 60
    while len(arrived) < n and time.monotonic() < deadline:
        for fd, _mask in ep.poll(1.0):
            s = socks[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                continue
            window = tails.get(fd, b"") + data
            if fd not in arrived and marker in window:
                arrived[fd] = time.perf_counter() - start
            tails[fd] = window[-64:]
    answer = pub.recv(4096)
    pub.close()
    latencies = sorted(arrived.values())
    result = {
        "received": len(latencies),
        "publish_answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
    }
    if latencies:
        result.update(
            p50=statistics.median(latencies) * 1000,
            p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            max=latencies[-1] * 1000,
        )
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # hold the connections until the parent has what it needs
    for s in socks.values():
        s.close()


def bench_b(connections: int) -> None:
    rows = []
    for server_name in ("tidings", "uvicorn"):
        with _server(server_name, 1000) as running:
            pid = running.process.pid
            # Warm up: one subscriber and one publish, so that lazily built state
            # (modules, the heartbeat ticker, ...) is not counted per connection.
            _one_round(running.port, 1, "warmup")
            time.sleep(0.5)
            before = _rss_kib(pid)
            command = [sys.executable, __file__, "_client-b", str(running.port),
                       str(connections), "bench"]  # fmt: skip
            client = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            try:
                assert client.stdin is not None
                assert client.stdout is not None
                line = client.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"client failed: {line!r}")
                time.sleep(1.0)
                after = _rss_kib(pid)
                client.stdin.write("GO\n")
                client.stdin.flush()
                result = json.loads(client.stdout.readline())
                client.stdin.write("END\n")
                client.stdin.flush()
                client.wait(CLIENT_B_TIMEOUT)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            result["kib_per_conn"] = (after - before) / connections
            result["rss_before"] = before
            result["rss_after"] = after
            rows.append((server_name, result))
        print(f"  ... {server_name} done", file=sys.stderr, flush=True)
    print()
    print(f"(b) {connections} idle SSE subscribers (HTTP/1.1), then one published event")
    header = (
        f"{'server':28} {'got it':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'RSS before':>11} {'RSS after':>10} {'KiB/conn':>9}"
    )
    print(header)
    print("-" * len(header))
    names = {"tidings": "tidings", "uvicorn": "sse-starlette on uvicorn"}
    for name, r in rows:
        print(
            f"{names[name]:28} {r['received']:7} {r.get('p50', float('nan')):8.1f}"
            f" {r.get('p99', float('nan')):8.1f} {r.get('max', float('nan')):8.1f}"
            f" {r['rss_before']:8} KiB {r['rss_after']:6} KiB {r['kib_per_conn']:9.2f}"
        )
    print("Latency from sending the publish POST to each subscriber's read of the event,")
    print("measured in the client process.  Goals: p99 <= 250 ms, <= 10 KiB per connection.")


def _one_round(port: int, n: int, topic: str) -> None:
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port))
        s.sendall(f"GET /topics/{topic}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(65536)
        socks.append(s)
    with socket.create_connection((HOST, port)) as pub:
        pub.sendall(
            f"POST /topics/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".encode()
        )
        pub.recv(4096)
    for s in socks:
        s.settimeout(5)
        s.recv(65536)
        s.close()


# -- main ------------------------------------------------------------------------------


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {sys.version.split()[0]}", f"{os.cpu_count()} CPUs"]
    for name in ("tidings", "h11", "h2", "trio", "uvicorn", "hypercorn", "sse-starlette"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} ?")
    # uvicorn picks httptools and uvloop when they are installed: say which it uses.
    extras = []
    for name in ("httptools", "uvloop"):
        try:
            version(name)
            extras.append(name)
        except PackageNotFoundError:
            pass
    parts.append(f"uvicorn with {' + '.join(extras) if extras else 'h11 on asyncio'}")
    return ", ".join(parts)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_client-a":
        proto, port, path, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        print(json.dumps(client_a(proto, port, path, n)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client-b":
        client_b(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="events per stream in (a)")
    parser.add_argument("--connections", type=int, default=10_000, help="subscribers in (b)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case in (a), best kept")
    parser.add_argument("--only", choices=("a", "b"), help="run only part a or b")
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run (a)'s live cases with tidings imported from DIR (a src/ directory, "
        "e.g. from `git archive <commit> src`), labelled 'baseline'",
    )
    args = parser.parse_args()
    global BASELINE_SRC
    BASELINE_SRC = str(Path(args.baseline_src).resolve()) if args.baseline_src else ""
    _raise_nofile()
    print(_versions(), flush=True)
    if args.only in (None, "a"):
        bench_a(args.events, args.repeat)
    if args.only in (None, "b"):
        bench_b(args.connections)


if __name__ == "__main__":
    main()
