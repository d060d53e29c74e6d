import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.backoff import Backoff, NoJitter
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError
from tidings.longpoll import (
    AdaptivePoller,
    ClientState,
    LongPollClient,
    PollEvent,
    PollRejected,
    PollReset,
    parse_poll_request,
)
from tidings.retry import GiveUp, Reconnect

URL = "http://h/topics/t/poll"
JSON = [(b"content-type", b"application/json")]


def answer(events: list[dict[str, Any]], cursor: str, reset: bool = False) -> bytes:
    return json.dumps({"events": events, "cursor": cursor, "reset": reset}).encode()


def client(**kwargs: Any) -> LongPollClient:
    kwargs.setdefault("rng", random.Random(0))
    kwargs.setdefault("backoff", Backoff(NoJitter(base=1.0, cap=8.0)))
    return LongPollClient(URL, **kwargs)


def sent(c: LongPollClient, now: float = 0.0) -> LongPollClient:
    c.send_request(now)
    return c


# --- building requests -----------------------------------------------------------


def test_first_request_without_cursor_asks_live_from_now() -> None:
    request = client().send_request(0.0)
    assert request.url == URL + "?timeout=25"
    assert ("accept", "application/json") in request.headers
    assert not any(name == "if-none-match" for name, _ in request.headers)
    assert request.timeout == 35.0


def test_cursor_travels_in_the_query_by_default() -> None:
    request = client(cursor="ep.4", limit=50, timeout=0.5).send_request(0.0)
    assert request.url == URL + "?cursor=ep.4&timeout=0.5&limit=50"


def test_cursor_travels_in_if_none_match_in_header_mode() -> None:
    request = client(cursor="ep.4", cursor_in="header").send_request(0.0)
    assert request.url == URL + "?timeout=25"
    assert ("if-none-match", '"ep.4"') in request.headers


def test_requests_round_trip_through_the_server_parser() -> None:
    for mode in ("query", "header"):
        request = client(cursor="ep.4", cursor_in=mode, limit=7).send_request(0.0)
        query = request.url.partition("?")[2]
        parsed = parse_poll_request(query, request.headers)
        assert str(parsed.cursor) == "ep.4"
        assert parsed.limit == 7
        assert parsed.conditional == (mode == "header")


def test_existing_query_in_the_url_is_kept() -> None:
    c = LongPollClient(URL + "?token=abc#frag", rng=random.Random(0))
    assert c.send_request(0.0).url == URL + "?token=abc&timeout=25"


