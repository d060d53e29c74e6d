import json
from typing import Any

import pytest

from tidings.cursor import Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.follow import ReadHistory
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent
from tidings.longpoll import (
    LongPollServer,
    PollAnswer,
    PollRequest,
    encode_poll_body,
    error_answer,
    parse_poll_request,
)
from tidings.longpoll.server import answer_read


def history_with(count: int, *, max_events: int = 1000) -> MemoryHistory:
    history = MemoryHistory("ep", max_events=max_events)
    for i in range(1, count + 1):
        history.append("t", f"event {i}")
    return history


def body(answer: PollAnswer) -> dict[str, Any]:
    document = json.loads(answer.body)
    assert isinstance(document, dict)
    return document


def header(answer: PollAnswer, name: bytes) -> bytes | None:
    values = [value for key, value in answer.headers if key == name]
    assert len(values) <= 1
    return values[0] if values else None


def answered(answer: PollAnswer | None) -> PollAnswer:
    assert answer is not None
    return answer


def test_waiting_events_are_answered_at_once() -> None:
    history = history_with(3)
    first = history.head("t").epoch
    server = LongPollServer("t", PollRequest(Position(first, 1)), now=100.0)
    answer = answered(server.poll(history, 100.0))
    assert answer.status == 200
    document = body(answer)
    assert document == {
        "events": [
            {"id": f"{first}.2", "event": None, "data": "event 2"},
            {"id": f"{first}.3", "event": None, "data": "event 3"},
        ],
        "cursor": f"{first}.3",
        "reset": False,
    }
    assert server.answer is answer
    assert server.next_deadline() is None


def test_answer_headers_are_json_no_store_and_etag_of_the_cursor() -> None:
    history = history_with(2)
    server = LongPollServer("t", parse_poll_request("cursor=earliest"), now=0.0)
    answer = answered(server.poll(history, 0.0))
    assert header(answer, b"content-type") == b"application/json"
    assert header(answer, b"cache-control") == b"no-store"
    assert header(answer, b"etag") == b'"' + body(answer)["cursor"].encode() + b'"'
    assert header(answer, b"content-length") == str(len(answer.body)).encode()


def test_event_type_and_non_ascii_data_survive_encoding() -> None:
    history = MemoryHistory("ep")
    history.append("t", 'line "1"\nline\u2028 2 \u00e9\U0001f600', event="chat")
    server = LongPollServer("t", PollRequest("earliest"), now=0.0)
    answer = answered(server.poll(history, 0.0))
    assert answer.body.isascii()
    (event,) = body(answer)["events"]
    assert event["event"] == "chat"
    assert event["data"] == 'line "1"\nline\u2028 2 \u00e9\U0001f600'


def test_nothing_waiting_holds_until_the_deadline() -> None:
    history = history_with(2)
    server = LongPollServer("t", PollRequest(history.head("t"), timeout=10.0), now=5.0)
    assert server.poll(history, 5.0) is None
    assert server.next_deadline() == 15.0
    assert server.answer is None
    assert server.handle_timer(14.999) is None


def test_deadline_answers_200_with_no_events_and_the_same_cursor() -> None:
    history = history_with(2)
    head = history.head("t")
    server = LongPollServer("t", PollRequest(head, timeout=10.0), now=5.0)
    assert server.poll(history, 5.0) is None
    answer = answered(server.handle_timer(15.0))
    assert answer.status == 200
    assert body(answer) == {"events": [], "cursor": head.format(), "reset": False}
    assert header(answer, b"etag") == f'"{head}"'.encode()


def test_publish_while_held_answers_with_the_new_event() -> None:
    history = history_with(2)
    server = LongPollServer("t", PollRequest(history.head("t"), timeout=10.0), now=0.0)
    assert server.poll(history, 0.0) is None
    assert server.poll(history, 1.0) is None  # a spurious wake-up keeps holding
    stored = history.append("t", "new")
    answer = answered(server.poll(history, 2.0))
    assert body(answer)["events"] == [{"id": str(stored.position), "event": None, "data": "new"}]
    assert body(answer)["cursor"] == str(stored.position)


