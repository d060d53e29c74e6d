import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.backoff import Backoff, NoJitter
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.retry import GiveUp, Reconnect
from tidings.sse.client import (
    DEFAULT_MAX_RECONNECTION_TIME,
    EventSourceClient,
    EventSourceCloseReason,
    EventSourceState,
)
from tidings.sse.parser import MessageEvent

SSE = [(b"content-type", b"text/event-stream")]


def make_client(**kwargs: object) -> EventSourceClient:
    kwargs.setdefault("rng", random.Random(0))
    return EventSourceClient(**kwargs)  # type: ignore[arg-type]


def open_client(now: float = 0.0, **kwargs: object) -> EventSourceClient:
    client = make_client(**kwargs)
    assert client.receive_response(200, SSE, now) is EventSourceState.OPEN
    return client


def reconnect(client: EventSourceClient, now: float) -> None:
    """Wait out the delay and open the next connection at *now* (past the deadline)."""
    deadline = client.next_deadline()
    assert deadline is not None
    assert now >= deadline
    client.handle_timer(now)
    assert client.state is EventSourceState.CONNECTING
    assert client.receive_response(200, SSE, now) is EventSourceState.OPEN


def delay_of(decision: Reconnect | GiveUp) -> float:
    assert isinstance(decision, Reconnect), decision
    return decision.delay


def nojitter(base: float = 0.5) -> Backoff:
    return Backoff(NoJitter(base=base))


def header(client: EventSourceClient, name: bytes) -> bytes | None:
    values = [v for n, v in client.request_headers() if n == name]
    assert len(values) <= 1
    return values[0] if values else None


# -- request headers ----------------------------------------------------------------------


def test_first_request_accepts_event_stream_and_refuses_caches() -> None:
    assert make_client().request_headers() == [
        (b"accept", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
    ]


def test_last_event_id_header_is_sent_only_when_not_empty() -> None:
    assert header(make_client(), b"last-event-id") is None
    assert header(make_client(last_event_id="e.41"), b"last-event-id") == b"e.41"


def test_last_event_id_header_is_utf8() -> None:
    client = make_client(last_event_id="caf\u00e9\u2603")
    assert header(client, b"last-event-id") == "caf\u00e9\u2603".encode()


@pytest.mark.parametrize("bad", [" x", "x ", "a\nb", "a\x00b", "a\x0bb", "a\x0cb", 5])
def test_unsendable_initial_last_event_id_is_refused(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        make_client(last_event_id=bad)


# -- judging the response ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-type", b"text/event-stream")],
        [(b"Content-Type", b"text/event-stream; charset=utf-8")],
        [(b"content-type", b"TEXT/Event-Stream")],
        [(b"content-type", b" text/event-stream ;charset=UTF-8")],
        [("Content-Type", "text/event-stream")],
        [(b"cache-control", b"no-store"), (b"content-type", b'text/event-stream;x="a,b"')],
        [(b"content-type", b"text/plain"), (b"content-type", b"text/event-stream")],
        [(b"content-type", b"text/event-stream, */*")],
    ],
)
def test_200_with_event_stream_media_type_opens(
    headers: Iterable[tuple[bytes | str, bytes | str]],
) -> None:
    client = make_client()
    assert client.receive_response(200, headers, 0.0) is EventSourceState.OPEN
    assert client.close_reason is None


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain")],
        [(b"content-type", b"text/event-streams")],
        [(b"content-type", b"text/event-stream/x")],
        [(b"content-type", b"application/json")],
        [(b"content-type", b"")],
        [(b"content-type", b"text/event-stream"), (b"content-type", b"text/html")],
        [(b"x-content-type", b"text/event-stream")],
    ],
)
def test_200_with_another_media_type_fails_for_good(
    headers: Iterable[tuple[bytes | str, bytes | str]],
) -> None:
    client = make_client()
    assert client.receive_response(200, headers, 0.0) is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert "text/event-stream" in client.close_message
    assert client.next_deadline() is None


def test_204_means_the_server_says_stop() -> None:
    client = make_client()
    assert client.receive_response(204, [], 0.0) is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.SERVER_STOP
    assert client.next_deadline() is None


@pytest.mark.parametrize("status", [201, 301, 302, 304, 400, 401, 404, 410, 501, 505])
def test_a_status_that_retrying_cannot_fix_fails_for_good(status: int) -> None:
    client = make_client()
    assert client.receive_response(status, SSE, 0.0) is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert str(status) in client.close_message
    assert isinstance(client.last_decision, GiveUp)
    assert client.last_decision.status == status


