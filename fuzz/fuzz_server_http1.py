"""atheris harness: the whole server over HTTP/1.1, through ``Server.serve_stream``.

Each input is one connection over :func:`trio.testing.memory_stream_pair`, run
under :class:`trio.testing.MockClock` with ``autojump_threshold=0`` so that every
timer (header, body and idle timeouts, heartbeats, pings, long-poll holds) fires
at once in virtual time.  What the client sends is either raw bytes or,
structure-aware, a pipeline of requests built from the input:

- a request line from lists of methods, targets (every endpoint, with good and
  bad topics, cursors and query parameters) and versions;
- headers from a dictionary (``host``, ``content-length`` right, wrong and
  repeated, ``transfer-encoding``, ``last-event-id``, ``if-none-match``,
  ``expect``, ``idempotency-key``, ``origin``, the WebSocket handshake fields...),
  now and then with a raw value;
- a body sent as declared, chunked (with extensions, trailers or a lying size)
  or cut short;
- after a WebSocket handshake, masked frames carrying ``tidings.v1`` messages,
  garbage, pings, binary, fragments and closes.

The bytes go out in fuzzer-cut pieces with virtual pauses between them, events
are published to the hub meanwhile (an authorisation hook refuses some topics),
then the client half-closes or not, reads for a while and closes.

Invariants: the server task ends within bounded virtual time after the client
closes, no exception escapes it, nothing is logged at WARNING or above (the
server logs any exception it catches that way), nothing of the connection is left
(its count, the hub's subscriptions, the server's set of connections all go back
to zero), and whatever it sent begins as an HTTP/1.1 response.

Run: ``python fuzz/fuzz_server_http1.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import logging
import random
import sys

import atheris
import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol, Opcode

with atheris.instrument_imports(include=["tidings"]):
    from tidings.history import MemoryHistory
    from tidings.trio import Action, Hub, Refusal, Request, Server, ServerConfig

_METHODS = ["GET"] * 6 + ["POST"] * 3 + ["HEAD", "OPTIONS", "DELETE", "PUT", "G T", "PRI", ""]
_TARGETS = [
    "/healthz",
    "/readyz",
    "/topics/t/events",
    "/topics/t/events?last-event-id=earliest",
    "/topics/t/events?last-event-id=junk",
    "/topics/t/poll?timeout=0",
    "/topics/t/poll?timeout=5&limit=2",
    "/topics/t/poll?cursor=earliest&timeout=0.5",
    "/topics/t/poll?cursor=junk",
    "/topics/t/poll?timeout=1&timeout=2",
    "/topics/t",
    "/topics/t?event=greeting",
    "/topics/t?event=%0A",
    "/topics/secret/events",
    "/topics/private",
    "/ws",
    "/ws?x=1",
    "*",
    "/",
    "/topics/%zz/events",
    "/topics/a%2Fb/poll",
    "/topics/" + "x" * 129,
    "http://test/healthz",
    "/topics/t/events#frag",
    "/topics/t/events?" + "a=1&" * 40,
]
_VERSIONS = ["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "http/1.1", ""]
_HEADERS = [
    ("host", "test"),
    ("content-length", "0"),
    ("content-length", "5"),
    ("content-length", "-1"),
    ("content-length", "99999999999999999999"),
    ("transfer-encoding", "chunked"),
    ("transfer-encoding", "gzip, chunked"),
    ("transfer-encoding", "identity"),
    ("last-event-id", "earliest"),
    ("last-event-id", "junk"),
    ("if-none-match", '"junk"'),
    ("if-none-match", "*"),
    ("expect", "100-continue"),
    ("expect", "nonsense"),
    ("idempotency-key", "key-1"),
    ("idempotency-key", "bad key"),
    ("origin", "http://evil.example"),
    ("origin", "http://test"),
    ("connection", "close"),
    ("connection", "keep-alive"),
    ("connection", "upgrade"),
    ("upgrade", "websocket"),
    ("upgrade", "h2c"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-version", "8"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-key", "short"),
    ("sec-websocket-protocol", "tidings.v1"),
    ("sec-websocket-protocol", "other, tidings.v1"),
    ("sec-websocket-extensions", "permessage-deflate"),
    ("accept", "text/event-stream"),
    ("accept-encoding", "gzip"),
    ("authorization", "Bearer x"),
    ("cookie", "a=b; c"),
    ("x-long", "v" * 2000),
    ("bad name", "x"),
    ("x-ctl", "a\x00b"),
]
_WS_HANDSHAKE = [
    ("host", "test"),
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-protocol", "tidings.v1"),
]
_WS_MESSAGES = [
    '{"type":"subscribe","topic":"t"}',
    '{"type":"subscribe","topic":"t","cursor":"earliest"}',
    '{"type":"subscribe","topic":"t","cursor":"junk.5"}',
    '{"type":"subscribe","topic":"secret"}',
    '{"type":"unsubscribe","topic":"t"}',
    '{"type":"publish","topic":"t","msg_id":"m1","data":"x"}',
    '{"type":"publish","topic":"t","msg_id":"m1","data":"x","event":"e"}',
    '{"type":"publish","topic":"private","msg_id":"m2","data":"y"}',
    '{"type":"publish","topic":"t","msg_id":"m3","data":"' + "z" * 300 + '"}',
    '{"type":"nonsense"}',
    "not json",
    "[" * 2000,
]
_PAUSES = [0.0, 0.0, 0.0, 0.01, 1.0, 5.0, 11.0, 16.0, 31.0, 61.0]
_EPOCH = "fuzz"


async def _auth(request: Request, action: Action, topic: str | None) -> Refusal | None:
    if topic == "secret":
        return Refusal(403, "no")
    if topic == "private" and action is Action.PUBLISH:
        return Refusal(401, "who are you", [(b"www-authenticate", b"Bearer")])
    return None


def _chunked(fdp: atheris.FuzzedDataProvider, body: bytes) -> bytes:
    out = b""
    while body:
        size = fdp.ConsumeIntInRange(1, max(1, len(body)))
        piece, body = body[:size], body[size:]
        declared = size if fdp.ConsumeIntInRange(0, 7) else size + fdp.ConsumeIntInRange(-2, 2)
        extension = b";x=y" if fdp.ConsumeIntInRange(0, 7) == 0 else b""
        out += b"%x%s\r\n%s\r\n" % (max(declared, 0), extension, piece)
    trailer = b"x-trailer: 1\r\n" if fdp.ConsumeIntInRange(0, 7) == 0 else b""
    return out + b"0\r\n" + trailer + b"\r\n"


def _ws_frames(fdp: atheris.FuzzedDataProvider) -> bytes:
    framer = FrameProtocol(client=True, extensions=[])
    out = b""
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        kind = fdp.ConsumeIntInRange(0, 9)
        if kind <= 4:
            out += framer.send_data(fdp.PickValueInList(_WS_MESSAGES), fin=True)
        elif kind == 5:
            text = fdp.PickValueInList(_WS_MESSAGES)
            out += framer.send_data(text[:5], fin=False) + framer.send_data(text[5:], fin=True)
        elif kind == 6:
            out += framer.ping(b"p")
        elif kind == 7:
            out += framer.send_data(b"\x00\x01", fin=True)
        elif kind == 8:
            out += framer.close(fdp.PickValueInList([1000, 1001, 1002, 4000]), "bye")
        else:
            out += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    if fdp.ConsumeIntInRange(0, 7) == 0:
        out += framer._serialize_frame(Opcode.PONG, b"tidings-1")
    return out


def _request(fdp: atheris.FuzzedDataProvider) -> bytes:
    target = fdp.PickValueInList(_TARGETS)
    # The method the endpoint expects, unless the fuzzer picks another: short inputs
    # (which libFuzzer prefers) then still reach the handlers.
    if fdp.ConsumeIntInRange(0, 3):
        method = "POST" if target.startswith(("/topics/t?", "/topics/private")) else "GET"
        method = "POST" if target == "/topics/t" else method
    else:
        method = fdp.PickValueInList(_METHODS)
    websocket = target.startswith("/ws") and fdp.ConsumeIntInRange(0, 3) != 0
    headers = list(_WS_HANDSHAKE) if websocket else [("host", "test")]
    if fdp.ConsumeIntInRange(0, 15) == 0:
        headers.pop(fdp.ConsumeIntInRange(0, len(headers) - 1))
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        headers.append(fdp.PickValueInList(_HEADERS))
    body = b""
    if method == "POST" or fdp.ConsumeIntInRange(0, 7) == 0:
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
        encoding = fdp.ConsumeIntInRange(0, 3)
        if encoding == 0:
            headers.append(("content-length", str(len(body))))
        elif encoding == 1:
            headers.append(("transfer-encoding", "chunked"))
            body = _chunked(fdp, body)
        elif encoding == 2:
            headers.append(("content-length", str(len(body) + fdp.ConsumeIntInRange(1, 9))))
    head = f"{method} {target} {fdp.PickValueInList(_VERSIONS)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if fdp.ConsumeIntInRange(0, 15) == 0:
        head += fdp.ConsumeBytes(8).decode("latin-1")
    out = head.encode("latin-1") + b"\r\n" + body
    if websocket:
        out += _ws_frames(fdp)
    return out


async def _publisher(hub: Hub, count: int) -> None:
    for index in range(count):
        await trio.sleep(3.0)
        await hub.publish(random.Random(index).choice(["t", "t", "u"]), f"event {index}")


async def _scenario(data: bytes) -> None:
    # The first byte picks raw mode (even: the rest is sent as it is, so that a seed
    # is that byte and a request from the tests) or structure-aware mode (odd).
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:] if mode & 1 else b"")
    hub = Hub(MemoryHistory(_EPOCH, max_events=8), max_pending_events=4)
    for index in range(fdp.ConsumeIntInRange(0, 3)):
        await hub.publish("t", f"old {index}")
    config = ServerConfig(
        max_header_size=fdp.PickValueInList([256, 2048, 16 * 1024]),
        max_body_size=fdp.PickValueInList([0, 16, 1024]),
        subscriber_max_events=4,
        auth=_auth if fdp.ConsumeBool() else None,
    )
    server = Server(hub, config)
    if mode & 1:
        wire = b"".join(_request(fdp) for _ in range(fdp.ConsumeIntInRange(1, 4)))
    else:
        wire = data[1:]
    cuts = sorted({fdp.ConsumeIntInRange(0, len(wire)) for _ in range(fdp.ConsumeIntInRange(0, 4))})
    pauses = [fdp.PickValueInList(_PAUSES) for _ in cuts]
    half_close = fdp.ConsumeBool()
    drain_at = fdp.PickValueInList([None, None, None, 2.0, 40.0])
    client, remote = trio.testing.memory_stream_pair()
    received = bytearray()

    async def talk() -> None:
        start = 0
        try:
            for cut, pause in zip(cuts, pauses, strict=True):
                await client.send_all(wire[start:cut])
                start = cut
                await trio.sleep(pause)
            await client.send_all(wire[start:])
            if half_close:
                await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def read() -> None:
        try:
            while data := await client.receive_some():
                received.extend(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    served = trio.Event()

    async def serve() -> None:
        await server.serve_stream(remote)
        served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(_publisher, hub, fdp.ConsumeIntInRange(0, 3))
        with trio.move_on_after(120):  # virtual seconds: event streams never end
            async with trio.open_nursery() as inner:
                inner.start_soon(read)
                await talk()
                if drain_at is not None:
                    await trio.sleep(drain_at)
                    server.drain()
        await client.aclose()
        # Once the client is gone the connection must end promptly.
        with trio.fail_after(60):
            await served.wait()
        nursery.cancel_scope.cancel()  # the publisher
    # Nothing of the connection is left behind: no count, no subscription, no entry.
    left = (server.connection_count, hub.subscriber_count(), len(server.app.connections))
    if left != (0, 0, 0):
        raise AssertionError(f"left behind (connections, subscriptions, entries): {left}")
    if received and not received.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"not an HTTP/1.1 response: {bytes(received[:60])!r}")


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_HANDLER = _Keep()
logging.getLogger("tidings").addHandler(_HANDLER)
logging.getLogger("tidings").propagate = False


def test_one_input(data: bytes) -> None:
    _HANDLER.records.clear()
    trio.run(_scenario, data, clock=trio.testing.MockClock(autojump_threshold=0))
    if _HANDLER.records:
        record = _HANDLER.records[0]
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        raise AssertionError(f"logged: {record.getMessage()}\n{trace}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
