"""The SSE form of a reset: type ``tidings.reset``, JSON data with the cursor."""

from __future__ import annotations

import json

import pytest

from tidings.sse.parser import EventStreamParser, MessageEvent
from tidings.sse.reset import RESET_EVENT_TYPE, ResetNotice, encode_reset_data, parse_reset


def reset_event(data: str) -> MessageEvent:
    return MessageEvent(type=RESET_EVENT_TYPE, data=data, last_event_id="e.1")


def test_encoded_reset_data_parses_back_to_the_same_notice() -> None:
    for reason in ("evicted", None):
        data = encode_reset_data("e.9", reason)
        assert "\n" not in data
        assert parse_reset(reset_event(data)) == ResetNotice(None, "e.9", reason)


def test_reset_travels_through_the_sse_parser() -> None:
    body = f"id: e.9\nevent: tidings.reset\ndata: {encode_reset_data('e.9', 'malformed')}\n\n"
    [event] = EventStreamParser().receive_data(body.encode())
    assert parse_reset(event) == ResetNotice(None, "e.9", "malformed")
    assert event.last_event_id == "e.9"  # a plain EventSource resumes from the head too


def test_unknown_members_are_ignored() -> None:
    data = json.dumps({"cursor": "e.3", "reason": "evicted", "head": "e.3", "lost": 4})
    assert parse_reset(reset_event(data)) == ResetNotice(None, "e.3", "evicted")


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "[]",
        '"e.1"',
        "{}",
        '{"cursor": 7}',
        '{"cursor": "e.1", "reason": 3}',
        "[" * 100_000,  # deeper than the JSON decoder's recursion limit
    ],
)
def test_malformed_reset_data_is_not_a_reset(data: str) -> None:
    assert parse_reset(reset_event(data)) is None


def test_other_event_types_are_not_resets() -> None:
    data = encode_reset_data("e.1")
    assert parse_reset(MessageEvent(type="message", data=data, last_event_id="")) is None


def test_the_notice_carries_the_topic_it_is_parsed_for() -> None:
    data = encode_reset_data("e.4", "evicted")
    assert parse_reset(reset_event(data), "news") == ResetNotice("news", "e.4", "evicted")
