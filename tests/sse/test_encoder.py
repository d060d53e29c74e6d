"""The encoder writes what the parser reads back, and refuses what it cannot write."""

from __future__ import annotations

import dataclasses
import enum
import pickle

import pytest

from tidings.errors import LocalProtocolError
from tidings.sse.encoder import ServerSentEvent, encode_comment, encode_event
from tidings.sse.parser import EventStreamParser, MessageEvent


def roundtrip(body: bytes) -> list[MessageEvent]:
    parser = EventStreamParser()
    return parser.receive_data(body)


def test_data_line() -> None:
    assert ServerSentEvent(data="hello").encode() == b"data: hello\n\n"


@pytest.mark.parametrize("data", ["a\nb", "a\r\nb", "a\rb"])
def test_data_split_on_every_line_end(data: str) -> None:
    assert ServerSentEvent(data=data).encode() == b"data: a\ndata: b\n\n"


def test_data_with_consecutive_and_trailing_line_ends() -> None:
    body = ServerSentEvent(data="a\r\n\r\nb\n").encode()
    assert body == b"data: a\ndata: \ndata: b\ndata: \n\n"
    assert roundtrip(body) == [MessageEvent("message", "a\n\nb\n", "")]


def test_cr_cr_in_data_is_two_line_ends() -> None:
    assert ServerSentEvent(data="a\r\rb").encode() == b"data: a\ndata: \ndata: b\n\n"


def test_empty_data_is_one_empty_data_line() -> None:
    body = ServerSentEvent(data="").encode()
    assert body == b"data: \n\n"
    assert roundtrip(body) == [MessageEvent("message", "", "")]


def test_no_data_means_no_data_line() -> None:
    body = ServerSentEvent(id="7").encode()
    assert body == b"id: 7\n\n"
    assert roundtrip(body) == []


def test_empty_event_is_a_blank_line() -> None:
    assert ServerSentEvent().encode() == b"\n"


def test_value_starting_with_space_survives() -> None:
    body = ServerSentEvent(data=" x", event=" e", id=" 1").encode()
    assert roundtrip(body) == [MessageEvent(" e", " x", " 1")]


def test_utf8_and_nul_in_data() -> None:
    body = ServerSentEvent(data="é\x00€").encode()
    assert body == "data: é\x00€\n\n".encode()
    assert roundtrip(body)[0].data == "é\x00€"


def test_field_order() -> None:
    body = ServerSentEvent(data="d", event="e", id="i", retry=5, comment="c").encode()
    assert body == b": c\nretry: 5\nid: i\nevent: e\ndata: d\n\n"


def test_multi_line_comment_becomes_several_comment_lines() -> None:
    assert ServerSentEvent(comment="a\nb\r\nc").encode() == b": a\n: b\n: c\n\n"
    assert ServerSentEvent(comment="").encode() == b":\n\n"
    assert ServerSentEvent(comment="a\n").encode() == b": a\n:\n\n"


def test_comment_dispatches_nothing() -> None:
    assert roundtrip(ServerSentEvent(comment="x\ndata: injected").encode()) == []


def test_empty_id_resets_the_last_event_id() -> None:
    body = ServerSentEvent(data="a", id="1").encode() + ServerSentEvent(data="b", id="").encode()
    assert [event.last_event_id for event in roundtrip(body)] == ["1", ""]


def test_empty_event_type_parses_as_message() -> None:
    assert roundtrip(ServerSentEvent(data="x", event="").encode())[0].type == "message"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b", "\n", "\x00"])
def test_id_with_cr_lf_or_nul_rejected(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        ServerSentEvent(data="x", id=bad)
    with pytest.raises(LocalProtocolError):
        encode_event("x", id=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "\r\n", "x\ndata: injected"])
