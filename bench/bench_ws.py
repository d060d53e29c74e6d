"""WebSocket broadcast: the tidings Trio server against a python-websockets 17 server.

Two measurements, each server in its own process and the clients in another:

* **broadcast throughput** -- ``--sessions`` (1 000) sessions follow one topic; the
  server publishes ``--messages`` events as fast as it can (``--burst`` at a time,
  then it yields); the time from "go" until every client has every byte gives
  deliveries per second (sessions x messages / time);
* **memory per idle session** -- RSS of the server process with ``--idle`` (5 000)
  subscribed, idle sessions, minus its RSS before they connected, divided by their
  number.

The peer is ``websockets.asyncio.server`` (python-websockets 17 on asyncio:
websockets has no Trio server), serving the same handshake (subprotocol
``tidings.v1``, no compression, no pings during the run), answering the same
``subscribe`` with the same ``subscribed`` message and broadcasting byte-identical
event messages with ``websockets.asyncio.server.broadcast``.  Both servers are told
to yield to their event loop after every ``--burst`` messages.

The clients are plain non-blocking sockets on ``selectors`` (one process): they
do the handshake and subscribe, then only count bytes, so the client side costs
the same for both servers.

    python bench/bench_ws.py                       # both servers, default sizes
    python bench/bench_ws.py --sessions 200 --messages 100 --idle 1000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tidings.cursor import Position
from tidings.ws import EventMessage, SubscribedMessage

TOPIC = "bench"
EPOCH = "benchepoch"
PAYLOAD = "x" * 64


def event_text(index: int) -> str:
    """The JSON text of event *index* (1-based), as tidings sends it."""
    return EventMessage(TOPIC, Position(EPOCH, index).format(), f"{index}:{PAYLOAD}").encode()


def frame_size(text: str) -> int:
    size = len(text.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


# ------------------------------------------------------------------------- servers


def run_tidings(port_file: str) -> None:
    import trio

    from tidings.history import MemoryHistory
    from tidings.trio import Hub, ServerConfig, WebSocketConfig, serve

    async def main() -> None:
        hub = Hub(MemoryHistory(EPOCH, max_events=100_000, max_bytes=512 * 1024 * 1024))
        config = ServerConfig(
            max_connections=20_000,
            websocket=WebSocketConfig(ping_interval=1e6, pong_timeout=1e6),
            subscriber_max_events=100_000,
            subscriber_max_bytes=256 * 1024 * 1024,
        )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve(hub, 0, config=config, task_status=task_status)
            )
            _announce(port_file, server.port)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line or line.startswith("quit"):
                    nursery.cancel_scope.cancel()
                    return
                _, count, burst = line.split()
                for start in range(1, int(count) + 1, int(burst)):
                    for index in range(start, min(start + int(burst), int(count) + 1)):
                        hub.publish_nowait(TOPIC, f"{index}:{PAYLOAD}")
                    await trio.lowlevel.checkpoint()
                print("published", flush=True)

    trio.run(main)


def run_websockets(port_file: str) -> None:
    import logging

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.typing import Subprotocol

    # The byte-counting clients leave without a closing handshake: not news.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)

    clients: set[ServerConnection] = set()
    head = Position(EPOCH, 0)

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                request = json.loads(message)
                if request.get("type") == "subscribe" and request.get("topic") == TOPIC:
                    clients.add(ws)
                    await ws.send(SubscribedMessage(TOPIC, head.format()).encode())
        finally:
            clients.discard(ws)

    async def main() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("tidings.v1")],
            compression=None,
            ping_interval=None,
            max_queue=None,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            _announce(port_file, port)
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line or line.startswith("quit"):
                    return
                _, count, burst = line.split()
                for start in range(1, int(count) + 1, int(burst)):
                    for index in range(start, min(start + int(burst), int(count) + 1)):
                        broadcast(clients, event_text(index))
                    await asyncio.sleep(0)
                print("published", flush=True)

    asyncio.run(main())


def _announce(port_file: str, port: int) -> None:
    with open(port_file, "w") as f:
        f.write(str(port))


# ------------------------------------------------------------------------- clients


def _frame(text: str) -> bytes:
    """A masked client text frame (mask key 0: the server must unmask all the same)."""
    data = text.encode()
    size = len(data)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return header + b"\0\0\0\0" + data


def run_clients(port: int, sessions: int, messages: int) -> None:
    """Connect, handshake and subscribe *sessions* clients; print "ready"; on "go"
    on stdin count bytes until every client has *messages* events; print "done"."""
    selector = selectors.DefaultSelector()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Protocol: tidings.v1\r\n\r\n"
    ).encode()
    subscribe = _frame(json.dumps({"type": "subscribe", "topic": TOPIC}))
    socks: list[socket.socket] = []
    for _ in range(sessions):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request + subscribe)
        socks.append(sock)
    # Handshake answer + the "subscribed" frame, then nothing until "go".
    for sock in socks:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        while len(rest) < 2 or len(rest) < 2 + rest[1]:
            rest += sock.recv(65536)
        assert json.loads(rest[2 : 2 + rest[1]])["type"] == "subscribed"
        sock.setblocking(False)
    expected = sum(frame_size(event_text(i)) for i in range(1, messages + 1))
    print("ready", flush=True)
    while True:
        line = sys.stdin.readline()
        if not line or line.startswith("quit"):
            return
        remaining = {sock.fileno(): expected for sock in socks}
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while remaining:
            for key, _ in selector.select():
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                got = ready.recv_into(view)
                fd = ready.fileno()
                left = remaining[fd] - got
                if left <= 0:
                    del remaining[fd]
                    selector.unregister(ready)
                else:
                    remaining[fd] = left
        print("done", flush=True)


# ------------------------------------------------------------------------- driver


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Proc:
    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def say(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def expect(self, word: str) -> None:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line.strip() == word, (word, line)

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.say("quit")
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start_server(kind: str) -> tuple[Proc, int]:
    port_file = f"/tmp/bench_ws_{os.getpid()}_{kind}.port"
    if os.path.exists(port_file):
        os.unlink(port_file)
    server = Proc("--serve", kind, "--port-file", port_file)
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file) or not Path(port_file).read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.05)
    port = int(Path(port_file).read_text())
    os.unlink(port_file)
    return server, port


def throughput(kind: str, sessions: int, messages: int, burst: int, repeat: int) -> float:
    server, port = start_server(kind)
    clients = Proc("--clients", str(port), str(sessions), str(messages))
    try:
        clients.expect("ready")
        best = 0.0
        for _ in range(repeat):
            clients.say("go")
            start = time.perf_counter()
            server.say(f"go {messages} {burst}")
            clients.expect("done")
            elapsed = time.perf_counter() - start
            server.expect("published")
            best = max(best, sessions * messages / elapsed)
        return best
    finally:
        clients.stop()
        server.stop()


def memory_per_session(kind: str, idle: int) -> float:
    server, port = start_server(kind)
    time.sleep(0.5)
    before = _rss(server.p.pid)
    clients = Proc("--clients", str(port), str(idle), "1")
    try:
        clients.expect("ready")
        time.sleep(0.5)
        after = _rss(server.p.pid)
        return (after - before) / idle
    finally:
        clients.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1, help="messages per event-loop turn")
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default="tidings,websockets")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"tidings": run_tidings, "websockets": run_websockets}[args.serve](args.port_file)
        return
    if args.clients:
        run_clients(*args.clients)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, dict[str, Any]] = {}
    for kind in args.servers.split(","):
        rate = throughput(kind, args.sessions, args.messages, args.burst, args.repeat)
        memory = memory_per_session(kind, args.idle)
        results[kind] = {"deliveries_per_s": rate, "bytes_per_idle_session": memory}
        print(
            f"{kind:>10}: {rate:12,.0f} deliveries/s to {args.sessions} sessions "
            f"(burst {args.burst});  {memory / 1024:6.1f} KiB per idle session "
            f"({args.idle} sessions)",
            flush=True,
        )
    if "tidings" in results and "websockets" in results:
        t, w = results["tidings"], results["websockets"]
        speed = t["deliveries_per_s"] / w["deliveries_per_s"]
        memory = t["bytes_per_idle_session"] / w["bytes_per_idle_session"]
        print(f"tidings / websockets: throughput x{speed:.2f}, memory per session x{memory:.2f}")


if __name__ == "__main__":
    main()