@pytest.mark.parametrize("status", [600, 999])
def test_a_status_no_http_response_can_have_fails_for_good(status: int) -> None:
    # Found by fuzz/fuzz_sse_client.py: it raised LocalProtocolError from the retry table.
    client = make_client()
    assert client.receive_response(status, SSE, 0.0) is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert f"invalid HTTP status {status}" in client.close_message


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_a_busy_or_restarting_server_is_waited_for(status: int) -> None:
    client = make_client(backoff=nojitter())
    assert client.receive_response(status, [], 10.0) is EventSourceState.WAITING
    assert client.next_deadline() == 10.5
    assert isinstance(client.last_decision, Reconnect)
    assert str(status) in client.last_decision.reason
    client.handle_timer(10.5)
    assert client.state is EventSourceState.CONNECTING


def test_retry_after_goes_under_the_jitter() -> None:
    client = make_client(backoff=nojitter())
    headers = [(b"retry-after", b"1"), (b"content-type", b"text/html")]
    assert client.receive_response(503, headers, 10.0) is EventSourceState.WAITING
    assert client.next_deadline() == 11.5


def test_retry_after_as_a_date_is_read_against_the_date_header() -> None:
    client = make_client(backoff=nojitter())
    headers = [
        ("Retry-After", "Sun, 06 Nov 1994 08:49:47 GMT"),
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]
    client.receive_response(429, headers, 0.0)
    assert client.next_deadline() == 10.5


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_strict_mode_fails_on_every_status_but_200_as_browsers_do(status: int) -> None:
    client = make_client(strict=True)
    assert client.strict
    assert client.receive_response(status, [(b"retry-after", b"1")], 0.0) is (
        EventSourceState.CLOSED
    )
    assert client.close_reason is EventSourceCloseReason.FAILED


def test_max_retries_gives_up_after_that_many_failures_in_a_row() -> None:
    client = make_client(backoff=nojitter(), max_retries=2)
    assert isinstance(client.connection_failed(0.0, "refused"), Reconnect)
    client.handle_timer(10.0)
    assert client.receive_response(503, [], 10.0) is EventSourceState.WAITING
    client.handle_timer(20.0)
    decision = client.connection_failed(20.0, "refused")
    assert decision == GiveUp("gave up after 2 retries (network error: refused)")
    assert client.state is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert client.close_message == decision.reason


# -- the body ----------------------------------------------------------------------------


def test_body_bytes_become_events() -> None:
    client = open_client()
    events = client.receive_data(b"event: greet\ndata: hello\nid: e.1\n\ndata: x")
    assert events == [MessageEvent(type="greet", data="hello", last_event_id="e.1")]
    assert client.last_event_id == "e.1"
    assert client.receive_data(b"yz\n\n") == [
        MessageEvent(type="message", data="xyz", last_event_id="e.1")
    ]


def test_parser_starts_from_the_persisted_last_event_id() -> None:
    client = open_client(last_event_id="e.7")
    assert client.receive_data(b"data: a\n\n") == [
        MessageEvent(type="message", data="a", last_event_id="e.7")
    ]


def test_id_only_block_updates_the_last_event_id() -> None:
    client = open_client()
    assert client.receive_data(b"id: e.9\n\n") == []
    assert client.last_event_id == "e.9"


# -- persistence across connections ---------------------------------------------------------


def test_last_event_id_persists_across_connections() -> None:
    client = open_client()
    client.receive_data(b"id: e.1\ndata: a\n\n")
    client.receive_eof(1.0)
    reconnect(client, 100.0)
    client.receive_data(b"data: b\n\n")
    assert client.last_event_id == "e.1"
    client.connection_failed(101.0)
    client.handle_timer(1000.0)
    assert header(client, b"last-event-id") == b"e.1"


def test_id_inside_an_incomplete_event_at_eof_is_not_persisted() -> None:
    client = open_client()
    client.receive_data(b"id: e.1\ndata: a\n\n")
    assert client.receive_data(b"data: b\nid: e.2\n") == []
    client.receive_eof(1.0)
    assert client.last_event_id == "e.1"
    client.handle_timer(1000.0)
    assert header(client, b"last-event-id") == b"e.1"
    # Nor is the incomplete event's data carried into the next connection.
    client.receive_response(200, SSE, 1000.0)
    assert client.receive_data(b"data: c\n\n") == [
        MessageEvent(type="message", data="c", last_event_id="e.1")
    ]


