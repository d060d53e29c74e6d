"""atheris harness: the whole server over HTTP/2 (prior knowledge), through
``Server.serve_stream``.

Plain bytes never get past the connection preface and the HPACK decoder, so in
structure-aware mode the input is a program for an :mod:`h2` client connection,
which writes valid frames: requests on new streams (every endpoint, with
``last-event-id``, ``if-none-match``, ``content-length`` and other fields, now and
then a malformed header list), request bodies in pieces, stream resets, pings,
settings, window updates and priorities.  The frames are then mutated: some are
interleaved with frames of any type, flags, stream and payload (CONTINUATION
included), bytes are flipped, or the sequence is cut.  In raw mode the input
follows the preface and an empty SETTINGS frame as it is.

The bytes go out in fuzzer-cut pieces with virtual pauses (the clock is a
:class:`trio.testing.MockClock` with ``autojump_threshold=0``, so timeouts,
heartbeats and flood windows pass at once), events are published meanwhile, and
the client reads everything, then closes.

Invariants: the server task ends within bounded virtual time after the client
closes, no exception escapes it, nothing is logged at WARNING or above, and
nothing of the connection is left (its count, the hub's subscriptions, the
server's set of connections all go back to zero).

Run: ``python fuzz/fuzz_server_h2.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import logging
import sys
from contextlib import suppress

import atheris
import h2.config
import h2.connection
import h2.settings
import trio
import trio.testing

with atheris.instrument_imports(include=["tidings"]):
    from tidings.history import MemoryHistory
    from tidings.trio import Hub, Server, ServerConfig
    from tidings.trio.server._h2 import PREFACE

_PATHS = [
    "/healthz",
    "/readyz",
    "/topics/t/events",
    "/topics/t/events?last-event-id=earliest",
    "/topics/t/poll?timeout=0",
    "/topics/t/poll?timeout=5",
    "/topics/t/poll?cursor=earliest&limit=1",
    "/topics/t",
    "/topics/t?event=e",
    "/ws",
    "*",
    "/nope",
    "/topics/%zz/events",
]
_METHODS = ["GET", "GET", "GET", "POST", "POST", "HEAD", "OPTIONS", "DELETE", "CONNECT"]
_EXTRA = [
    ("last-event-id", "earliest"),
    ("last-event-id", "junk.1"),
    ("if-none-match", '"junk"'),
    ("content-length", "3"),
    ("content-length", "x"),
    ("idempotency-key", "k"),
    ("origin", "http://evil.example"),
    ("x-long", "v" * 3000),
    ("te", "trailers"),
    ("te", "gzip"),
    ("connection", "close"),
    ("upgrade", "websocket"),
    ("cookie", "a=b"),
    ("cookie", "c=d"),
]
_SETTINGS = [
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE,
    h2.settings.SettingCodes.MAX_FRAME_SIZE,
    h2.settings.SettingCodes.HEADER_TABLE_SIZE,
    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS,
    h2.settings.SettingCodes.ENABLE_PUSH,
]
_SETTING_VALUES = [0, 1, 100, 16384, 65535, 2**24 - 1, 2**31 - 1]
_PAUSES = [0.0, 0.0, 0.0, 0.01, 1.0, 5.0, 11.0, 16.0, 31.0, 61.0]


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return head + stream_id.to_bytes(4, "big") + payload


def _headers(fdp: atheris.FuzzedDataProvider) -> list[tuple[bytes, bytes]]:
    path = fdp.PickValueInList(_PATHS)
    # The method the endpoint expects, unless the fuzzer picks another: short inputs
    # (which libFuzzer prefers) then still reach the handlers.
    if fdp.ConsumeIntInRange(0, 3):
        method = "POST" if path.startswith("/topics/t") and "/" not in path[9:] else "GET"
    else:
        method = fdp.PickValueInList(_METHODS)
    headers = [
        (b":method", method.encode()),
        (b":path", path.encode()),
        (b":scheme", b"http"),
        (b":authority", b"test"),
    ]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name, value = fdp.PickValueInList(_EXTRA)
        headers.append((name.encode(), value.encode()))
    if fdp.ConsumeIntInRange(0, 7) == 0:
        del headers[fdp.ConsumeIntInRange(0, 3)]  # a pseudo-header missing
    return headers


def _step(
    fdp: atheris.FuzzedDataProvider,
    conn: h2.connection.H2Connection,
    streams: list[int],
    pieces: list[bytes],
) -> None:
    """One step of the client's program."""
    choice = fdp.ConsumeIntInRange(0, 10)
    if choice <= 3 or not streams:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, _headers(fdp), end_stream=fdp.ConsumeBool())
        streams.append(stream_id)
    elif choice <= 5:
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        conn.send_data(fdp.PickValueInList(streams), data, end_stream=fdp.ConsumeBool())
    elif choice == 6:
        conn.reset_stream(fdp.PickValueInList(streams), fdp.ConsumeIntInRange(0, 13))
    elif choice == 7:
        conn.ping(fdp.ConsumeBytes(8).ljust(8, b"\0"))
    elif choice == 8:
        setting = fdp.PickValueInList(_SETTINGS)
        conn.update_settings({setting: fdp.PickValueInList(_SETTING_VALUES)})
    elif choice == 9:
        stream_id = fdp.PickValueInList([0, *streams])
        conn.increment_flow_control_window(
            fdp.PickValueInList([1, 100, 65535, 2**31 - 1]),
            stream_id=stream_id or None,
        )
    else:
        pieces.append(conn.data_to_send())
        # A frame of any type, flags, stream and payload.
        pieces.append(
            _frame(
                fdp.ConsumeIntInRange(0, 12),
                fdp.ConsumeIntInRange(0, 255),
                fdp.PickValueInList([0, 1, 2, 3, 5, 2**31 - 1, *streams]),
                fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)),
            )
        )


