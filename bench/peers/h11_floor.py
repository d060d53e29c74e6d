"""The floors of bench/bench_longpoll.py (b): one request and its answer, nothing else.

    python bench/peers/h11_floor.py PORT [--trio | --raw]

A single-threaded ``epoll`` loop over non-blocking sockets on 127.0.0.1 (no event
loop library, no routing, no application): every request on a keep-alive
connection gets the same ``200`` answer, a long-poll body holding one event, the
size of tidings' answer in that bench.

- default: ``h11`` parses each request and serialises each answer (``Response``,
  ``Data``, ``EndOfMessage``), then ``start_next_cycle``: what HTTP/1.1 through
  h11 costs a Python server per round, before anything of its own;
- ``--trio``: the same h11 round in one Trio task per connection (``serve_tcp``,
  ``receive_some``, ``send_all``): what Trio adds to h11, before any application;
- ``--raw``: no HTTP library at all -- a request ends at the first blank line and
  the answer is a constant: what the system calls (one ``recv``, one ``send`` per
  round) and the client cost.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
from functools import partial

import h11

# The size and shape of tidings' answer in that bench (one event, its cursor).
BODY = (
    b'{"events":[{"id":"kgle10cpzbc2_030ayr.2","event":null,"data":"{\\"user\\": '
    b'\\"alice\\", \\"text\\": \\"hello world\\", \\"n\\": 2}"}],'
    b'"cursor":"kgle10cpzbc2_030ayr.2","reset":false}'
)
HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"etag", b'"kgle10cpzbc2_030ayr.2"'),
    (b"content-length", str(len(BODY)).encode()),
]


def _raw(status: bytes) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS)
    return b"HTTP/1.1 " + status + b" \r\n" + lines + b"\r\n" + BODY


RAW_ANSWER = _raw(b"200")
RAW_CREATED = _raw(b"201")  # the bench's set-up POSTs expect 201


def serve(port: int, raw: bool) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    conns: dict[int, h11.Connection] = {}
    pending: dict[int, bytes] = {}
    while True:
        for fd, _mask in ep.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        s, _ = listener.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    socks[s.fileno()] = s
                    conns[s.fileno()] = h11.Connection(h11.SERVER)
                    pending[s.fileno()] = b""
                    ep.register(s.fileno(), select.EPOLLIN)
                continue
            s = socks[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del socks[fd], conns[fd], pending[fd]
                s.close()
                continue
            out = []
            if raw:
                buffer = pending[fd] + data
                while (end := buffer.find(b"\r\n\r\n")) >= 0:
                    length = 0
                    if buffer.startswith(b"POST"):
                        head = buffer[:end].lower()
                        at = head.find(b"content-length:")
                        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
                    if len(buffer) < end + 4 + length:
                        break
                    buffer = buffer[end + 4 + length :]
                    out.append(RAW_CREATED if length else RAW_ANSWER)
                pending[fd] = buffer
            else:
                conn = conns[fd]
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA or event is h11.PAUSED:
                        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                            conn.start_next_cycle()
                            continue
                        break
                    if isinstance(event, h11.Request):
                        status = 201 if event.method == b"POST" else 200
                        out.append(conn.send(h11.Response(status_code=status, headers=HEADERS)))
                        out.append(conn.send(h11.Data(data=BODY)))
                        out.append(conn.send(h11.EndOfMessage()))
                    elif isinstance(event, h11.ConnectionClosed):
                        break
            if out:
                s.send(b"".join(part for part in out if part))


def serve_trio(port: int) -> None:
    """The h11 loop as one Trio task per connection (``trio.serve_tcp``)."""
    import trio

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await rounds(stream)

    async def rounds(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                status = 201 if event.method == b"POST" else 200
                parts = [
                    conn.send(h11.Response(status_code=status, headers=HEADERS)),
                    conn.send(h11.Data(data=BODY)),
                    conn.send(h11.EndOfMessage()),
                ]
                await stream.send_all(b"".join(part for part in parts if part))
            elif isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE:
                    conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    trio.run(partial(trio.serve_tcp, handler, port, host="127.0.0.1"))


if __name__ == "__main__":
    if "--trio" in sys.argv[2:]:
        serve_trio(int(sys.argv[1]))
    else:
        serve(int(sys.argv[1]), "--raw" in sys.argv[2:])