def test_no_cursor_means_live_from_the_head_at_the_first_poll() -> None:
    history = history_with(3)
    server = LongPollServer("t", PollRequest(None, timeout=10.0), now=0.0)
    initial = server.read_after
    assert initial is None
    assert server.poll(history, 0.0) is None
    assert server.read_after == history.head("t")
    stored = history.append("t", "later")
    document = body(answered(server.poll(history, 1.0)))
    assert [e["data"] for e in document["events"]] == ["later"]
    assert document["cursor"] == str(stored.position)


def test_live_from_now_times_out_with_the_head_as_cursor() -> None:
    history = history_with(3)
    server = LongPollServer("t", PollRequest(None, timeout=1.0), now=0.0)
    assert server.poll(history, 0.0) is None
    assert body(answered(server.handle_timer(1.0)))["cursor"] == str(history.head("t"))


def test_earliest_returns_everything_retained() -> None:
    history = history_with(5, max_events=3)
    server = LongPollServer("t", PollRequest("earliest"), now=0.0)
    document = body(answered(server.poll(history, 0.0)))
    assert [e["data"] for e in document["events"]] == ["event 3", "event 4", "event 5"]
    assert document["reset"] is False


def test_earliest_on_an_empty_topic_holds_from_the_start() -> None:
    history = MemoryHistory("ep")
    server = LongPollServer("t", PollRequest("earliest", timeout=5.0), now=0.0)
    assert server.poll(history, 0.0) is None
    assert server.read_after == history.head("t")
    history.append("t", "first")
    assert [e["data"] for e in body(answered(server.poll(history, 1.0)))["events"]] == ["first"]


def test_conditional_request_times_out_with_304_and_no_body() -> None:
    history = history_with(2)
    head = history.head("t")
    request = parse_poll_request(b"timeout=3", [(b"if-none-match", f'"{head}"'.encode())])
    server = LongPollServer("t", request, now=0.0)
    assert server.poll(history, 0.0) is None
    answer = answered(server.handle_timer(3.0))
    assert answer.status == 304
    assert answer.body == b""
    assert header(answer, b"etag") == f'"{head}"'.encode()
    assert header(answer, b"cache-control") == b"no-store"
    assert header(answer, b"content-type") is None
    assert header(answer, b"content-length") is None


def test_conditional_short_poll_answers_304_at_once() -> None:
    history = history_with(2)
    weak_tag = f'W/"{history.head("t")}"'
    request = parse_poll_request("timeout=0", [("if-none-match", weak_tag)])
    answer = answered(LongPollServer("t", request, now=0.0).poll(history, 0.0))
    assert answer.status == 304


def test_conditional_request_with_new_events_gets_200() -> None:
    history = history_with(2)
    request = PollRequest(Position(history.head("t").epoch, 1), conditional=True)
    answer = answered(LongPollServer("t", request, now=0.0).poll(history, 0.0))
    assert answer.status == 200
    assert len(body(answer)["events"]) == 1


def test_conditional_earliest_on_empty_topic_times_out_with_200_and_a_real_cursor() -> None:
    history = MemoryHistory("ep")
    request = parse_poll_request(b"timeout=0", [(b"if-none-match", b'"earliest"')])
    answer = answered(LongPollServer("t", request, now=0.0).poll(history, 0.0))
    assert answer.status == 200
    assert body(answer)["cursor"] == str(history.head("t"))


def test_other_epoch_answers_a_reset_before_everything_retained() -> None:
    # The reset is answered alone; polling on from its cursor gets every retained event.
    history = history_with(4)
    server = LongPollServer("t", PollRequest(Position("elsewhere", 2)), now=0.0)
    answer = answered(server.poll(history, 0.0))
    assert answer.status == 200
    cursor = Position(history.head("t").epoch, 0)
    assert body(answer) == {
        "events": [],
        "cursor": str(cursor),
        "reset": True,
        "reason": "unknown-epoch",
    }
    assert header(answer, b"etag") == f'"{cursor}"'.encode()
    after = answered(LongPollServer("t", PollRequest(cursor), now=0.0).poll(history, 0.0))
    assert [e["data"] for e in body(after)["events"]] == [f"event {i}" for i in range(1, 5)]