def test_event_with_cr_or_lf_rejected(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        ServerSentEvent(data="x", event=bad)
    with pytest.raises(LocalProtocolError):
        encode_event("x", event=bad)


def test_event_with_nul_allowed() -> None:
    assert roundtrip(ServerSentEvent(data="x", event="a\x00b").encode())[0].type == "a\x00b"


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, False, [1]])
def test_bad_retry_rejected(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        ServerSentEvent(retry=bad)  # type: ignore[arg-type]


def test_retry_zero_and_int_subclass() -> None:
    class Millis(enum.IntEnum):
        SECOND = 1000

    assert ServerSentEvent(retry=0).encode() == b"retry: 0\n\n"
    assert ServerSentEvent(retry=Millis.SECOND).encode() == b"retry: 1000\n\n"


def test_retry_roundtrip() -> None:
    parser = EventStreamParser()
    parser.receive_data(ServerSentEvent(retry=2500).encode())
    assert parser.retry == 2500


@pytest.mark.parametrize("field", ["data", "event", "id", "comment"])
def test_non_str_fields_rejected(field: str) -> None:
    with pytest.raises(LocalProtocolError):
        ServerSentEvent(**{field: b"bytes"})  # type: ignore[arg-type]


def test_lone_surrogate_rejected() -> None:
    with pytest.raises(LocalProtocolError):
        ServerSentEvent(data="\ud800").encode()
    with pytest.raises(LocalProtocolError):
        encode_event("\ud800")


def test_server_sent_event_is_frozen() -> None:
    event = ServerSentEvent(data="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "event", "id"),
    [("x", None, None), ("a\nb", "e", "1"), ("", "", ""), ("a\r\n", None, "i.9"), ("x", "t", None)],
)
def test_encode_event_matches_server_sent_event(
    data: str, event: str | None, id: str | None
) -> None:
    assert encode_event(data, event=event, id=id) == ServerSentEvent(data, event, id).encode()


def test_encode_event_rejects_non_str_data() -> None:
    with pytest.raises(LocalProtocolError):
        encode_event(None)  # type: ignore[arg-type]


def test_encode_comment_has_no_blank_line() -> None:
    assert encode_comment() == b":\n"
    assert encode_comment("ping") == b": ping\n"
    assert encode_comment("a\r\nb") == b": a\n: b\n"
    with pytest.raises(LocalProtocolError):
        encode_comment(3)  # type: ignore[arg-type]


def test_comment_between_events_changes_nothing() -> None:
    body = encode_event("a", id="1") + encode_comment("hb") + encode_event("b")
    assert roundtrip(body) == [MessageEvent("message", "a", "1"), MessageEvent("message", "b", "1")]


def test_str_subclass_written_by_content() -> None:
    class Sneaky(str):
        def __str__(self) -> str:
            return "1\ndata: injected"

        def __format__(self, spec: str) -> str:
            return "1\ndata: injected"

    event = ServerSentEvent(data=Sneaky("x"), event=Sneaky("e"), id=Sneaky("1"))
    assert event.encode() == b"id: 1\nevent: e\ndata: x\n\n"
    assert encode_event(Sneaky("x"), event=Sneaky("e"), id=Sneaky("1")) == event.encode()
    assert encode_comment(Sneaky("c")) == b": c\n"


@pytest.mark.parametrize("field", ["data", "event", "id", "retry", "comment"])
def test_server_sent_event_refuses_changes_to_every_field(field: str) -> None:
    event = ServerSentEvent(data="x", id="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, None)
    assert event.encode() == b"id: 1\ndata: x\n\n"


def test_server_sent_event_behaves_like_a_frozen_dataclass() -> None:
    event = ServerSentEvent(data="x", event="e", id="1", retry=5, comment="c")
    same = ServerSentEvent("x", "e", "1", 5, "c")
    assert event == same
    assert hash(event) == hash(same)
    assert event != ServerSentEvent(data="x", event="e", id="2", retry=5, comment="c")
    assert event != ("x", "e", "1", 5, "c")
    assert repr(event) == ("ServerSentEvent(data='x', event='e', id='1', retry=5, comment='c')")
    assert (event.data, event.event, event.id, event.retry, event.comment) == (
        "x",
        "e",
        "1",
        5,
        "c",
    )
    assert pickle.loads(pickle.dumps(event)) == event
    match event:
        case ServerSentEvent("x", "e", id=event_id):
            assert event_id == "1"
        case _:
            raise AssertionError("positional match on the fields failed")


@pytest.mark.parametrize(
    "kwargs",
    [{"data": "x"}, {"data": "x", "id": "7"}, {"id": "7"}, {"data": "a\nb", "id": "7"}],
)
def test_plain_data_and_id_encode_like_the_general_way(kwargs: dict[str, str]) -> None:
    # encode() writes an event with only data (and an id) in one piece; the result
    # is what the field-by-field way gives with an empty comment list around it.
    event = ServerSentEvent(**kwargs)  # type: ignore[arg-type]
    with_comment = ServerSentEvent(**kwargs, comment="c")  # type: ignore[arg-type]
    assert b": c\n" + event.encode() == with_comment.encode()
