"""Property tests for the SSE codec.

The parser is checked against a deliberately naive rendering of the WHATWG rules
(decode everything, walk it character by character, interpret line by line), fed
whole (which takes the parser's fast path wherever events have a common shape) and
split at arbitrary points, down to one byte per chunk (which never does).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tidings.errors import RemoteProtocolError
from tidings.sse.encoder import ServerSentEvent, encode_comment, encode_event
from tidings.sse.parser import EventStreamParser, MessageEvent

Outcome = tuple[list[tuple[str, str, str]], str, int | None]


def reference_parse(body: bytes, last_event_id: str = "") -> Outcome:
    """The standard's algorithm, written for clarity rather than speed."""
    text = body.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\r":
            lines.append("".join(current))
            current = []
            if text[i + 1 : i + 2] == "\n":
                i += 1
        elif char == "\n":
            lines.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    # `current` is an unfinished line: discarded at the end of the stream.
    events: list[tuple[str, str, str]] = []
    data = event_type = ""
    id_buffer = committed = last_event_id
    retry: int | None = None
    for line in lines:
        if line == "":
            committed = id_buffer
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append((event_type or "message", data, committed))
            data = event_type = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events, committed, retry


def as_tuples(events: list[MessageEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in events]


def feed(chunks: list[bytes]) -> Outcome:
    parser = EventStreamParser()
    events: list[MessageEvent] = []
    for chunk in chunks:
        events += parser.receive_data(chunk)
        check_buffers(parser)
    events += parser.receive_eof()
    return as_tuples(events), parser.last_event_id, parser.retry


def check_buffers(parser: EventStreamParser) -> None:
    """What the parser says it holds is what it holds (the limits rely on it)."""
    assert parser._partial[0] == "\n"
    assert parser._partial_len == sum(map(len, parser._partial)) - 1
    assert parser._data_size == sum(len(value) + 1 for value in parser._data)


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(body)) for c in cuts})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in pairwise(bounds)]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


# -- strategies ------------------------------------------------------------------------

# Pieces that make the interesting cases likely: field names with and without colon
# and space, every line end, BOMs, split and invalid UTF-8, NUL, comments, digits.
TOKENS = [
    b"data",
    b"data:",
    b"data: ",
    b"id",
    b"id:",
    b"id: ",
    b"event:",
    b"event: ",
    b"retry:",
    b"retry: ",
    b"Data:",
    b":",
    b": ",
    b" ",
    b"x",
    b"7",
    b"12",
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\xef\xbb\xbf",
    b"\xef\xbb",
    b"\xe2\x82\xac",
    b"\xe2\x82",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"\xc3",
    b"{}",
]
token_streams = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
raw_streams = st.one_of(token_streams, st.binary(max_size=200))

field_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
any_text = st.text(st.characters(codec="utf-8"), max_size=20)
ids = field_text.filter(lambda s: "\x00" not in s)


@st.composite
def server_events(draw: st.DrawFn) -> ServerSentEvent:
    return ServerSentEvent(
        data=draw(st.none() | any_text),
        event=draw(st.none() | field_text),
        id=draw(st.none() | ids),
        retry=draw(st.none() | st.integers(0, 10**12)),
        comment=draw(st.none() | any_text),
    )


@st.composite
def common_streams(draw: st.DrawFn) -> bytes:
    """Mostly events of the shapes the fast path knows, with the odd other line."""
    blocks: list[bytes] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            blocks.append(
                encode_event(
                    draw(st.sampled_from(["", "x", "{}", "a b", " lead", "\x00", "é"])),
                    event=draw(st.none() | st.sampled_from(["", "t", "tidings.reset"])),
                    id=draw(st.none() | st.sampled_from(["", "1", "e.7", " s"])),
                )
            )
        elif kind == 6:
            blocks.append(draw(st.sampled_from([b"data: a\ndata: b\n\n", b"data:\ndata:\n\n"])))
        elif kind == 7:
            blocks.append(encode_comment(draw(st.sampled_from(["", "ping", "a\nb"]))))
        elif kind == 8:
            blocks.append(draw(st.sampled_from([b"retry: 5\n", b"id: a\x00b\n", b"\n", b"x\n"])))
        else:
            blocks.append(draw(st.sampled_from([b"id:1\ndata:x\n\n", b"event: e\ndata: y\n\n"])))
    body = b"".join(blocks)
    if draw(st.booleans()):
        body = body.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r"])))
    return body


@st.composite
def long_line_streams(draw: st.DrawFn) -> bytes:
    """Events with long data lines (the parser takes those line by line)."""
    blocks = []
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.sampled_from("ab\x00é")) * draw(st.integers(0, 3000))
        blocks.append(encode_event(value, id=draw(st.none() | st.sampled_from(["1", "2"]))))
        if draw(st.booleans()):
            blocks.append(draw(st.sampled_from([b"data: more\n", b": c\n", b"id: 3\n"])))
    return b"".join(blocks)