def _program(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Frames written by an h2 client for a fuzzer-chosen program, then mutated."""
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    pieces = [conn.data_to_send()]
    streams: list[int] = []
    for _ in range(fdp.ConsumeIntInRange(1, 12)):
        with suppress(Exception):  # h2's client side refused: on to the next step
            _step(fdp, conn, streams, pieces)
        pieces.append(conn.data_to_send())
    wire = b"".join(pieces)
    for _ in range(fdp.ConsumeIntInRange(0, 3) // 2 * fdp.ConsumeIntInRange(0, 3)):
        # Flip a byte after the preface.
        at = fdp.ConsumeIntInRange(len(PREFACE), max(len(PREFACE), len(wire) - 1))
        if at < len(wire):
            wire = wire[:at] + bytes([fdp.ConsumeIntInRange(0, 255)]) + wire[at + 1 :]
    return wire


async def _publisher(hub: Hub, count: int) -> None:
    for index in range(count):
        await trio.sleep(3.0)
        await hub.publish("t", f"event {index}")


async def _scenario(data: bytes) -> None:
    # The first byte picks raw mode (even: the rest follows the preface and an empty
    # SETTINGS frame as it is, so that a seed is that byte and frames from the tests)
    # or structure-aware mode (odd).
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:] if mode & 1 else b"")
    hub = Hub(MemoryHistory("fuzz", max_events=8), max_pending_events=4)
    for index in range(fdp.ConsumeIntInRange(0, 3)):
        await hub.publish("t", f"old {index}")
    config = ServerConfig(
        max_concurrent_streams=fdp.PickValueInList([2, 100]),
        max_stream_resets=fdp.PickValueInList([2, 200]),
        max_settings_frames=fdp.PickValueInList([2, 50]),
        max_ping_frames=fdp.PickValueInList([2, 50]),
        max_header_size=fdp.PickValueInList([512, 16 * 1024]),
        max_body_size=fdp.PickValueInList([0, 16, 1024]),
        subscriber_max_events=4,
    )
    server = Server(hub, config)
    if mode & 1:
        wire = _program(fdp)
    else:
        wire = PREFACE + _frame(0x4, 0, 0, b"") + data[1:]
    cuts = sorted({fdp.ConsumeIntInRange(0, len(wire)) for _ in range(fdp.ConsumeIntInRange(0, 4))})
    pauses = [fdp.PickValueInList(_PAUSES) for _ in cuts]
    half_close = fdp.ConsumeBool()
    drain_at = fdp.PickValueInList([None, None, None, 2.0, 40.0])
    client, remote = trio.testing.memory_stream_pair()

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
            while await client.receive_some():
                pass
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