def test_url_setting_client_parameters_is_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="cursor"):
        LongPollClient(URL + "?cursor=ep.1", rng=random.Random(0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cursor": "bad cursor"},
        {"cursor_in": "body"},
        {"timeout": -1.0},
        {"timeout": math.inf},
        {"limit": 0},
        {"min_interval": -1.0},
        {"max_body_size": 0},
    ],
)
def test_bad_client_settings_are_misuse(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        client(**kwargs)


def test_sending_twice_without_an_outcome_is_misuse() -> None:
    c = sent(client())
    with pytest.raises(LocalProtocolError):
        c.send_request(0.0)


def test_receiving_without_a_request_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        client().receive_response(200, JSON, answer([], "ep.1"), 0.0)
    with pytest.raises(LocalProtocolError):
        client().connection_failed(0.0)


# --- answers ---------------------------------------------------------------------


def test_events_are_surfaced_in_order_and_move_the_cursor() -> None:
    c = sent(client(cursor="ep.1"))
    events: list[dict[str, Any]] = [
        {"id": "ep.2", "event": None, "data": "a"},
        {"id": "ep.3", "event": "kind", "data": "b"},
    ]
    items = c.receive_response(200, JSON, answer(events, "ep.3"), 1.0)
    assert items == [PollEvent("ep.2", None, "a"), PollEvent("ep.3", "kind", "b")]
    assert c.cursor == "ep.3"
    assert c.state is ClientState.READY
    assert c.next_deadline() == 1.0  # more may be waiting: ask again at once
    assert "cursor=ep.3" in c.send_request(1.0).url


def test_event_without_an_event_field_is_untyped() -> None:
    c = sent(client())
    (item,) = c.receive_response(200, JSON, answer([{"id": "ep.2", "data": "a"}], "ep.2"), 0.0)
    assert item == PollEvent("ep.2", None, "a")


def test_reset_is_surfaced_and_moves_the_cursor_to_the_head() -> None:
    c = sent(client(cursor="old.5"))
    items = c.receive_response(200, JSON, answer([], "ep.9", reset=True), 1.0)
    assert items == [PollReset("ep.9")]
    assert c.cursor == "ep.9"
    assert c.next_deadline() == 1.0


def test_events_in_a_reset_answer_follow_the_reset() -> None:
    c = sent(client(cursor="old.5"))
    body = answer([{"id": "ep.1", "event": None, "data": "x"}], "ep.1", reset=True)
    assert c.receive_response(200, JSON, body, 0.0) == [
        PollReset("ep.1"),
        PollEvent("ep.1", None, "x"),
    ]


def test_repeated_resets_back_off() -> None:
    c = sent(client(cursor="old.5"))
    c.receive_response(200, JSON, answer([], "a.1", reset=True), 0.0)
    assert c.next_deadline() == 0.0
    c.send_request(0.0)
    c.receive_response(200, JSON, answer([], "b.1", reset=True), 0.0)
    assert c.next_deadline() == 1.0
    c.send_request(1.0)
    c.receive_response(200, JSON, answer([], "a.1", reset=True), 1.0)
    assert c.next_deadline() == 3.0
    c.send_request(3.0)
    c.receive_response(200, JSON, answer([{"id": "a.2", "data": "x"}], "a.2"), 3.0)
    assert c.attempt == 0


def test_empty_answer_keeps_the_cursor_and_paces_the_next_request() -> None:
    c = sent(client(cursor="ep.3"), now=10.0)
    assert c.receive_response(200, JSON, answer([], "ep.3"), 10.2) == []
    assert c.cursor == "ep.3"
    assert c.next_deadline() == 11.0  # min_interval after the request was sent
    c.send_request(11.0)
    c.receive_response(200, JSON, answer([], "ep.3"), 36.0)  # held for the full timeout
    assert c.next_deadline() == 36.0


def test_304_keeps_the_cursor() -> None:
    c = sent(client(cursor="ep.3", cursor_in="header"))
    assert c.receive_response(304, [(b"etag", b'"ep.3"')], b"", 25.0) == []
    assert c.cursor == "ep.3"
    assert c.next_deadline() == 25.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"cursor": "ep.1", "reset": false}', "'events'"),
        (b'{"events": [], "reset": false}', "'cursor'"),
        (b'{"events": [], "cursor": "ep.1"}', "'reset'"),
        (b'{"events": {}, "cursor": "ep.1", "reset": false}', "array"),
        (b'{"events": [], "cursor": 5, "reset": false}', "string"),
        (b'{"events": [], "cursor": "ep.1", "reset": 0}', "true or false"),
        (b'{"events": [1], "cursor": "ep.1", "reset": false}', r"events\[0\] must be an object"),
        (b'{"events": [{"data": "x"}], "cursor": "ep.1", "reset": false}', r"events\[0\]\.id"),
        (b'{"events": [{"id": "ep.1"}], "cursor": "ep.1", "reset": false}', r"\.data"),
        (
            b'{"events": [{"id": "ep.1", "data": 3}], "cursor": "ep.1", "reset": false}',
            r"\.data",
        ),
        (
            b'{"events": [{"id": "ep.1", "data": "x", "event": 1}], "cursor": "ep.1", '
            b'"reset": false}',
            r"\.event",
        ),
    ],
)
def test_invalid_answer_raises_and_closes(body: bytes, message: str) -> None:
    c = sent(client(cursor="ep.1"))
    with pytest.raises(RemoteProtocolError, match=message):
        c.receive_response(200, JSON, body, 0.0)
    assert c.closed
    assert c.cursor == "ep.1"
    assert c.next_deadline() is None