@st.composite
def long_lines_of_any_bytes(draw: st.DrawFn) -> bytes:
    """Long lines holding invalid and truncated UTF-8 next to valid sequences.

    A chunk with long lines has them decoded one by one: a sequence cut short by a
    line end, or by the end of a chunk, must come out as when decoded whole.
    """
    pieces = st.sampled_from(
        [b"a", b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"\xc3", b"\xf0\x9f\x98\x80", b"\xf0\x9f"]
    )
    names = st.sampled_from([b"data: ", b"data:", b": ", b"id: ", b"x", b"data: \xc3"])
    ends = st.sampled_from([b"\n", b"\n\n", b"\r\n", b"\r", b""])
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        body = b"".join(draw(st.lists(pieces, min_size=100, max_size=700)))
        blocks.append(draw(names) + body + draw(ends))
    return b"".join(blocks)


@st.composite
def runs_of_alike_events(draw: st.DrawFn) -> bytes:
    """Long runs of events of one shape, now and then broken by something else.

    The parser narrows to the shape of such runs and cuts them several events a
    match; what breaks a run must send it back to the general shape.
    """
    with_id = draw(st.booleans())
    values = st.sampled_from(["", "x", "{}", " lead", "\x00", "é"])
    breaks = st.sampled_from(
        [
            b": c\n\n",
            b"data: a\ndata: b\n\n",
            b"id: 7\n\n",
            b"event: e\ndata: x\n\n",
            b"retry: 3\n",
            b"data: u\n",
            b"id:z\n",
            b"\n",
            b"data:v\n\n",
            b"id: a\x00\n",
        ]
    )
    blocks = []
    for i in range(draw(st.integers(0, 150))):
        if draw(st.integers(0, 40)) == 0:
            blocks.append(draw(breaks))
        else:
            blocks.append(encode_event(draw(values), id=str(i) if with_id else None))
    return b"".join(blocks)


@st.composite
def mixed_line_ends(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> bytes:
    """A stream whose line ends are mostly CRLF, with the odd lone CR or LF."""
    lines = draw(streams).split(b"\n")
    ends = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])
    return b"".join(line + draw(ends) for line in lines[:-1]) + lines[-1]


any_streams = st.one_of(
    raw_streams,
    common_streams(),
    long_line_streams(),
    long_lines_of_any_bytes(),
    runs_of_alike_events(),
    mixed_line_ends(common_streams()),
    mixed_line_ends(long_line_streams()),
    mixed_line_ends(runs_of_alike_events()),
)


# -- properties ------------------------------------------------------------------------


@given(st.lists(server_events(), max_size=12), st.lists(st.integers(0, 4000), max_size=8))
def test_encode_then_parse_gives_the_events_back(
    sent: list[ServerSentEvent], cuts: list[int]
) -> None:
    body = b"".join(event.encode() for event in sent)
    expected: list[tuple[str, str, str]] = []
    last_id = ""
    retry = None
    for event in sent:
        if event.id is not None:
            last_id = event.id
        if event.retry is not None:
            retry = event.retry
        if event.data is not None:
            data = event.data.replace("\r\n", "\n").replace("\r", "\n")
            expected.append((event.event or "message", data, last_id))
    for chunks in ([body], split_at(body, cuts)):
        assert feed(chunks) == (expected, last_id, retry)


@given(raw_streams, st.lists(st.integers(0, 250), max_size=10))
def test_any_bytes_split_anywhere_match_the_reference(body: bytes, cuts: list[int]) -> None:
    expected = reference_parse(body)
    assert feed([body]) == expected
    assert feed(split_at(body, cuts)) == expected
    assert feed(bytewise(body)) == expected


@given(common_streams(), st.lists(st.integers(0, 1500), max_size=12))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_common_shapes_split_anywhere_match_the_reference(body: bytes, cuts: list[int]) -> None:
    expected = reference_parse(body)
    assert feed([body]) == expected
    assert feed(split_at(body, cuts)) == expected
    assert feed(bytewise(body)) == expected


@given(
    long_line_streams() | long_lines_of_any_bytes(), st.lists(st.integers(0, 20000), max_size=12)
)
def test_long_lines_split_anywhere_match_the_reference(body: bytes, cuts: list[int]) -> None:
    expected = reference_parse(body)
    assert feed([body]) == expected
    assert feed(split_at(body, cuts)) == expected


@given(common_streams(), st.integers(1, 64))
def test_common_shapes_in_equal_chunks_match_the_reference(body: bytes, size: int) -> None:
    # Equal chunks carry several events each, so the parser switches between shapes.
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert feed(chunks) == reference_parse(body)