def test_id_inside_an_incomplete_event_at_a_network_error_is_not_persisted() -> None:
    client = open_client(last_event_id="e.1")
    client.receive_data(b"id: e.2\ndata: b\n")
    client.connection_failed(1.0)
    assert client.last_event_id == "e.1"


def test_server_retry_persists_across_connections() -> None:
    client = open_client(backoff=nojitter())
    client.receive_data(b"retry: 4000\n\n")
    assert client.reconnection_time == 4.0
    assert delay_of(client.receive_eof(1.0)) == 4.5
    reconnect(client, 5.5)
    client.receive_data(b"data: no retry here\n\n")
    assert delay_of(client.receive_eof(6.0)) >= 4.0
    assert client.reconnection_time == 4.0


def test_retry_inside_an_incomplete_event_still_counts() -> None:
    # The spec sets the reconnection time when the field is read, not at dispatch.
    client = open_client()
    client.receive_data(b"data: x\nretry: 7000\n")
    client.receive_eof(1.0)
    assert client.reconnection_time == 7.0


def test_invalid_retry_is_ignored() -> None:
    client = open_client(reconnection_time=2.0)
    client.receive_data(b"retry: 12s\n\nretry: -5\n\n")
    assert client.reconnection_time == 2.0


def test_huge_retry_is_clamped_to_the_maximum_reconnection_time() -> None:
    client = open_client(max_reconnection_time=600.0, backoff=nojitter())
    client.receive_data(b"retry: 99999999999999\n\n")
    assert client.reconnection_time == 600.0
    assert delay_of(client.receive_eof(1.0)) == 600.5


# -- reconnect delays ---------------------------------------------------------------------


def test_server_retry_is_a_floor_under_the_jitter() -> None:
    delays = set()
    for seed in range(200):
        client = open_client(rng=random.Random(seed))
        client.receive_data(b"retry: 3000\n\n")
        delay = delay_of(client.receive_eof(1.0))
        assert 3.0 <= delay <= 4.0  # the reconnection time, then U(0, 1) above it
        delays.add(delay)
    assert len(delays) == 200


def test_without_retry_the_delay_is_the_backoff_alone() -> None:
    client = open_client(backoff=nojitter(0.25))
    assert delay_of(client.receive_eof(1.0)) == 0.25


def test_default_reconnection_time_is_configurable() -> None:
    client = open_client(reconnection_time=2.0, backoff=nojitter())
    assert client.reconnection_time == 2.0
    assert delay_of(client.receive_eof(1.0)) == 2.5


def test_network_error_while_connecting_waits_and_counts_an_attempt() -> None:
    client = make_client(backoff=nojitter())
    assert client.connection_failed(10.0, "refused") == Reconnect(0.5, "network error: refused")
    assert client.state is EventSourceState.WAITING
    assert client.next_deadline() == 10.5
    client.handle_timer(10.5)
    assert delay_of(client.connection_failed(10.5)) == 1.0
    assert client.backoff.attempt == 2