def test_evicted_position_answers_a_reset_before_the_earliest_retained() -> None:
    history = history_with(10, max_events=3)
    epoch = history.head("t").epoch
    answer = answered(
        LongPollServer("t", PollRequest(Position(epoch, 2)), now=0.0).poll(history, 0.0)
    )
    assert body(answer) == {
        "events": [],
        "cursor": f"{epoch}.7",
        "reset": True,
        "reason": "evicted",
    }


def test_position_ahead_of_the_head_answers_a_reset() -> None:
    history = history_with(2)
    epoch = history.head("t").epoch
    answer = answered(
        LongPollServer("t", PollRequest(Position(epoch, 9)), now=0.0).poll(history, 0.0)
    )
    assert body(answer)["reset"] is True


def test_eviction_while_held_answers_a_reset() -> None:
    history = history_with(3, max_events=3)
    server = LongPollServer("t", PollRequest(history.head("t"), timeout=10.0), now=0.0)
    assert server.poll(history, 0.0) is None
    for i in range(5):
        history.append("t", f"burst {i}")
    assert body(answered(server.poll(history, 1.0)))["reset"] is True


def test_limit_caps_the_events_in_one_answer() -> None:
    history = history_with(10)
    server = LongPollServer("t", parse_poll_request("cursor=earliest&limit=4"), now=0.0)
    document = body(answered(server.poll(history, 0.0)))
    assert [e["data"] for e in document["events"]] == [f"event {i}" for i in range(1, 5)]
    assert document["cursor"] == document["events"][-1]["id"]


@pytest.mark.parametrize(
    ("query", "headers"),
    [("cursor=bogus", []), ("", [(b"if-none-match", b'"bogus"')])],
)
def test_malformed_cursor_gets_a_malformed_reset_to_the_head_at_once(
    query: str, headers: list[tuple[bytes, bytes]]
) -> None:
    history = history_with(3)
    head = history.head("t").format()
    server = LongPollServer("t", parse_poll_request(query, headers), now=0.0)
    answer = answered(server.poll(history, 0.0))
    assert answer.status == 200
    assert body(answer) == {
        "events": [],
        "cursor": head,
        "reset": True,
        "reason": ResetReason.MALFORMED.value,
    }
    assert header(answer, b"etag") == f'"{head}"'.encode()
    # Polling on from the reset's cursor follows the topic.
    server = LongPollServer("t", parse_poll_request(f"cursor={head}"), now=0.0)
    assert server.poll(history, 0.0) is None
    history.append("t", "event 4")
    assert [e["data"] for e in body(answered(server.poll(history, 0.0)))["events"]] == ["event 4"]


def test_a_bad_request_becomes_a_400_json_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_poll_request("limit=0")
    answer = error_answer(str(info.value), info.value.error_status_hint)
    assert answer.status == 400
    error = "query parameter 'limit' must be a positive integer"
    assert json.loads(answer.body) == {"error": error}
    assert header(answer, b"content-type") == b"application/json"
    assert header(answer, b"content-length") == str(len(answer.body)).encode()


def test_error_answer_needs_an_error_status() -> None:
    with pytest.raises(LocalProtocolError):
        error_answer("fine", 200)


def test_receive_read_drives_the_server_without_a_history() -> None:
    head = Position("ep", 4)
    server = LongPollServer("t", PollRequest(None, timeout=2.0), now=0.0)
    assert server.read == ReadHistory(None, PollRequest().limit)  # the head first
    assert server.receive_read(Replay((), head), 0.0) is None
    assert server.read is None  # held: nothing to read until something is published
    assert server.read_after == head
    assert server.limit == PollRequest().limit
    assert server.published() == ReadHistory(head, PollRequest().limit)
    event = StoredEvent(Position("ep", 5), "x")
    answer = answered(server.receive_read(Replay((event,), event.position), 1.0))
    assert body(answer)["cursor"] == "ep.5"
    with pytest.raises(LocalProtocolError):
        server.receive_read(Replay((), head), 1.0)


def test_answer_now_says_nothing_new_before_the_deadline() -> None:
    server = LongPollServer("t", PollRequest(Position("ep", 1), timeout=30.0), now=0.0)
    assert server.receive_read(Replay((), Position("ep", 1)), 0.0) is None
    answer = server.answer_now()
    assert body(answer) == {"events": [], "cursor": "ep.1", "reset": False}
    assert server.next_deadline() is None