@pytest.mark.parametrize("cursor", ["nodot", "ep.01", "x" * 200 + ".1", ""])
def test_malformed_cursor_in_an_answer_is_an_invalid_cursor(cursor: str) -> None:
    c = sent(client())
    with pytest.raises(InvalidCursor):
        c.receive_response(200, JSON, answer([], cursor), 0.0)
    c = sent(client())
    with pytest.raises(InvalidCursor):
        c.receive_response(200, JSON, answer([{"id": cursor, "data": "x"}], "ep.1"), 0.0)


def test_non_json_content_type_is_rejected() -> None:
    c = sent(client())
    with pytest.raises(RemoteProtocolError, match="content-type"):
        c.receive_response(200, [("Content-Type", "text/html")], answer([], "ep.1"), 0.0)


def test_json_content_type_with_parameters_is_accepted() -> None:
    c = sent(client())
    headers = [(b"Content-Type", b"application/json; charset=utf-8")]
    assert c.receive_response(200, headers, answer([], "ep.1"), 0.0) == []


def test_oversized_body_is_rejected() -> None:
    c = sent(client(max_body_size=10))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        c.receive_response(200, JSON, answer([], "ep.1"), 0.0)


# --- errors and retries ----------------------------------------------------------


def test_connection_failure_backs_off_and_keeps_the_cursor() -> None:
    c = sent(client(cursor="ep.3"), now=0.0)
    assert c.connection_failed(0.5, "refused") == Reconnect(1.0, "network error: refused")
    assert c.next_deadline() == 1.5
    assert c.cursor == "ep.3"
    c.send_request(1.5)
    assert c.connection_failed(1.5) == Reconnect(2.0, "network error")
    assert c.attempt == 2
    c.send_request(3.5)
    c.receive_response(200, JSON, answer([], "ep.3"), 4.0)
    assert c.attempt == 2  # an answer with nothing new is no progress yet...
    c.send_request(4.0)
    c.receive_response(200, JSON, answer([{"id": "ep.4", "data": "x"}], "ep.4"), 5.0)
    assert c.attempt == 0  # ...an event is


def test_a_failure_soon_after_an_empty_answer_still_counts() -> None:
    """A server that answers "nothing new" and then fails cannot make the client spin."""
    c = sent(client())
    delays = []
    now = 0.0
    for _ in range(4):
        c.receive_response(200, JSON, answer([], "ep.1"), now)
        c.send_request(now + 1.0)
        decision = c.connection_failed(now + 1.5)
        assert isinstance(decision, Reconnect)
        delays.append(decision.delay)
        now += 1.5 + decision.delay
        c.send_request(now)
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_a_run_of_good_answers_that_lasted_the_stable_period_resets_the_backoff() -> None:
    c = sent(client())
    for t in range(3):
        c.connection_failed(float(t))
        c.send_request(float(t))
    assert c.attempt == 3
    c.receive_response(200, JSON, answer([], "ep.1"), 10.0)
    c.send_request(11.0)
    c.receive_response(200, JSON, answer([], "ep.1"), 36.0)
    c.send_request(37.0)
    assert c.connection_failed(50.0) == Reconnect(1.0, "network error")


def test_max_retries_gives_up_with_a_rejection() -> None:
    c = sent(client(max_retries=1))
    assert isinstance(c.connection_failed(0.0), Reconnect)
    c.send_request(1.0)
    decision = c.connection_failed(1.0, "refused")
    assert decision == GiveUp("gave up after 1 retries (network error: refused)")
    assert c.closed
    assert c.gave_up == decision
    c = sent(client(max_retries=0))
    with pytest.raises(PollRejected, match="gave up after 0 retries") as info:
        c.receive_response(503, [], b"", 0.0)
    assert info.value.status == 503


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses_back_off(status: int) -> None:
    c = sent(client())
    assert c.receive_response(status, [], b"<html>busy</html>", 10.0) == []
    assert c.state is ClientState.READY
    assert c.next_deadline() == 11.0


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_retry_after_seconds_is_a_floor_under_the_backoff(status: int) -> None:
    c = sent(client())
    c.receive_response(status, [(b"Retry-After", b"120")], b"", 10.0)
    assert c.next_deadline() == 131.0