def test_accept_then_close_keeps_backing_off() -> None:
    client = open_client(backoff=nojitter())
    now = 0.0
    delays = []
    for _ in range(7):
        now += 0.01
        delays.append(delay_of(client.receive_eof(now)))
        now += delays[-1]
        reconnect(client, now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_a_server_that_repeats_its_backlog_makes_no_progress() -> None:
    """A foreign server without ids sends the same events on every connection."""
    client = open_client(backoff=nojitter())
    now = 0.0
    delays = []
    for _ in range(5):
        assert len(client.receive_data(b"data: same old\n\ndata: news\n\n")) == 2
        now += 0.01
        delays.append(delay_of(client.receive_eof(now)))
        now += delays[-1]
        reconnect(client, now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_productive_connection_resumes_soon_without_the_reconnection_time() -> None:
    client = open_client(backoff=nojitter(), last_event_id="e.1")
    client.receive_data(b"retry: 3000\n\n")
    now = 0.0
    for n in range(2, 8):  # a link that cuts every connection after one event
        assert client.receive_data(f"id: e.{n}\ndata: x\n\n".encode())
        now += 0.2
        decision = client.receive_eof(now)
        assert decision == Reconnect(0.5, "stream ended by the server")
        now += 0.5
        reconnect(client, now)
    assert client.backoff.attempt == 1


def test_progress_is_judged_when_the_connection_ends() -> None:
    client = make_client(backoff=nojitter())
    for t in range(3):
        client.connection_failed(float(t))
        client.handle_timer(1e3)
    assert client.backoff.attempt == 3
    client.receive_response(200, SSE, 1e3)
    client.receive_data(b"id: e.1\ndata: x\n\n")
    assert client.backoff.attempt == 3
    assert delay_of(client.connection_failed(1e3 + 0.5)) == 0.5
    assert client.backoff.attempt == 1


def test_a_server_that_replays_the_same_ids_ignoring_last_event_id_makes_no_progress() -> None:
    client = open_client(backoff=nojitter())
    backlog = b"id: e.1\ndata: a\n\nid: e.2\ndata: b\n\nid: e.3\ndata: c\n\n"
    assert len(client.receive_data(backlog)) == 3  # the first time, it is news
    now = 0.1
    assert delay_of(client.receive_eof(now)) == 0.5
    delays = []
    for _ in range(4):
        now += 0.5
        reconnect(client, now)
        for chunk in (backlog[:20], backlog[20:]):  # the same events again, from e.1
            client.receive_data(chunk)
        now += 0.1
        delays.append(delay_of(client.receive_eof(now)))
        now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_a_reset_alone_is_not_progress() -> None:
    client = open_client(backoff=nojitter(), last_event_id="e.1")
    client.receive_data(b"retry: 3000\n\n")
    client.receive_data(b'id: f.1\nevent: tidings.reset\ndata: {"cursor": "f.1"}\n\n')
    assert delay_of(client.receive_eof(0.5)) == 3.5


def test_strict_mode_waits_the_reconnection_time_even_after_progress() -> None:
    client = open_client(backoff=nojitter(), strict=True)
    client.receive_data(b"retry: 3000\nid: e.2\ndata: x\n\n")
    assert delay_of(client.receive_eof(0.5)) == 3.5


def test_connection_open_for_the_stable_period_resets_the_backoff() -> None:
    client = open_client(backoff=nojitter())
    now = 0.0
    for _ in range(4):
        now += delay_of(client.receive_eof(now))
        reconnect(client, now)
    assert client.backoff.attempt == 4
    assert delay_of(client.receive_eof(now + 5.0)) == 0.5
    assert client.backoff.attempt == 1


def test_stable_period_counts_from_the_good_response_not_the_request() -> None:
    client = make_client(backoff=nojitter())
    client.connection_failed(0.0)
    client.handle_timer(100.0)
    client.receive_response(200, SSE, 104.0)
    assert delay_of(client.receive_eof(106.0)) == 1.0


def test_timer_before_the_deadline_does_nothing() -> None:
    client = open_client(backoff=nojitter())
    client.receive_eof(10.0)
    assert client.next_deadline() == 10.5
    client.handle_timer(10.4)
    assert client.next_deadline() == 10.5
    client.handle_timer(10.5)
    assert client.state is not EventSourceState.WAITING
    client.request_headers()  # CONNECTING
    assert client.next_deadline() is None


@pytest.mark.parametrize("state", ["connecting", "open", "closed"])
def test_timer_outside_waiting_does_nothing(state: str) -> None:
    client = make_client()
    if state == "open":
        client.receive_response(200, SSE, 0.0)
    elif state == "closed":
        client.close()
    client.handle_timer(1e9)
    assert client.state.value == state


# -- peer misbehaviour ------------------------------------------------------------------


def test_parser_limit_fails_the_stream_and_rolls_back_the_id() -> None:
    client = open_client(max_line_length=64)
    client.receive_data(b"id: e.1\ndata: a\n\n")
    with pytest.raises(RemoteProtocolError):
        client.receive_data(b"id: e.2\ndata: b\n\ndata: " + b"x" * 200 + b"\n\n")
    assert client.state is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert client.last_event_id == "e.1"
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"data: c\n\n")


@pytest.mark.parametrize("line", [b"id:  e.2", b"id: e.2 ", b"id: e\x0b2", b"id: e\x0c2"])
def test_id_that_cannot_be_sent_back_fails_the_stream(line: bytes) -> None:
    client = open_client()
    client.receive_data(b"id: e.1\ndata: a\n\n")
    with pytest.raises(RemoteProtocolError):
        client.receive_data(line + b"\ndata: b\n\nid: e.3\n\n")
    assert client.state is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.FAILED
    assert client.last_event_id == "e.1"


def test_empty_id_resets_the_last_event_id() -> None:
    client = open_client(last_event_id="e.1")
    client.receive_data(b"id\ndata: a\n\n")
    assert client.last_event_id == ""
    client.receive_eof(0.0)
    client.handle_timer(1e6)
    assert header(client, b"last-event-id") is None


# -- close and misuse ---------------------------------------------------------------------


@pytest.mark.parametrize("state", ["connecting", "open", "waiting"])
def test_close_stops_for_good_from_any_state(state: str) -> None:
    client = make_client()
    if state in ("open", "waiting"):
        client.receive_response(200, SSE, 0.0)
    if state == "waiting":
        client.receive_eof(0.0)
    client.close()
    client.close()
    assert client.state is EventSourceState.CLOSED
    assert client.close_reason is EventSourceCloseReason.USER
    assert client.next_deadline() is None


def test_close_after_a_server_stop_keeps_the_servers_reason() -> None:
    client = make_client()
    client.receive_response(204, [], 0.0)
    client.close()
    assert client.close_reason is EventSourceCloseReason.SERVER_STOP


def test_methods_that_need_an_open_stream_refuse_while_connecting() -> None:
    client = make_client()
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"data: x\n\n")
    with pytest.raises(LocalProtocolError):
        client.receive_eof(0.0)


