"""The physical floor of bench/bench_sse_server.py (a): pre-encoded bytes, a raw socket.

    python bench/peers/raw_floor.py --events 100000

Listens on 127.0.0.1 (a free port, printed as ``PORT <n>``) and serves one
connection at a time, in a blocking loop: no event loop, no HTTP library on the
data path, nothing computed per event.  Before listening it encodes the whole
stream once -- the same SSE bytes tidings sends (``id: <epoch>.<n>``, the same
payloads), in the framing of tidings' live path -- so that a client's time is
only what the kernel and the client itself cost.

- HTTP/1.1: a ``200`` head, then the events, each one chunk (as a tidings direct
  sink frames them);
- HTTP/2 (the client preface, cleartext): the ``h2`` library does the handshake
  and the response HEADERS, then the events go as DATA frames of up to 16 KiB on
  the request's stream, framed here (9-byte header), never acknowledged.

``GET /bulk`` writes the stream in 64 KiB ``send`` calls (the floor);
``GET /per-event`` makes one ``send`` per event (one DATA frame per event over
HTTP/2): what one system call per event costs, with nothing else.
"""

from __future__ import annotations

import argparse
import socket
import struct

import h2.config
import h2.connection
import h2.events

from tidings.cursor import Position, new_epoch
from tidings.sse.encoder import encode_event

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WRITE = 64 * 1024
FRAME = 16 * 1024
HEAD = (
    b"HTTP/1.1 200 \r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
)


def bench_payload(i: int) -> str:
    return f'{{"seq": {i}, "user": "alice", "text": "hello world", "ok": true}}'


def encode_all(count: int) -> list[bytes]:
    import random

    epoch = new_epoch(random.SystemRandom())
    return [
        encode_event(bench_payload(i), id=Position(epoch, i + 1).format()) for i in range(count)
    ]


def _batches(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def _data_frame(stream_id: int, payload: bytes) -> bytes:
    # RFC 9113 §4.1 and §6.1: length (24 bits), type 0 (DATA), flags 0, stream id.
    header = struct.pack(">I", len(payload))[1:] + b"\x00\x00" + struct.pack(">I", stream_id)
    return header + payload


class Streams:
    """Every pre-encoded form of the stream."""

    def __init__(self, events: list[bytes]) -> None:
        chunks = [b"%x\r\n%b\r\n" % (len(e), e) for e in events]
        self.h1_bulk = _batches(HEAD + b"".join(chunks), WRITE)
        self.h1_each = [HEAD, *chunks]
        # Events packed into DATA frames of at most FRAME bytes (whole events).
        frames: list[bytes] = []
        current: list[bytes] = []
        size = 0
        for event in events:
            if size + len(event) > FRAME and current:
                frames.append(b"".join(current))
                current, size = [], 0
            current.append(event)
            size += len(event)
        if current:
            frames.append(b"".join(current))
        self.h2_frames = frames
        self.h2_each = events


def _read_h1_request(conn: socket.socket, first: bytes) -> bytes:
    data = first
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("closed before the request ended")
        data += more
    return data.split(b" ", 2)[1]


def serve_h1(conn: socket.socket, first: bytes, streams: Streams) -> None:
    path = _read_h1_request(conn, first)
    if path.startswith(b"/per-event"):
        for chunk in streams.h1_each:
            conn.sendall(chunk)
    else:
        for chunk in streams.h1_bulk:
            conn.sendall(chunk)
    conn.sendall(b"0\r\n\r\n")


def serve_h2(conn: socket.socket, first: bytes, streams: Streams) -> None:
    h2conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    data = first
    request: h2.events.RequestReceived | None = None
    while request is None:
        for event in h2conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                request = event
        conn.sendall(h2conn.data_to_send())
        if request is None:
            data = conn.recv(65536)
            if not data:
                return
    stream_id = request.stream_id
    path = dict(request.headers or []).get(b":path", b"")
    h2conn.send_headers(
        stream_id,
        [(b":status", b"200"), (b"content-type", b"text/event-stream; charset=utf-8")],
    )
    conn.sendall(h2conn.data_to_send())
    if path.startswith(b"/per-event"):
        for event in streams.h2_each:
            conn.sendall(_data_frame(stream_id, event))
    else:
        wire = b"".join(_data_frame(stream_id, frame) for frame in streams.h2_frames)
        for chunk in _batches(wire, WRITE):
            conn.sendall(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    streams = Streams(encode_all(args.events))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("PORT", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                first = conn.recv(65536)
                if first.startswith(PREFACE[: len(first)]) and first[:3] == b"PRI":
                    serve_h2(conn, first, streams)
                else:
                    serve_h1(conn, first, streams)
                # Wait for the client to close (it stops at the last event).
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
            except OSError:
                pass


if __name__ == "__main__":
    main()