def test_retry_after_adds_to_the_backoff() -> None:
    c = sent(client(backoff=Backoff(NoJitter(base=5.0, cap=8.0))))
    c.receive_response(503, [(b"retry-after", b"1")], b"", 0.0)
    assert c.next_deadline() == 6.0


def test_retry_after_is_capped() -> None:
    c = sent(client(max_retry_after=60.0))
    c.receive_response(429, [(b"retry-after", b"86400")], b"", 0.0)
    assert c.next_deadline() == 61.0


def test_retry_after_date_is_measured_against_the_date_header() -> None:
    c = sent(client())
    headers = [
        (b"date", b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (b"retry-after", b"Sun, 06 Nov 1994 08:50:37 GMT"),
    ]
    c.receive_response(503, headers, b"", 100.0, wall_time=0.0)
    assert c.next_deadline() == 161.0


def test_retry_after_date_uses_wall_time_without_a_date_header() -> None:
    c = sent(client())
    headers = [(b"retry-after", b"Sun, 06 Nov 1994 08:50:37 GMT")]
    c.receive_response(503, headers, b"", 100.0, wall_time=784111837.0 - 30)
    assert c.next_deadline() == 131.0


def test_retry_after_date_without_any_clock_is_ignored() -> None:
    c = sent(client())
    c.receive_response(503, [(b"retry-after", b"Sun, 06 Nov 1994 08:50:37 GMT")], b"", 100.0)
    assert c.next_deadline() == 101.0


def test_garbled_retry_after_only_loses_the_floor() -> None:
    c = sent(client())
    c.receive_response(429, [(b"retry-after", b"soon")], b"", 0.0)
    assert c.next_deadline() == 1.0


def test_the_head_of_an_event_stream_is_refused_before_its_endless_body() -> None:
    c = sent(client())
    with pytest.raises(RemoteProtocolError, match="event stream"):
        c.receive_head(200, [(b"content-type", b"text/event-stream")])
    assert c.closed


def test_the_head_of_an_html_page_is_refused() -> None:
    c = sent(client())
    with pytest.raises(RemoteProtocolError, match="text/html"):
        c.receive_head(200, [(b"content-type", b"text/html; charset=utf-8")])


@pytest.mark.parametrize("status", [200, 304, 404, 503])
def test_other_heads_wait_for_the_body(status: int) -> None:
    c = sent(client())
    c.receive_head(status, JSON)
    assert c.state is ClientState.WAITING


def test_a_reset_reason_in_the_answer_is_kept() -> None:
    c = sent(client(cursor="old.5"))
    body = json.dumps({"events": [], "cursor": "a.1", "reset": True, "reason": "evicted"})
    assert c.receive_response(200, JSON, body.encode(), 0.0) == [PollReset("a.1", "evicted")]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301, 201, 501])
def test_other_statuses_stop_with_a_typed_error(status: int) -> None:
    c = sent(client())
    with pytest.raises(PollRejected) as info:
        c.receive_response(status, JSON, b'{"error": "no such topic"}', 0.0)
    assert info.value.status == status
    assert "no such topic" in str(info.value)
    assert c.closed


@pytest.mark.parametrize("status", [600, 999])
def test_a_status_no_http_response_can_have_stops_with_a_typed_error(status: int) -> None:
    # Found by fuzz/fuzz_longpoll.py: it raised LocalProtocolError from the retry table.
    c = sent(client())
    with pytest.raises(PollRejected, match=f"invalid HTTP status {status}") as info:
        c.receive_response(status, JSON, b"", 0.0)
    assert info.value.status == status
    assert c.closed


