"""atheris harness: long polling -- the request parser, the server machine and the client.

Three programs, chosen by the first byte:

- **request**: :func:`parse_poll_request` on a query string and ``If-None-Match``
  lines, either raw bytes or assembled from a dictionary of parameter names, values
  (cursors, numbers in every notation, percent escapes) and entity tags, with
  fuzzer-chosen :class:`PollLimits`.  It must answer a :class:`PollRequest` within
  the limits (``0 <= timeout <= max_timeout``, ``1 <= limit <= max_limit``, a
  conditional request has a cursor) or raise
  :class:`~tidings.errors.RemoteProtocolError` whose message and status make an
  :func:`error_answer`; bytes and text give the same answer.
- **server**: a :class:`LongPollServer` on a small :class:`MemoryHistory` is driven
  through publishes, reads, wake-ups, timers and drains; every answer it gives is
  handed to a :class:`LongPollClient`, which must take it without complaint
  (a ``200`` with the events after the cursor asked, or a ``304``).
- **client**: a :class:`LongPollClient` gets hostile answers -- any status
  (including ones no HTTP server should send), content types, ``Retry-After`` and
  ``Date`` fields, bodies that are raw bytes or JSON built from the answer's field
  names with wrong types.  It returns items or raises
  :class:`~tidings.errors.RemoteProtocolError` (:class:`PollRejected` included),
  and is then ready for its next request or closed, never stuck waiting; its cursor
  is always a valid position.

Run: ``python fuzz/fuzz_longpoll.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import json
import math
import random
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.cursor import Position
    from tidings.errors import RemoteProtocolError
    from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent
    from tidings.longpoll import (
        ClientState,
        LongPollClient,
        LongPollServer,
        PollEvent,
        PollLimits,
        PollRequest,
        PollReset,
        error_answer,
        parse_poll_request,
    )

_NAMES = ["cursor", "timeout", "limit", "_", "curs%6Fr", "cursor+", "%FF", "limit%00", ""]
_VALUES = ["", "earliest", "e.1", "e.0", "e.01", "e", "e.9223372036854775808", "%65.1", "25"]
_VALUES += ["0", "0.5", ".5", "5.", "1e3", "-1", "+1", "99999999999999", "1" * 33, "%zz"]
_VALUES += ["%C3", "%C3%A9", "0x10", "nan", "inf", " 1", "1000000", "\u0661", "1.0000000001"]
_TAGS = ['"e.1"', 'W/"e.1"', '"e.2"', "*", "", " ", '"e.1" ', 'W/ "e.1"', '"a', '"e.1"x']
_TAGS += ['"earliest"', '""', '"e.1\x7f"', '"\xe9"', 'w/"e.1"']
_HEADER_NAMES = [b"if-none-match", b"If-None-Match", b"IF-NONE-MATCH", b"etag", b"x"]


def _query(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        name = fdp.PickValueInList(_NAMES)
        if fdp.ConsumeIntInRange(0, 5) == 0:
            parts.append(name)
        else:
            parts.append(f"{name}={fdp.PickValueInList(_VALUES)}")
    return "&".join(parts).encode("utf-8")


def _headers(fdp: atheris.FuzzedDataProvider) -> list[tuple[bytes, bytes]]:
    headers = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        tags = ",".join(fdp.PickValueInList(_TAGS) for _ in range(fdp.ConsumeIntInRange(1, 3)))
        value = tags.encode("latin-1")
        if fdp.ConsumeIntInRange(0, 7) == 0:
            value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        headers.append((fdp.PickValueInList(_HEADER_NAMES), value))
    return headers


def _limits(fdp: atheris.FuzzedDataProvider) -> PollLimits:
    max_timeout = fdp.PickValueInList([0.0, 1.0, 30.0])
    max_limit = fdp.PickValueInList([1, 3, 1000])
    return PollLimits(
        default_timeout=min(max_timeout, 0.5), max_timeout=max_timeout, default_limit=1,
        max_limit=max_limit,
    )  # fmt: skip


def _parse(query: bytes | str, headers: Any, limits: PollLimits) -> PollRequest | str:
    try:
        return parse_poll_request(query, headers, limits)
    except RemoteProtocolError as exc:
        answer = error_answer(str(exc), exc.error_status_hint)
        json.loads(answer.body)
        return type(exc).__name__


def request(fdp: atheris.FuzzedDataProvider, raw: bytes | None) -> None:
    limits = _limits(fdp)
    if raw is None:
        query = _query(fdp)
        headers = _headers(fdp)
    else:
        # A query, then If-None-Match lines: each line of the seed after the first.
        query, *lines = raw.split(b"\n")
        headers = [(b"if-none-match", line) for line in lines]
    result = _parse(query, headers, limits)
    text_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    again = _parse(query.decode("latin-1"), text_headers, limits)
    if again != result:
        raise AssertionError(f"bytes gave {result!r}, text {again!r}")
    if isinstance(result, str):
        return
    if not (0 <= result.timeout <= limits.max_timeout and 1 <= result.limit <= limits.max_limit):
        raise AssertionError(f"{result!r} outside {limits!r}")
    if result.conditional and result.cursor is None:
        raise AssertionError(f"{result!r} is conditional without a cursor")


def _check_answer_in_client(answer: Any, request: PollRequest, now: float) -> None:
    """The client takes every answer the server gives."""
    cursor = request.cursor_text
    if isinstance(request.cursor, str) and request.cursor != "earliest":
        cursor = None  # a malformed cursor: the client refuses to start from one
    client = LongPollClient(
        "http://h/topics/t/poll",
        rng=random.Random(0),
        cursor=cursor,
        cursor_in="header" if request.conditional else "query",
    )
    client.send_request(now)
    items = client.receive_response(answer.status, answer.headers, answer.body, now)
    if answer.status not in (200, 304):
        raise AssertionError(f"the server answered {answer.status}")
    if len([item for item in items if isinstance(item, PollEvent)]) > request.limit:
        raise AssertionError(f"more than {request.limit} events in {answer.body!r}")
    if client.state is not ClientState.READY:
        raise AssertionError(f"the client is {client.state} after {answer!r}")


def server(fdp: atheris.FuzzedDataProvider) -> None:
    history = MemoryHistory("h", max_events=4)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        history.append("t", "x")
    head = history.head("t")
    cursor = fdp.PickValueInList(
        [
            None, "earliest", Position("h_0", 0), Position("other", 1), head,
            Position(head[0], 9), "malformed",
        ]
    )  # fmt: skip
    if isinstance(cursor, Position) and fdp.ConsumeBool():
        cursor = Position(head.epoch, fdp.ConsumeIntInRange(0, head.offset))
    poll = PollRequest(
        cursor=cursor,
        timeout=fdp.PickValueInList([0.0, 1.0, 25.0]),
        limit=fdp.ConsumeIntInRange(1, 3),
        conditional=cursor is not None and fdp.ConsumeBool(),
    )
    now = 0.0
    machine = LongPollServer("t", poll, now)
    answer = machine.poll(history, now)
    for _ in range(fdp.ConsumeIntInRange(0, 16)):
        if answer is not None or fdp.remaining_bytes() == 0:
            break
        now += fdp.PickValueInList([0.0, 0.5, 30.0])
        choice = fdp.ConsumeIntInRange(0, 5)
        if choice == 0:
            history.append("t", "y")
            answer = machine.poll(history, now)
        elif choice == 1:
            history.append("t", "z")
            if machine.published() is not None:
                answer = machine.poll(history, now)
        elif choice == 2:
            answer = machine.handle_timer(now)
        elif choice == 3:
            answer = machine.answer_now()
        elif choice == 4 and machine.read is not None:
            # A made-up read result: whatever the store says, the answer is valid.
            position = Position(fdp.PickValueInList(["h_0", "x"]), fdp.ConsumeIntInRange(0, 9))
            result: Replay | Reset = fdp.PickValueInList(
                [
                    Replay((StoredEvent(position, "d"),), position),
                    Replay((), position),
                    Reset(position, fdp.PickValueInList(list(ResetReason))),
                ]
            )
            answer = machine.receive_read(result, now)
        else:
            history = MemoryHistory(fdp.PickValueInList(["h", "h2"]), max_events=4)
    if answer is None:
        answer = machine.answer_now()
    if machine.answer is not answer:
        raise AssertionError(f"{machine!r} forgot its answer {answer!r}")
    _check_answer_in_client(answer, poll, now)


_STATUSES = [200, 200, 200, 304, 204, 400, 404, 408, 429, 500, 503, 100, 301, 600, 999]
_CONTENT_TYPES = [b"application/json", b"Application/JSON; charset=utf-8", b"text/event-stream"]
_CONTENT_TYPES += [b"application/problem+json", b"text/html", b"", b";", b"\xff"]
_FIELDS = ["events", "cursor", "reset", "reason", "error", "id", "data", "event"]
_JSON_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, "", "e.1", "e.2", "x", "e.01"]
_JSON_VALUES += [[], {}, [{"id": "e.3", "data": "d"}], [{"id": "e.4", "data": 1}], ["e.1"]]
_JSON_VALUES += [[{"id": "e.5", "event": None, "data": "d"}], [{"id": 5, "data": "d"}]]


def _body(fdp: atheris.FuzzedDataProvider) -> bytes:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if kind == 1:
        return b"[" * 100_000
    obj: dict[str, Any] = {"events": [], "cursor": "e.1", "reset": False}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        field = fdp.PickValueInList(_FIELDS)
        if fdp.ConsumeIntInRange(0, 5) == 0:
            obj.pop(field, None)
        else:
            obj[field] = fdp.PickValueInList(_JSON_VALUES)
    return json.dumps(obj).encode()


def client(fdp: atheris.FuzzedDataProvider) -> None:
    machine = LongPollClient(
        "http://h/topics/t/poll",
        rng=random.Random(fdp.ConsumeIntInRange(0, 255)),
        cursor=fdp.PickValueInList([None, "earliest", "e.1"]),
        cursor_in=fdp.PickValueInList(["query", "header"]),
        max_retries=fdp.PickValueInList([None, 0, 2]),
        max_body_size=fdp.PickValueInList([16, 1 << 20]),
    )
    now = 0.0
    for _ in range(fdp.ConsumeIntInRange(1, 12)):
        if machine.closed or fdp.remaining_bytes() == 0:
            break
        now += fdp.PickValueInList([0.0, 1.0, 100.0])
        machine.send_request(now)
        if fdp.ConsumeIntInRange(0, 7) == 0:
            machine.connection_failed(now, "cut")
            continue
        status = fdp.PickValueInList(_STATUSES)
        headers: list[tuple[bytes, bytes]] = []
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            name = fdp.PickValueInList([b"content-type", b"Content-Type", b"retry-after", b"date"])
            if name.lower() == b"content-type":
                value = fdp.PickValueInList(_CONTENT_TYPES)
            elif name == b"retry-after":
                value = fdp.PickValueInList([b"5", b"9" * 12, b"Sun, 06 Nov 1994 08:49:37 GMT"])
            else:
                value = fdp.PickValueInList([b"Sun, 06 Nov 1994 08:49:30 GMT", b"nonsense"])
            headers.append((name, value))
        body = _body(fdp)
        cursor_before = machine.cursor
        try:
            if fdp.ConsumeBool():
                machine.receive_head(status, headers)
            items = machine.receive_response(status, headers, body, now, wall_time=1e9)
        except RemoteProtocolError:
            if not machine.closed:
                raise AssertionError(f"raised but {machine!r}") from None
            if machine.cursor != cursor_before:
                raise AssertionError("a rejected answer moved the cursor") from None
            break
        if machine.state is ClientState.WAITING:
            raise AssertionError(f"still waiting after an answer: {machine!r}")
        for item in items:
            if not isinstance(item, PollEvent | PollReset):
                raise AssertionError(f"unexpected item {item!r}")
            Position.parse(item.id if isinstance(item, PollEvent) else item.cursor)
        if machine.cursor not in (None, "earliest"):
            Position.parse(machine.cursor)
        deadline = machine.next_deadline()
        if machine.state is ClientState.READY and not (
            deadline is not None and (math.isfinite(deadline) or deadline == -math.inf)
        ):
            raise AssertionError(f"ready with deadline {deadline!r}")


def test_one_input(data: bytes) -> None:
    # The first byte picks the program; with 0 the rest is a raw request (so that a
    # seed is that byte and a query from the tests).
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:])
    program = mode % 4
    if program == 0:
        request(atheris.FuzzedDataProvider(b""), data[1:])
    elif program == 1:
        request(fdp, None)
    elif program == 2:
        server(fdp)
    else:
        client(fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