def test_methods_that_need_connecting_refuse_while_open() -> None:
    client = open_client()
    with pytest.raises(LocalProtocolError):
        client.request_headers()
    with pytest.raises(LocalProtocolError):
        client.receive_response(200, SSE, 0.0)


def test_nothing_but_the_timer_and_close_is_accepted_while_waiting() -> None:
    client = open_client()
    client.receive_eof(0.0)
    for call in (
        client.request_headers,
        lambda: client.receive_response(200, SSE, 0.0),
        lambda: client.receive_data(b""),
        lambda: client.receive_eof(0.0),
        lambda: client.connection_failed(0.0),
    ):
        with pytest.raises(LocalProtocolError):
            call()


def test_a_closed_client_accepts_nothing_more() -> None:
    client = open_client()
    client.close()
    for call in (
        client.request_headers,
        lambda: client.receive_response(200, SSE, 0.0),
        lambda: client.receive_data(b"data: x\n\n"),
        lambda: client.receive_eof(0.0),
        lambda: client.connection_failed(0.0),
    ):
        with pytest.raises(LocalProtocolError):
            call()


@pytest.mark.parametrize("now", [float("nan"), float("inf")])
def test_non_finite_time_is_refused(now: float) -> None:
    with pytest.raises(LocalProtocolError):
        make_client().receive_response(200, SSE, now)


@pytest.mark.parametrize(
    "kwargs",
    [{"reconnection_time": -1.0}, {"max_reconnection_time": float("nan")}, {"max_retries": -1}],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        make_client(**kwargs)


# -- properties ---------------------------------------------------------------------------

ids = st.text(alphabet="abc.0123456789", min_size=1, max_size=8)


@settings(max_examples=200)
@given(
    blocks=st.lists(st.tuples(ids, st.text(alphabet="xyz", max_size=5)), min_size=1, max_size=8),
    cut=st.integers(min_value=0),
    chunk=st.integers(min_value=1, max_value=16),
)
def test_last_event_id_after_a_cut_is_the_id_of_the_last_complete_block(
    blocks: list[tuple[str, str]], cut: int, chunk: int
) -> None:
    stream = b"".join(f"id: {i}\ndata: {d}\n\n".encode() for i, d in blocks)
    cut %= len(stream) + 1
    received = stream[:cut]
    client = open_client(last_event_id="start")
    delivered: list[MessageEvent] = []
    for start in range(0, len(received), chunk):
        delivered += client.receive_data(received[start : start + chunk])
    client.receive_eof(1.0)
    complete = received.count(b"\n\n")
    expected = blocks[complete - 1][0] if complete else "start"
    assert client.last_event_id == expected
    assert [e.last_event_id for e in delivered] == [i for i, _ in blocks[:complete]]


def test_a_retry_of_hundreds_of_digits_is_clamped_not_an_overflow() -> None:
    client = EventSourceClient(rng=random.Random(0))
    client.receive_response(200, [(b"content-type", b"text/event-stream")], 0.0)
    events = client.receive_data(b"id: 2\ndata: kept\n\nretry: 1" + b"0" * 400 + b"\n")
    assert [e.data for e in events] == ["kept"]
    assert client.last_event_id == "2"
    assert client.state is EventSourceState.OPEN
    assert client.reconnection_time == DEFAULT_MAX_RECONNECTION_TIME
    client.receive_eof(1.0)  # "2" was new: resumed soon (the retry is no floor after progress)
    reconnect(client, 3.0)
    assert delay_of(client.receive_eof(4.0)) >= DEFAULT_MAX_RECONNECTION_TIME
