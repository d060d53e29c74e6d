"""atheris harness: the EventSource client model (:class:`EventSourceClient`).

The input is a program of connections: each gets a response head (any status,
including ones no HTTP server should send, with ``Content-Type``, ``Retry-After``
and ``Date`` fields drawn from a dictionary), then body chunks -- raw bytes or
lines built from the SSE field names (``id`` values with spaces, NULs and line
ends, huge ``retry`` values) -- and ends with the end of the body, a network
error, a timer or the user's ``close``.  Small parser limits make the limit errors
reachable.

Invariants, after every step:

- only :class:`~tidings.errors.RemoteProtocolError` (from :meth:`receive_data`,
  which then leaves the client closed with :attr:`last_event_id` as before the
  chunk) and :class:`~tidings.errors.LocalProtocolError` for a call in the wrong
  state (which changes nothing);
- :attr:`last_event_id` can always be sent back in a header (h11 takes it); the
  reconnection time is finite, ``>= 0`` and at most the configured maximum; a
  waiting client has a finite deadline, any other has none.

Run: ``python fuzz/fuzz_sse_client.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import math
import random
import sys

import atheris
import h11

with atheris.instrument_imports(include=["tidings"]):
    from tidings.errors import LocalProtocolError, RemoteProtocolError
    from tidings.sse.client import EventSourceClient, EventSourceState

_STATUSES = [200, 200, 200, 200, 204, 301, 404, 408, 429, 500, 503, 100, 600, 999]
_TYPES = [b"text/event-stream", b"Text/Event-Stream; charset=utf-8", b"text/html", b""]
_TYPES += [b'text/event-stream;x="a,b"', b"text/event-stream, text/html", b"\xff"]
_FIELDS = [b"data", b"id", b"event", b"retry", b"", b":comment", b"dat"]
_VALUES = [b"", b" x", b"1", b"e.1", b" e.2 ", b"a\x00b", b"\xc3\xa9", b"\xff", b"9" * 400]
_VALUES += [b"x\x0bx", b"1000", b"-1"]
_ENDS = [b"\n", b"\r\n", b"\r", b"\n\n", b""]
_MAX_RECONNECTION = 60.0


def _chunk(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48))
    out = b""
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        field = fdp.PickValueInList(_FIELDS)
        colon = b":" if fdp.ConsumeIntInRange(0, 7) else b""
        out += field + colon + fdp.PickValueInList(_VALUES) + fdp.PickValueInList(_ENDS)
    return out


def headers(client: EventSourceClient) -> list[tuple[bytes, bytes]]:
    """The request headers the client asks for (faking CONNECTING when it is not)."""
    if client.state is EventSourceState.CONNECTING:
        return client.request_headers()
    return [(b"last-event-id", client.last_event_id.encode("utf-8"))]


def _check(client: EventSourceClient) -> None:
    last = client.last_event_id
    if last:
        # What the adapter will do with it: h11 refuses a value it cannot send.
        try:
            h11.Request(method="GET", target="/", headers=[(b"host", b"h"), *headers(client)])
        except h11.LocalProtocolError:
            raise AssertionError(f"last_event_id {last!r} cannot be sent in a header") from None
    client_time = client.reconnection_time
    if not (math.isfinite(client_time) and 0 <= client_time <= _MAX_RECONNECTION):
        raise AssertionError(f"reconnection time {client_time!r}")
    deadline = client.next_deadline()
    waiting = client.state is EventSourceState.WAITING
    if waiting != (deadline is not None) or (deadline is not None and not math.isfinite(deadline)):
        raise AssertionError(f"deadline {deadline!r} in {client.state}")


def _raw(client: EventSourceClient, body: bytes) -> None:
    """One connection that brings *body* whole (a seed is a byte and a test's body)."""
    client.receive_response(200, [(b"content-type", b"text/event-stream")], 0.0)
    try:
        client.receive_data(body)
    except RemoteProtocolError:
        if client.state is not EventSourceState.CLOSED:
            raise
        _check(client)
        return
    _check(client)
    client.receive_eof(1.0)
    _check(client)


def test_one_input(data: bytes) -> None:
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:])
    client = EventSourceClient(
        rng=random.Random(mode),
        max_reconnection_time=_MAX_RECONNECTION,
        max_retries=[None, 0, 2, None][(mode >> 1) & 3],
        strict=bool(mode & 8),
        max_line_length=[4096, 64, 8, 4096][(mode >> 4) & 3],
        max_event_size=[4096, 64, 8, 4096][(mode >> 6) & 3],
    )
    if not mode & 1:
        _raw(client, data[1:])
        return
    now = 0.0
    for _ in range(fdp.ConsumeIntInRange(0, 48)):
        if fdp.remaining_bytes() == 0:
            break
        now += fdp.PickValueInList([0.0, 0.1, 1.0, 10.0, 100.0])
        state = client.state
        before = (state, client.last_event_id, client.next_deadline())
        choice = fdp.ConsumeIntInRange(0, 6)
        try:
            if choice == 0:
                status = fdp.PickValueInList(_STATUSES)
                headers = [(b"content-type", fdp.PickValueInList(_TYPES))]
                if fdp.ConsumeBool():
                    headers.append((b"Retry-After", fdp.PickValueInList([b"3", b"1e9", b"x"])))
                client.receive_response(status, headers, now, wall_time=1e9)
            elif choice in (1, 2):
                client.receive_data(_chunk(fdp))
            elif choice == 3:
                client.receive_eof(now)
            elif choice == 4:
                client.connection_failed(now, "cut")
            elif choice == 5:
                client.handle_timer(now)
            else:
                client.close()
        except RemoteProtocolError:
            if choice not in (1, 2) or client.state is not EventSourceState.CLOSED:
                raise
            if client.last_event_id != before[1]:
                raise AssertionError("a failed chunk moved last_event_id") from None
        except LocalProtocolError:
            if (client.state, client.last_event_id, client.next_deadline()) != before:
                raise AssertionError("a refused call changed the client") from None
            if state is EventSourceState.OPEN and choice in (1, 2, 3, 4):
                raise
            if state is EventSourceState.CONNECTING and choice in (0, 4):
                raise
        _check(client)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