def test_rejection_without_a_json_body_still_names_the_status() -> None:
    c = sent(client())
    with pytest.raises(PollRejected, match="404"):
        c.receive_response(404, [], b"<h1>Not found</h1>", 0.0)


def test_204_stops_quietly() -> None:
    c = sent(client())
    assert c.receive_response(204, [], b"", 0.0) == []
    assert c.closed
    with pytest.raises(LocalProtocolError):
        c.send_request(1.0)


def test_close_stops() -> None:
    c = client()
    c.close()
    c.close()
    assert c.closed
    assert c.next_deadline() is None


# --- conditional short polling with an AdaptivePoller ----------------------------


def test_poller_mode_short_polls_with_if_none_match() -> None:
    c = client(cursor="ep.1", poller=AdaptivePoller(active=2.0, idle=30.0, factor=2.0))
    request = c.send_request(0.0)
    assert request.url == URL + "?timeout=0"
    assert ("if-none-match", '"ep.1"') in request.headers


def test_poller_mode_paces_unchanged_answers_and_snaps_back_on_change() -> None:
    c = client(cursor="ep.1", poller=AdaptivePoller(active=2.0, idle=10.0, factor=2.0))
    now = 0.0
    waits = []
    for _ in range(5):
        c.send_request(now)
        c.receive_response(304, [], b"", now)
        deadline = c.next_deadline()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    c.send_request(now)
    c.receive_response(200, JSON, answer([{"id": "ep.2", "data": "x"}], "ep.2"), now)
    assert c.next_deadline() == now  # events: ask again at once
    c.send_request(now)
    c.receive_response(304, [], b"", now)
    assert c.next_deadline() == now + 2.0


def test_repr_mentions_the_cursor() -> None:
    assert "ep.1" in repr(client(cursor="ep.1"))


def accepted_as_written(c: LongPollClient, body: bytes, items: list[PollEvent | PollReset]) -> None:
    """A 200 answer was accepted: it is a JSON object saying exactly what came out."""
    document = json.loads(body)
    assert isinstance(document, dict)
    assert c.state is ClientState.READY
    assert c.cursor == document["cursor"]
    reason = document.get("reason")
    reset = PollReset(document["cursor"], reason if isinstance(reason, str) else None)
    assert [i for i in items if isinstance(i, PollReset)] == ([reset] if document["reset"] else [])
    if document["reset"]:
        assert items[0] == reset  # before the events that continue from it
    assert [i for i in items if isinstance(i, PollEvent)] == [
        PollEvent(e["id"], e.get("event"), e["data"]) for e in document["events"]
    ]


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bodies_give_items_or_a_remote_protocol_error(body: bytes) -> None:
    c = sent(client())
    try:
        items = c.receive_response(200, JSON, body, 0.0)
    except RemoteProtocolError:
        assert c.closed
    else:
        accepted_as_written(c, body, items)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
cursors = st.sampled_from(["ep.1", "ep.20", "x_1.0", "ep", "", "ep.-1", "é.1"])
# Answers of the right shape, each field sometimes of a wrong one: both paths run.
answers = st.fixed_dictionaries(
    {
        "events": st.lists(
            st.fixed_dictionaries(
                {"id": cursors, "data": st.text(max_size=5)},
                optional={"event": st.none() | st.sampled_from(["tick", ""])},
            ),
            max_size=3,
        )
        | json_values,
        "cursor": cursors | json_values,
        "reset": st.booleans() | json_values,
    },
    optional={"reason": st.sampled_from(["evicted", "unknown-epoch"]) | json_values},
)


@given(json_values | answers)
@settings(max_examples=300)
def test_arbitrary_json_gives_items_or_a_remote_protocol_error(document: object) -> None:
    c = sent(client())
    body = json.dumps(document).encode()
    try:
        items = c.receive_response(200, JSON, body, 0.0)
    except RemoteProtocolError:
        assert c.closed
    else:
        accepted_as_written(c, body, items)