@given(
    runs_of_alike_events().map(lambda body: body.replace(b"\n", b"\r\n"))
    | runs_of_alike_events()
    | mixed_line_ends(runs_of_alike_events()),
    st.integers(1, 3000),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_runs_of_alike_events_in_equal_chunks_match_the_reference(body: bytes, size: int) -> None:
    # Equal chunks of a long run end anywhere in it: at an event, in one, after a
    # few events of a match or in the thing that breaks the run.
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert feed(chunks) == reference_parse(body)


@given(
    any_streams,
    st.lists(st.integers(0, 5000), max_size=6),
    st.integers(1, 16) | st.integers(1, 3100),
    st.integers(1, 16) | st.integers(1, 3100),
)
def test_limits_fail_alike_whole_and_split(
    body: bytes, cuts: list[int], line_limit: int, event_limit: int
) -> None:
    # A stream either parses like the reference both whole and split, or fails
    # both ways; split, the events delivered before the failure are a prefix.
    expected = reference_parse(body)[0]
    results = []
    for chunks in ([body], split_at(body, cuts)):
        parser = EventStreamParser(max_line_length=line_limit, max_event_size=event_limit)
        got: list[MessageEvent] = []
        try:
            for chunk in chunks:
                got += parser.receive_data(chunk)
                check_buffers(parser)
        except RemoteProtocolError:
            results.append(("failed", as_tuples(got)))
        else:
            results.append(("ok", as_tuples(got)))
    (whole, whole_events), (split, split_events) = results
    assert whole == split
    if whole == "ok":
        assert whole_events == split_events == expected
    else:
        assert whole_events == []
        assert split_events == expected[: len(split_events)]


class LineByLineParser(EventStreamParser):
    """The parser with its fast paths turned off: every chunk is read line by line.

    What is left is the decoding, the line ends, the unfinished line and the limits,
    shared with the real parser, and the standard's line-by-line interpretation.
    """

    __slots__ = ()

    def _single(self, text: str, shapes: Any) -> None:
        return None

    def _interpret(self, text: str, shapes: Any, events: list[MessageEvent]) -> str:
        return self._slow(text, events)


def call_by_call(parser: EventStreamParser, chunks: list[bytes]) -> list[object]:
    """What each call returns (or that it failed), then the parser's final state."""
    results: list[object] = []
    for chunk in chunks:
        try:
            results.append(as_tuples(parser.receive_data(chunk)))
        except RemoteProtocolError:
            results.append("failed")
            break
    results.append((parser.last_event_id, parser.retry))
    return results


@given(
    any_streams,
    st.lists(st.integers(0, 5000), max_size=12) | st.integers(1, 64),
    st.none() | st.integers(1, 3100),
    st.none() | st.integers(1, 3100),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_fast_paths_agree_with_line_by_line_call_by_call(
    body: bytes, cuts: list[int] | int, line_limit: int | None, event_limit: int | None
) -> None:
    # Whatever path each chunk takes (one event, a run of shapes, CRLF kept as it
    # is, long lines), every call returns what reading its lines one by one
    # returns, or fails where that fails.
    if isinstance(cuts, int):
        chunks = [body[i : i + cuts] for i in range(0, len(body), cuts)]
    else:
        chunks = split_at(body, cuts)
    limits: dict[str, int] = {}
    if line_limit is not None:
        limits["max_line_length"] = line_limit
    if event_limit is not None:
        limits["max_event_size"] = event_limit
    fast = call_by_call(EventStreamParser(**limits), chunks)
    assert fast == call_by_call(LineByLineParser(**limits), chunks)
    if not limits:
        events = [event for result in fast[:-1] for event in cast(list[object], result)]
        assert (events, *cast(tuple[str, int | None], fast[-1])) == reference_parse(body)


def feed_until_error(parser: EventStreamParser, chunks: Iterator[bytes]) -> int:
    """Feed chunks until the parser fails; return how many bytes it accepted.

    After every accepted chunk, what the parser buffers must be within its limits.
    """
    accepted = 0
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            accepted += len(chunk)
            assert parser._partial_len <= parser._max_line_length
            assert parser._data_size <= parser._max_event_size
    except RemoteProtocolError:
        return accepted
    raise AssertionError("the parser accepted everything")


@pytest.mark.parametrize("prefix", [b"", b"data: ", b"id: 1\n:"])
def test_100_mb_line_fails_with_bounded_memory(prefix: bytes) -> None:
    # 100 MB of one line, 64 KiB at a time: the parser must give up at the first
    # chunk that takes the line past 1 MiB, having held no more than that.
    chunks = iter([prefix, *[b"y" * 65536] * (100 * 2**20 // 65536)])
    assert feed_until_error(EventStreamParser(), chunks) <= 2**20


def test_endless_event_fails_with_bounded_memory() -> None:
    lines = (b"data: " + b"z" * 1000 + b"\n") * 10
    chunks = iter([lines] * 10_000)
    assert feed_until_error(EventStreamParser(max_event_size=64 * 1024), chunks) <= 64 * 1024


@given(raw_streams, st.lists(st.integers(0, 250), max_size=4))
def test_receive_eof_never_dispatches(body: bytes, cuts: list[int]) -> None:
    parser = EventStreamParser()
    for piece in split_at(body, cuts):
        parser.receive_data(piece)
    last = parser.last_event_id
    assert parser.receive_eof() == []
    assert parser.last_event_id == last


@given(raw_streams)
def test_reference_and_parser_agree_on_initial_last_event_id(body: bytes) -> None:
    assume(body)
    parser = EventStreamParser(last_event_id="start")
    got = parser.receive_data(body)
    events, committed, _ = reference_parse(body, last_event_id="start")
    assert as_tuples(got) == events
    assert parser.last_event_id == committed
