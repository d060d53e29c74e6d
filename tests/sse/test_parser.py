"""One test per rule of WHATWG HTML "Server-sent events" the parser follows.

Section names refer to https://html.spec.whatwg.org/multipage/server-sent-events.html
(*Parsing an event stream*, *Interpreting an event stream*).  Most tests feed the
input three ways -- whole, in two halves at every split point, and byte by byte --
because the rules must hold however the body is cut.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.sse.parser import (
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_LENGTH,
    EventStreamParser,
    MessageEvent,
)


def parse(body: bytes, **kwargs: object) -> list[MessageEvent]:
    """Parse ``body`` whole, split at every point, and byte by byte; all must agree."""
    results = []
    ways = [[body]]
    ways += [[body[:i], body[i:]] for i in range(1, len(body))]
    ways.append([body[i : i + 1] for i in range(len(body))])
    for chunks in ways:
        parser = EventStreamParser(**kwargs)  # type: ignore[arg-type]
        events: list[MessageEvent] = []
        for chunk in chunks:
            events += parser.receive_data(chunk)
        events += parser.receive_eof()
        results.append((events, parser.last_event_id, parser.retry))
    for result in results[1:]:
        assert result == results[0]
    return results[0][0]


def datas(body: bytes) -> list[str]:
    return [event.data for event in parse(body)]


def feed_all(parser: EventStreamParser, chunks: list[bytes]) -> list[MessageEvent]:
    events: list[MessageEvent] = []
    for chunk in chunks:
        events += parser.receive_data(chunk)
    return events


def last_id_after(body: bytes) -> str:
    parser = EventStreamParser()
    parser.receive_data(body)
    return parser.last_event_id


def retry_after(body: bytes) -> int | None:
    parser = EventStreamParser()
    parser.receive_data(body)
    return parser.retry


# -- decoding and line ends (Parsing an event stream) ----------------------------------


def test_simple_event() -> None:
    assert parse(b"data: hello\n\n") == [MessageEvent("message", "hello", "")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert datas(b"data: a\xffb\xc3(\n\n") == ["a\ufffdb\ufffd("]


def test_utf8_sequence_split_across_chunks() -> None:
    body = "data: €😀\n\n".encode()
    assert datas(body) == ["€😀"]  # parse() splits inside both sequences


def test_utf8_truncated_sequence_replaced_per_maximal_subpart() -> None:
    # WHATWG (and Unicode) "maximal subpart": E2 82 is one error, F0 80 80 three.
    assert datas(b"data: \xe2\x82x\xf0\x80\x80\n\n") == ["\ufffdx\ufffd\ufffd\ufffd"]


def test_leading_bom_stripped() -> None:
    assert datas(b"\xef\xbb\xbfdata: x\n\n") == ["x"]


def test_bom_split_across_chunks() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"\xef") == []
    assert parser.receive_data(b"\xbb") == []
    assert parser.receive_data(b"\xbf") == []
    assert parser.receive_data(b"data: x\n\n") == [MessageEvent("message", "x", "")]


def test_only_one_bom_stripped() -> None:
    # The second BOM is part of the field name "\ufeffdata", which is ignored.
    assert datas(b"\xef\xbb\xbf\xef\xbb\xbfdata: 1\n\ndata: 2\n\n") == ["2"]


def test_bom_after_start_is_data() -> None:
    assert datas(b"data: \xef\xbb\xbfx\n\n") == ["\ufeffx"]
    assert datas(b":\n\xef\xbb\xbfdata: 1\n\ndata: 2\n\n") == ["2"]


def test_lf_line_ends() -> None:
    assert datas(b"data: a\ndata: b\n\n") == ["a\nb"]


def test_crlf_line_ends() -> None:
    assert datas(b"data: a\r\ndata: b\r\n\r\n") == ["a\nb"]


def test_cr_line_ends() -> None:
    assert datas(b"data: a\rdata: b\r\r") == ["a\nb"]


def test_mixed_line_ends() -> None:
    assert datas(b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\n\r") == ["a\nb\nc", "d"]


def test_crlf_split_across_chunks_counts_once() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"data: a\r") == []
    assert parser.receive_data(b"\n") == []  # the second half of CRLF, not a blank line
    assert parser.receive_data(b"data: b\r") == []
    assert parser.receive_data(b"\n\r") == [MessageEvent("message", "a\nb", "")]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_other_buffers_parse_as_bytes_do(kind: type) -> None:
    # The parser looks for CR in bytes before decoding them; for other buffers it
    # must not (in a memoryview, `in` compares integers and never finds b"\r").
    body = b"data: a\r\n\r\ndata: b\rdata: c\n\nid: 1\r\ndata: " + b"x" * 300 + b"\r\n\r\n"
    for cut in range(0, len(body), 5):
        chunks = [body[:cut], body[cut:]]
        expected = feed_all(EventStreamParser(), chunks)
        assert len(expected) == 3
        assert feed_all(EventStreamParser(), [kind(chunk) for chunk in chunks]) == expected


def test_cr_cr_dispatches_immediately() -> None:
    parser = EventStreamParser()
    # No need to wait for the next byte to know whether an LF follows the second CR.
    assert parser.receive_data(b"data: x\r\r") == [MessageEvent("message", "x", "")]
    assert parser.receive_data(b"\n") == []  # ...and an LF next is only its CRLF tail


def test_lf_after_cr_in_later_chunk_still_counts_once() -> None:
    parser = EventStreamParser()
    parser.receive_data(b"data: x\r")
    assert parser.receive_data(b"") == []
    assert parser.receive_data(b"\n") == []
    assert parser.receive_data(b"\n") == [MessageEvent("message", "x", "")]


def test_cr_then_multibyte_split_keeps_line_end() -> None:
    parser = EventStreamParser()
    parser.receive_data(b"data: x\r\xe2")  # the CR ends the line; the € is pending
    assert parser.receive_data(b"\x82\xac") == []  # not an LF: "€" starts a new line
    assert parser.receive_data(b": c\r\n") == []
    assert parser.receive_data(b"\n") == [MessageEvent("message", "x", "")]


def test_empty_chunk_is_harmless() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"") == []
    assert parser.receive_data(b"data: x\n") == []
    assert parser.receive_data(b"") == []
    assert parser.receive_data(b"\n") == [MessageEvent("message", "x", "")]


# -- lines and fields (Interpreting an event stream) -----------------------------------


def test_comment_lines_ignored() -> None:
    assert parse(b": hello\n:\ndata: x\n: between\n\n") == [MessageEvent("message", "x", "")]


def test_comment_only_stream_dispatches_nothing() -> None:
    assert parse(b": ping\n\n: ping\n\n") == []


def test_field_name_ends_at_first_colon() -> None:
    assert datas(b"data: a:b: c\n\n") == ["a:b: c"]
    assert datas(b"data:: x\n\n") == [": x"]


def test_one_leading_space_stripped() -> None:
    assert datas(b"data:  two\n\n") == [" two"]
    assert datas(b"data: \n\n") == [""]


def test_value_without_space_after_colon() -> None:
    assert parse(b"event:e\nid:7\ndata:x\n\n") == [MessageEvent("e", "x", "7")]


def test_tab_is_not_stripped() -> None:
    assert datas(b"data:\tx\n\n") == ["\tx"]


def test_line_without_colon_is_field_with_empty_value() -> None:
    assert datas(b"data\n\n") == [""]
    assert datas(b"data\ndata\n\n") == ["\n"]


def test_space_before_colon_is_part_of_name() -> None:
    assert datas(b"data : x\ndata: y\n\n") == ["y"]


def test_field_names_are_case_sensitive() -> None:
    assert parse(b"Data: x\nDATA: y\n\n") == []


def test_unknown_fields_ignored() -> None:
    assert datas(b"foo: bar\ndata: x\nid2: 3\n\n") == ["x"]
    assert last_id_after(b"foo: bar\ndata: x\nid2: 3\n\n") == ""


def test_data_appends_value_and_lf() -> None:
    assert datas(b"data: a\ndata:\ndata: b\n\n") == ["a\n\nb"]


def test_one_trailing_lf_removed() -> None:
    assert datas(b"data: a\ndata:\n\n") == ["a\n"]
    assert datas(b"data:\ndata:\n\n") == ["\n"]


def test_data_keeps_nul_and_unicode() -> None:
    assert datas("data: a\x00b é\n\n".encode()) == ["a\x00b é"]


def test_event_sets_type() -> None:
    assert parse(b"event: update\ndata: x\n\n") == [MessageEvent("update", "x", "")]


def test_empty_event_type_is_message() -> None:
    assert parse(b"event:\ndata: x\n\n")[0].type == "message"
    assert parse(b"event\ndata: x\n\n")[0].type == "message"


def test_last_event_field_wins() -> None:
    assert parse(b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n") == [MessageEvent("b", "x", "2")]


def test_field_order_does_not_matter() -> None:
    assert parse(b"data: x\nid: 1\nevent: e\n\n") == [MessageEvent("e", "x", "1")]


def test_event_type_reset_after_dispatch() -> None:
    events = parse(b"event: e\ndata: 1\n\ndata: 2\n\n")
    assert [event.type for event in events] == ["e", "message"]


def test_event_type_reset_by_blank_line_without_data() -> None:
    assert parse(b"event: e\n\ndata: x\n\n") == [MessageEvent("message", "x", "")]


def test_id_sets_last_event_id() -> None:
    assert parse(b"id: 42\ndata: x\n\n") == [MessageEvent("message", "x", "42")]


def test_id_keeps_spaces_and_unicode() -> None:
    assert parse("id:  é 1 \ndata: x\n\n".encode())[0].last_event_id == " é 1 "


def test_id_with_nul_ignored() -> None:
    assert parse(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [MessageEvent("message", "x", "1")]


def test_id_with_nul_ignored_in_a_run_of_events() -> None:
    # Events that follow each other are built together; one id with NUL among them
    # is ignored all the same, with LF and with CRLF line ends.
    for end in (b"\n", b"\r\n"):
        body = b"id: 1\ndata: a\n\n" * 5 + b"id: 2\x00\ndata: b\n\n" + b"id: 3\ndata: c\n\n"
        events = parse(body.replace(b"\n", end))
        assert events[4:] == [
            MessageEvent("message", "a", "1"),
            MessageEvent("message", "b", "1"),
            MessageEvent("message", "c", "3"),
        ]


def test_empty_id_resets_last_event_id() -> None:
    events = parse(b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\n\nid:\ndata: c\n\n")
    assert [event.last_event_id for event in events] == ["1", "", ""]


def test_last_event_id_sticks_across_events() -> None:
    events = parse(b"id: 7\ndata: a\n\ndata: b\n\nevent: e\ndata: c\n\n")
    assert [event.last_event_id for event in events] == ["7", "7", "7"]


def test_id_only_block_updates_last_event_id() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"id: 5\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.receive_data(b"data: x\n\n") == [MessageEvent("message", "x", "5")]


def test_last_event_id_changes_only_on_dispatch() -> None:
    parser = EventStreamParser()
    parser.receive_data(b"id: 1\ndata: a\n\nid: 2\n")
    assert parser.last_event_id == "1"
    parser.receive_data(b"data: b\n")
    assert parser.last_event_id == "1"
    parser.receive_data(b"\n")
    assert parser.last_event_id == "2"


def test_initial_last_event_id() -> None:
    parser = EventStreamParser(last_event_id="e.41")
    assert parser.last_event_id == "e.41"
    assert parser.receive_data(b"data: x\n\n") == [MessageEvent("message", "x", "e.41")]


def test_retry_all_ascii_digits() -> None:
    assert retry_after(b"retry: 1500\n") == 1500
    assert retry_after(b"retry:0\n") == 0
    assert retry_after(b"retry: 007\n") == 7


def test_retry_set_without_dispatch() -> None:
    parser = EventStreamParser()
    assert parser.retry is None
    assert parser.receive_data(b"retry: 10\n") == []
    assert parser.retry == 10


@pytest.mark.parametrize(
    "value",
    [b"", b"-1", b"+1", b"1.5", b"1e3", b" 10", b"10 ", b"1_0", b"\xd9\xa1", b"\xef\xbc\x91", b"x"],
)
def test_retry_other_than_ascii_digits_ignored(value: bytes) -> None:
    assert retry_after(b"retry: 100\nretry: " + value + b"\n") == 100
    assert retry_after(b"retry: " + value + b"\n") is None


def test_retry_without_colon_ignored() -> None:
    assert retry_after(b"retry\n") is None


def test_retry_of_absurd_length_ignored() -> None:
    assert retry_after(b"retry: 5\nretry: " + b"9" * 5000 + b"\n") == 5
    assert retry_after(b"retry: " + b"0" * 5000 + b"12\n") == 12


def test_no_event_when_data_empty() -> None:
    assert parse(b"\n\n\nevent: e\nid: 1\nretry: 5\n\n") == []


def test_blank_lines_between_events() -> None:
    assert datas(b"\n\ndata: a\n\n\n\ndata: b\n\n\n") == ["a", "b"]


def test_event_dispatched_at_blank_line_not_before() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"data: a\n") == []
    assert parser.receive_data(b"data: b\n") == []
    assert parser.receive_data(b"\n") == [MessageEvent("message", "a\nb", "")]


def test_many_events_in_one_chunk() -> None:
    body = b"".join(b'id: %d\ndata: {"n": %d}\n\n' % (i, i) for i in range(2000))
    events = EventStreamParser().receive_data(body)
    assert len(events) == 2000
    assert events[-1] == MessageEvent("message", '{"n": 1999}', "1999")


# -- end of stream ---------------------------------------------------------------------


def test_eof_discards_incomplete_event() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"data: a\n\ndata: b\n") == [MessageEvent("message", "a", "")]
    assert parser.receive_eof() == []


def test_eof_discards_unfinished_line() -> None:
    parser = EventStreamParser()
    parser.receive_data(b"data: a\n\ndata: b")
    assert parser.receive_eof() == []


def test_eof_discards_id_of_incomplete_event() -> None:
    parser = EventStreamParser(last_event_id="0")
    parser.receive_data(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert parser.receive_eof() == []
    assert parser.last_event_id == "1"


def test_eof_after_cr_dispatches_nothing_more() -> None:
    parser = EventStreamParser()
    assert parser.receive_data(b"data: a\r\r") == [MessageEvent("message", "a", "")]
    assert parser.receive_eof() == []


def test_receive_eof_twice_is_harmless() -> None:
    parser = EventStreamParser()
    assert parser.receive_eof() == []
    assert parser.receive_eof() == []


def test_receive_data_after_eof_is_local_error() -> None:
    parser = EventStreamParser()
    parser.receive_eof()
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"data: x\n\n")


# -- limits ----------------------------------------------------------------------------


def test_default_limits() -> None:
    assert DEFAULT_MAX_LINE_LENGTH == 1024 * 1024
    assert DEFAULT_MAX_EVENT_SIZE == 16 * 1024 * 1024


def test_line_at_limit_accepted() -> None:
    parser = EventStreamParser(max_line_length=10)
    assert parser.receive_data(b"data: " + b"x" * 4 + b"\r\n\r\n") == [
        MessageEvent("message", "xxxx", "")
    ]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: 12345\n\n"],  # a complete line
        [b"data: 12345"],  # an unfinished one, caught before its end arrives
        [b"data: 12", b"345"],
        [b": comment!!\n\n"],
        [b"id: 1\ndata: x\n\n" * 3 + b"data: 12345\n\n"],  # after events, same chunk
    ],
)
def test_line_longer_than_limit_raises(chunks: list[bytes]) -> None:
    parser = EventStreamParser(max_line_length=10)
    with pytest.raises(RemoteProtocolError):
        feed_all(parser, chunks)


def test_line_limit_counts_each_line_alone() -> None:
    # Each chunk below ends a line begun by the one before; no line exceeds 20.
    parser = EventStreamParser(max_line_length=20)
    events: list[MessageEvent] = []
    for body in [b"data: abc", b"\n\n", b"data: 0123456789abcd", b"\n", b"\n"]:
        events += parser.receive_data(body)
    assert events == [
        MessageEvent("message", "abc", ""),
        MessageEvent("message", "0123456789abcd", ""),
    ]
    events = []
    for body in [b"id: 1\ndata: 12345678", b"90\n\n", b"data: 0123456789abcd\n"]:
        events += parser.receive_data(body)
    assert events == [MessageEvent("message", "1234567890", "1")]
    # The last line is complete (20 characters), its event not yet dispatched.
    assert parser.receive_data(b"\n") == [MessageEvent("message", "0123456789abcd", "1")]


def test_line_limit_counts_characters_not_bytes() -> None:
    parser = EventStreamParser(max_line_length=8)
    assert parser.receive_data("data:ééé\n\n".encode()) == [MessageEvent("message", "ééé", "")]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: 123456\n\n"],  # one event alone in a chunk
        [b"data: a\n", b"data: bbbbbb\n\n"],  # an event begun in an earlier chunk
        [b"data: x\n\ndata: 123456\n\ndata: y\n\n"],  # among others in one chunk
        [b"data: 12\ndata: 345\n\n"],  # several lines adding up
        [b"data: 12\n", b"data: 345\n"],  # before the event is even complete
    ],
)
def test_event_larger_than_limit_raises(chunks: list[bytes]) -> None:
    parser = EventStreamParser(max_event_size=6, max_line_length=100)
    with pytest.raises(RemoteProtocolError):
        feed_all(parser, chunks)


LONG = b"y" * 1100  # longer than the lines the parser's expressions look at


@pytest.mark.parametrize(
    ("chunks", "limits"),
    [
        # an unfinished long line after an event
        ([b"data: x\n\ndata: " + LONG + b"yyy"], {"max_line_length": 1105}),
        # a long line ended by a later chunk
        ([b"data: " + LONG[:1090], b"y" * 10 + b"\n\n"], {"max_line_length": 1105}),
        ([b"data: x\n\n: " + LONG, b"yyyy\n"], {"max_line_length": 1105}),
        # a long line between others in a chunk with long lines
        ([b"data: x\n: " + LONG + LONG + b"\ndata: " + LONG], {"max_line_length": 1200}),
        # a long data value ended by a later chunk, alone and after other data
        ([b"data: x\n\ndata: " + LONG, b"yyy\n\n"], {"max_event_size": 1103}),
        ([b"data: a\ndata: " + LONG, b"y\n\n"], {"max_event_size": 1103}),
    ],
)
def test_long_lines_over_the_limits_raise(chunks: list[bytes], limits: dict[str, int]) -> None:
    parser = EventStreamParser(**limits)
    with pytest.raises(RemoteProtocolError):
        feed_all(parser, chunks)


def test_long_lines_decode_as_the_whole_body_does() -> None:
    # A chunk with long lines has its lines decoded one by one, straight from the
    # bytes: a sequence cut short by a line end, or by the end of the chunk, must
    # come out as it does when the body is decoded whole.
    a, b = b"a" * 1100, b"b" * 1100
    chunks = [
        b"data: x\n\n",
        b"data: " + a + b"\xe2\x82\n\n: \xff" + a + b"\xc3\n" + b"data: " + b + b"\xe2\x82",
        b"\xac\xf0\x9f\n\n",
    ]
    expected = [
        MessageEvent("message", "x", ""),
        MessageEvent("message", "a" * 1100 + "\ufffd", ""),
        MessageEvent("message", "b" * 1100 + "\u20ac\ufffd", ""),
    ]
    assert feed_all(EventStreamParser(), chunks) == expected
    assert parse(b"".join(chunks)) == expected


def test_long_lines_at_the_limits_accepted() -> None:
    parser = EventStreamParser(max_line_length=1108, max_event_size=1103)
    chunks = [b"data: x\n\ndata: " + LONG, b"yy\n\n", b": " + LONG, b"yyy\n"]
    assert feed_all(parser, chunks) == [
        MessageEvent("message", "x", ""),
        MessageEvent("message", "y" * 1102, ""),
    ]


def test_event_at_limit_accepted() -> None:
    # The data buffer holds each value plus LF: "12" + LF + "3" + LF is 5 characters.
    parser = EventStreamParser(max_event_size=5)
    assert parser.receive_data(b"data: 12\ndata: 3\n\n") == [MessageEvent("message", "12\n3", "")]
    assert parser.receive_data(b"data: 1234\n\n") == [MessageEvent("message", "1234", "")]


def test_error_state_is_sticky() -> None:
    parser = EventStreamParser(max_line_length=4)
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"data: too long\n\n")
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"\n")
    with pytest.raises(RemoteProtocolError):
        parser.receive_eof()


def test_error_keeps_last_event_id_of_returned_events() -> None:
    parser = EventStreamParser(max_event_size=20)
    assert parser.receive_data(b"id: 1\ndata: a\n\nretry: 5\n") == [
        MessageEvent("message", "a", "1")
    ]
    with pytest.raises(RemoteProtocolError):
        # id 2 is dispatched in this call, but the call fails: a reconnection must
        # still ask for what follows 1, since event 2 never reached the caller.
        parser.receive_data(b"id: 2\ndata: b\n\nretry: 9\ndata: " + b"x" * 30 + b"\n")
    assert parser.last_event_id == "1"
    assert parser.retry == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_line_length": 0},
        {"max_event_size": -1},
        {"max_line_length": True},
        {"max_event_size": 1.5},
        {"last_event_id": "a\nb"},
        {"last_event_id": "a\rb"},
        {"last_event_id": "a\x00b"},
        {"last_event_id": None},
    ],
)
def test_bad_arguments_are_local_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        EventStreamParser(**kwargs)  # type: ignore[arg-type]


# -- the events themselves and the fast path ----------------------------------------------


def test_message_event_is_frozen() -> None:
    event = parse(b"data: x\n\n")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]
    assert event == MessageEvent("message", "x", "")
    assert hash(event) == hash(MessageEvent("message", "x", ""))
    assert repr(event) == "MessageEvent(type='message', data='x', last_event_id='')"


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize(
    "body",
    [
        b"id: 1\ndata: a\n\n",  # one event per chunk
        b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n" * 50,  # a run of events
        b"data: a\n\ndata: b\n\n" * 50,
        b"id: 1\nevent: e\ndata: a\ndata: b\n\nevent: f\ndata: c\n\n" * 50,
    ],
    ids=["one event", "run of id+data", "run of data", "run of mixed shapes"],
)
def test_common_shapes_take_the_fast_path(
    body: bytes, line_end: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CRLF line ends are searched as they are, not normalised first.
    body = body.replace(b"\n", line_end)
    expected = parse(body)

    def no_line_by_line(*args: object) -> None:
        raise AssertionError("took the line-by-line path")

    parser = EventStreamParser()
    monkeypatch.setattr(EventStreamParser, "_lines", no_line_by_line)
    assert parser.receive_data(body) + parser.receive_data(body) == expected + expected


def test_message_event_is_a_named_tuple_that_refuses_changes() -> None:
    event = MessageEvent(type="t", data="d", last_event_id="i")
    assert event == ("t", "d", "i")
    kind, data, last_event_id = event
    assert (kind, data, last_event_id) == (event.type, event.data, event.last_event_id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del event.type  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.other = 1  # type: ignore[attr-defined]


A_AND_B = [MessageEvent("message", "a", ""), MessageEvent("message", "b", "")]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"data: a\r\ndata: b\r\n\r\n", [MessageEvent("message", "a\nb", "")]),
        (b"data: a\r\n\rdata: b\r\n\n", A_AND_B),
        (b"data: a\r\rdata: b\n\r\n", A_AND_B),
    ],
    ids=["only CRLF", "CRLF and a lone CR", "lone CRs"],
)
def test_crlf_only_chunks_and_lone_crs_mean_the_same(
    body: bytes, expected: list[MessageEvent]
) -> None:
    # A chunk with only CRLF line ends has its CRs dropped in one pass; one with a
    # lone CR anywhere (even at its end, as when split) is normalised CR by CR.
    assert parse(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"data: a\rb\r\n\r\n",  # a lone CR inside what looks like a value
        b"id: 1\r\ndata: a\r\ndata: b\rc\r\n\r\n",  # ... of a further data line
        b"event: e\rdata: a\r\n\r\n",  # ... of an event type
        b"data: a\r\r\ndata: b\r\n\r\n",  # a lone CR, then CRLF
        b"data: a\ndata: b\r\n\r\n",  # a lone LF
        b"data: a\r\n\rdata: b\r\n\r\n",  # a blank line ended by a lone CR
    ],
)
def test_lone_line_ends_among_crlf_are_line_ends(body: bytes) -> None:
    # A chunk whose first line end is CRLF is searched without normalising it; any
    # lone CR or LF in it must still end a line, wherever it is.
    reference = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for repeat in (1, 30):
        assert parse(body * repeat) == parse(reference * repeat)


@pytest.mark.parametrize(
    "body",
    [
        b"data: x\r\ndata: " + b"y" * 1100 + b"\ndata: z\r\n\r\n",  # a lone LF
        b"data: x\r\ndata: " + b"y" * 1100 + b"\rdata: z\r\n\r\n",  # a lone CR
        b"data: x\r\n: " + b"y" * 1100 + b"\r\n\n\r\rdata: z\r\n\r\n",
    ],
)
def test_lone_line_ends_among_crlf_are_line_ends_in_long_lines(body: bytes) -> None:
    # Chunks with long lines are read line by line, CRLF kept as it is; a lone CR or
    # LF must end a line there too.
    expected = feed_all(EventStreamParser(), [body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")])
    assert expected
    for cut in [*range(20), *range(1100, 1130)]:
        chunks = [body[:cut], body[cut:]]
        assert feed_all(EventStreamParser(), chunks) == expected
        assert feed_all(EventStreamParser(), [b"\r\n", *chunks]) == expected


def test_further_data_lines_without_space_leave_the_fast_shape() -> None:
    # Only "data: " (with the space) continues an event in the fast shape; "data:"
    # without it is read line by line, to the same result.
    body = b"id: 1\ndata: a\ndata:b\ndata: c\n\n" * 20
    expected = [MessageEvent("message", "a\nb\nc", "1")] * 20
    parser = EventStreamParser()
    assert parser.receive_data(body) == expected
    assert parse(b"id: 1\ndata: a\ndata:b\ndata: c\n\n") == expected[:1]


def test_a_line_trickling_in_tiny_chunks_costs_few_strings() -> None:
    """Memory for an unfinished line stays near the line's size, whatever the chunking."""
    parser = EventStreamParser(max_line_length=200_000)
    for _ in range(50_000):
        assert parser.receive_data(b"ab") == []
    assert parser._partial_len == 100_000
    assert len(parser._partial) < 40  # O(log n) pieces, not one per chunk
    # The line ends: a field named "abab..." (ignored), then a real event.
    [event] = parser.receive_data(b"\ndata: x\n\n")
    assert event.data == "x"