def test_one_answer_computed_for_many_held_requests_is_the_answer_each_would_give() -> None:
    history = history_with(2)
    head = history.head("t")
    servers = [LongPollServer("t", PollRequest(head, timeout=9.0), now=0.0) for _ in range(3)]
    for server in servers:
        assert server.poll(history, 0.0) is None
    history.append("t", "new")
    read = servers[0].published()
    assert read is not None
    assert isinstance(read.after, Position)
    result = history.read("t", read.after, read.limit)
    shared = answer_read(read.after, result, read.limit)
    assert shared is not None
    assert servers[1].poll(history, 1.0) == shared
    for server in servers[2:]:
        server.published()
        assert server.receive_answer(result, shared) is shared
        assert server.answer is shared


def test_receive_read_of_a_reset_answers_a_reset() -> None:
    server = LongPollServer("t", PollRequest(Position("ep", 1)), now=0.0)
    answer = answered(server.receive_read(Reset(Position("ep", 9), ResetReason.EVICTED), 0.0))
    assert body(answer) == {"events": [], "cursor": "ep.9", "reset": True, "reason": "evicted"}


def test_empty_read_after_the_deadline_answers_as_the_timer_would() -> None:
    server = LongPollServer("t", PollRequest(Position("ep", 1), timeout=1.0), now=0.0)
    answer = answered(server.receive_read(Replay((), Position("ep", 1)), 5.0))
    assert body(answer) == {"events": [], "cursor": "ep.1", "reset": False}


def test_calls_after_the_answer_are_misuse() -> None:
    history = history_with(1)
    server = LongPollServer("t", PollRequest("earliest"), now=0.0)
    answered(server.poll(history, 0.0))
    with pytest.raises(LocalProtocolError):
        server.poll(history, 1.0)
    with pytest.raises(LocalProtocolError):
        server.handle_timer(100.0)
    with pytest.raises(LocalProtocolError):
        server.receive_read(Replay((), Position("ep", 1)), 1.0)


def test_timer_before_the_first_read_is_misuse() -> None:
    server = LongPollServer("t", PollRequest(None, timeout=0.0), now=0.0)
    with pytest.raises(LocalProtocolError):
        server.handle_timer(1.0)


def test_non_finite_now_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        LongPollServer("t", PollRequest(), now=float("nan"))


def test_encode_poll_body_is_compact_json() -> None:
    events = [StoredEvent(Position("ep", 1), "a", "k")]
    encoded = encode_poll_body(events, Position("ep", 1), reset=False)
    assert (
        encoded
        == b'{"events":[{"id":"ep.1","event":"k","data":"a"}],"cursor":"ep.1","reset":false}'
    )
    assert json.loads(encoded) == json.loads(json.dumps(json.loads(encoded)))


def test_many_held_requests_are_all_answered_by_one_publish() -> None:
    history = history_with(1)
    head = history.head("t")
    servers = [LongPollServer("t", PollRequest(head, timeout=30.0), now=0.0) for _ in range(1000)]
    assert all(server.poll(history, 0.0) is None for server in servers)
    history.append("t", "wake")
    answers = [answered(server.poll(history, 0.1)) for server in servers]
    assert len({a.body for a in answers}) == 1
    assert [e["data"] for e in body(answers[0])["events"]] == ["wake"]


def test_misuse_of_the_read_protocol_raises() -> None:
    server = LongPollServer("t", PollRequest(Position("ep", 1), timeout=9.0), now=0.0)
    assert "held" in repr(server)
    with pytest.raises(LocalProtocolError):
        server.receive_read("nonsense", 0.0)  # type: ignore[arg-type]
    server.receive_read(Replay((), Position("ep", 1)), 0.0)
    with pytest.raises(LocalProtocolError):
        server.receive_answer(Replay((), Position("ep", 1)), server.answer_now())
    assert "answered 200" in repr(server)


def test_a_publish_while_a_read_is_pending_asks_for_that_read_only() -> None:
    server = LongPollServer("t", PollRequest(Position("ep", 1), timeout=9.0), now=0.0)
    pending = server.read
    assert server.published() == pending