def test_a_line_arriving_in_big_chunks_is_not_copied_as_it_grows() -> None:
    # Pieces of 16 KiB or more stay as they came: merging them would only copy them
    # again, and there are few of them anyway.  The line is joined once at its end.
    parser = EventStreamParser()
    for _ in range(8):
        assert parser.receive_data(b"y" * 16384) == []
    assert len(parser._partial) == 9
    [event] = parser.receive_data(b"\n\ndata: x\n\n")
    assert event.data == "x"


@pytest.mark.parametrize(
    ("body", "size"),
    [
        (b"data: x\n" * 32768, None),  # an event still arriving: no blank line yet
        ((b"data: x\n" * 4096 + b"id: 1\n\n") * 8, None),  # the id after the data
        ((b"data: " + b"z" * 57 + b"\n") * 8192 + b"\n", 64),  # 512 KiB, 64 B at a time
        ((b"data: " + b"z" * 65536 + b"\n") * 16 + b"\n", 1000),  # 1 MiB of 64 KiB lines
    ],
    ids=["unfinished event", "id after data", "many lines in small chunks", "long lines"],
)
def test_a_big_event_costs_linear_time(body: bytes, size: int | None) -> None:
    # The fast path's search may only start at a blank line.  Starting at any line,
    # it retried at every line of a run of data lines that does not end as a shape
    # does, and each attempt ran to the run's end: 64 KiB of these took a second,
    # 256 KiB about twenty.  Nor may an event's data be joined again as each line or
    # chunk arrives.  Linear, each case takes some tens of milliseconds; the bound
    # leaves room for a slow machine.
    parser = EventStreamParser(max_event_size=2 << 20)
    chunks = [body] if size is None else [body[i : i + size] for i in range(0, len(body), size)]
    start = time.process_time()
    events = feed_all(parser, chunks)
    assert time.process_time() - start < 2.0
    assert len(events) == body.count(b"\n\n")
