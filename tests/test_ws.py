import contextlib
import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.cursor import Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.history import MemoryHistory, StoredEvent
from tidings.session import Connect, ReconnectingSession, Wait
from tidings.ws import (
    SUBPROTOCOL,
    Appended,
    CloseConnection,
    ErrorCode,
    ErrorMessage,
    EventMessage,
    MessageTooBig,
    PublishAcknowledged,
    PublishDeduplicator,
    PublishedMessage,
    PublishFailed,
    PublishMessage,
    ResetMessage,
    ServerOutput,
    SessionClient,
    SessionServer,
    StartLive,
    StopLive,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    parse_client_message,
    parse_server_message,
)

# ------------------------------------------------------------------------ messages

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=50)
names = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)
msg_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
cursors = st.builds(
    lambda e, o: f"{e}.{o}", st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), st.integers(0, 10**6)
)

client_messages = st.one_of(
    st.builds(SubscribeMessage, names, st.one_of(st.none(), cursors, st.just("earliest"))),
    st.builds(UnsubscribeMessage, names),
    st.builds(PublishMessage, names, msg_ids, texts, st.one_of(st.none(), names)),
)
server_messages = st.one_of(
    st.builds(EventMessage, names, cursors, texts, st.one_of(st.none(), names)),
    st.builds(ResetMessage, names, cursors),
    st.builds(SubscribedMessage, names, cursors),
    st.builds(PublishedMessage, msg_ids, cursors),
    st.builds(
        ErrorMessage,
        st.sampled_from(list(ErrorCode)).map(str),
        texts,
        st.one_of(st.none(), names),
        st.one_of(st.none(), msg_ids),
    ),
)


def test_subprotocol_name() -> None:
    assert SUBPROTOCOL == "tidings.v1"


@given(client_messages)
def test_client_messages_round_trip(message: SubscribeMessage) -> None:
    text = message.encode()
    assert parse_client_message(text) == message
    assert parse_client_message(text.encode("utf-8")) == message
    assert json.loads(text)["type"] == message.type


@given(server_messages)
def test_server_messages_round_trip(message: EventMessage) -> None:
    text = message.encode()
    assert parse_server_message(text) == message
    assert json.loads(text)["type"] == message.type


def test_wire_forms_match_the_design() -> None:
    assert json.loads(SubscribeMessage("t").encode()) == {"type": "subscribe", "topic": "t"}
    assert json.loads(PublishMessage("t", "m1", "d").encode()) == {
        "type": "publish",
        "topic": "t",
        "msg_id": "m1",
        "data": "d",
    }
    assert json.loads(EventMessage("t", "e.1", "d").encode()) == {
        "type": "event",
        "topic": "t",
        "id": "e.1",
        "event": None,
        "data": "d",
    }
    assert json.loads(ErrorMessage("malformed", "bad").encode()) == {
        "type": "error",
        "code": "malformed",
        "message": "bad",
    }


def test_event_message_encoding_is_computed_once_and_shared() -> None:
    stored = StoredEvent(Position("e", 3), "hello", "greeting")
    message = EventMessage.from_stored("t", stored)
    assert message.position == Position("e", 3)
    assert message.encode() is message.encode()
    assert message == EventMessage("t", "e.3", "hello", "greeting")


def test_event_message_with_foreign_id_has_no_position() -> None:
    assert EventMessage("t", "not-a-cursor", "d").position is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '"subscribe"',
        "{}",
        '{"type": 1, "topic": "t"}',
        '{"type": "nope", "topic": "t"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "topic": ""}',
        '{"type": "subscribe", "topic": 7}',
        '{"type": "subscribe", "topic": null}',
        '{"type": "subscribe", "topic": "a\\nb"}',
        '{"type": "subscribe", "topic": "a\\u0000b"}',
        '{"type": "subscribe", "topic": "t", "cursor": 5}',
        '{"type": "subscribe", "topic": "t", "cursor": "' + "x" * 129 + '"}',
        '{"type": "subscribe", "topic": "t", "extra": 1}',
        '{"type": "subscribe", "topic": "t", "topic": "u"}',
        '{"type": "unsubscribe", "topic": "t", "cursor": "e.1"}',
        '{"type": "publish", "topic": "t", "msg_id": "m"}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": 1}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": true}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": {"a": 1}}',
        '{"type": "publish", "topic": "t", "msg_id": "m x", "data": "d"}',
        '{"type": "publish", "topic": "t", "msg_id": "", "data": "d"}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": "d", "event": ""}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": "d", "event": "a\\rb"}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": "\\ud800"}',
        '{"type": "publish", "topic": "t", "msg_id": "m", "data": NaN}',
        '{"type": "event", "topic": "t", "id": "e.1", "data": "d"}',  # server message
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_malformed_client_messages_raise_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_client_message(text, max_size=10**6)
    assert not isinstance(info.value, MessageTooBig)


def test_topic_length_limit_is_configurable() -> None:
    text = SubscribeMessage("x" * 300).encode()
    with pytest.raises(RemoteProtocolError):
        parse_client_message(text)
    assert parse_client_message(text, max_topic_length=300) == SubscribeMessage("x" * 300)


def test_invalid_utf8_bytes_raise_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_client_message(b'{"type": "subscribe", "topic": "\xff"}')


@pytest.mark.parametrize(
    "text",
    [
        "x" * 101,
        b"x" * 101,
        '"' + "\u00e9" * 60 + '"',  # 62 characters but 122 bytes
    ],
)
def test_oversized_message_raises_message_too_big(text: str | bytes) -> None:
    with pytest.raises(MessageTooBig) as info:
        parse_client_message(text, max_size=100)
    assert info.value.close_code == 1009
    assert isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "event", "topic": "t", "id": "e.1"}',
        '{"type": "event", "topic": "t", "id": 1, "data": "d"}',
        '{"type": "reset", "topic": "t"}',
        '{"type": "published", "msg_id": "m"}',
        '{"type": "error", "code": "x"}',
        '{"type": "subscribe", "topic": "t"}',  # client message
    ],
)
def test_malformed_server_messages_raise_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_server_message(text)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parsers_raise_only_remote_protocol_error_on_garbage(text: str | bytes) -> None:
    for parse in (parse_client_message, parse_server_message):
        with contextlib.suppress(RemoteProtocolError):
            parse(text, max_size=150)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["type", "topic", "cursor", "msg_id", "data", "event", "id", "code"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            texts,
            st.sampled_from(["subscribe", "publish"]),
        ),
    )
)
def test_parsers_reject_or_accept_json_objects_cleanly(obj: dict[str, object]) -> None:
    text = json.dumps(obj)
    for parse in (parse_client_message, parse_server_message):
        try:
            message = parse(text)
        except RemoteProtocolError:
            continue
        assert parse(message.encode()) == message


# -------------------------------------------------------------------------- server


def make_server(
    history: MemoryHistory | None = None, dedup: PublishDeduplicator | None = None, **kw: int
) -> SessionServer:
    return SessionServer(
        # (not ``history or ...``: an empty history or deduplicator is falsy)
        MemoryHistory("ep") if history is None else history,
        PublishDeduplicator() if dedup is None else dedup,
        **kw,  # type: ignore[arg-type]
    )


def sent(outputs: list[ServerOutput]) -> list[dict[str, object]]:
    """The JSON objects the adapter would send."""
    return [
        json.loads(o.encode())
        for o in outputs
        if not isinstance(o, StartLive | StopLive | Appended | CloseConnection)
    ]


def test_subscribe_without_cursor_is_live_from_the_head() -> None:
    history = MemoryHistory("ep")
    history.append("t", "old")
    server = make_server(history)
    outputs = server.receive_text(SubscribeMessage("t").encode(), 0.0)
    head = history.head("t").format()
    assert outputs == [StartLive("t"), SubscribedMessage("t", head)]
    new = EventMessage.from_stored("t", history.append("t", "new"))
    assert server.live(new) == [new]


def test_subscribe_with_cursor_replays_then_confirms() -> None:
    history = MemoryHistory("ep")
    events = [history.append("t", f"e{i}") for i in range(5)]
    server = make_server(history, replay_chunk=2)
    outputs = server.receive_text(SubscribeMessage("t", events[1].position.format()).encode(), 0.0)
    assert outputs[0] == StartLive("t")
    assert [m["data"] for m in sent(outputs) if m["type"] == "event"] == ["e2", "e3", "e4"]
    assert outputs[-1] == SubscribedMessage("t", events[-1].position.format())


def test_subscribe_earliest_replays_everything_retained() -> None:
    history = MemoryHistory("ep", max_events=3)
    for i in range(5):
        history.append("t", f"e{i}")
    server = make_server(history)
    outputs = server.receive_text(SubscribeMessage("t", "earliest").encode(), 0.0)
    assert [m["data"] for m in sent(outputs) if m["type"] == "event"] == ["e2", "e3", "e4"]


@pytest.mark.parametrize("cursor", ["other.3", "garbage", "ep-1.99"])
def test_subscribe_with_unusable_cursor_gets_reset_to_head(cursor: str) -> None:
    history = MemoryHistory("ep")
    history.append("t", "x")
    head = history.head("t").format()
    server = make_server(history)
    outputs = server.receive_text(SubscribeMessage("t", cursor).encode(), 0.0)
    assert outputs == [StartLive("t"), ResetMessage("t", head), SubscribedMessage("t", head)]


def test_live_drops_events_already_replayed() -> None:
    history = MemoryHistory("ep")
    first = history.append("t", "a")
    second = history.append("t", "b")  # appended "while" the subscription was set up
    server = make_server(history)
    server.receive_text(SubscribeMessage("t", first.position.format()).encode(), 0.0)
    assert server.live(EventMessage.from_stored("t", second)) == []
    third = EventMessage.from_stored("t", history.append("t", "c"))
    assert server.live(third) == [third]


def test_live_fills_a_gap_from_the_history() -> None:
    history = MemoryHistory("ep")
    server = make_server(history)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    lost = history.append("t", "lost on the way")
    latest = EventMessage.from_stored("t", history.append("t", "latest"))
    out = server.live(latest)
    assert out == [EventMessage.from_stored("t", lost), latest]
    assert out[1] is latest  # the shared, pre-encoded message is reused


def test_live_event_of_a_new_epoch_gives_a_reset() -> None:
    history = MemoryHistory("ep", max_topics=1)
    server = make_server(history)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    history.append("u", "evicts t")  # t will come back as a new generation
    reborn = EventMessage.from_stored("t", history.append("t", "x"))
    out = server.live(reborn)
    assert [type(m) for m in out] == [ResetMessage]


def test_live_without_gap_filling_delivers_later_positions() -> None:
    history = MemoryHistory("ep")
    history.append("t", "before")  # the topic is held: its own epoch from the start
    server = make_server(history, fill_gaps=False)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    history.append("t", "skipped by a non-contiguous history")
    latest = EventMessage.from_stored("t", history.append("t", "b"))
    assert server.live(latest) == [latest]


def test_live_for_unsubscribed_topic_is_dropped() -> None:
    history = MemoryHistory("ep")
    server = make_server(history)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    assert server.receive_text(UnsubscribeMessage("t").encode(), 0.0) == [StopLive("t")]
    assert server.receive_text(UnsubscribeMessage("t").encode(), 0.0) == []
    assert server.live(EventMessage.from_stored("t", history.append("t", "x"))) == []
    assert server.live(EventMessage.from_stored("u", history.append("u", "x"))) == []


def test_resubscribe_restarts_from_the_new_cursor_without_second_start_live() -> None:
    history = MemoryHistory("ep")
    first = history.append("t", "a")
    history.append("t", "b")
    server = make_server(history)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    outputs = server.receive_text(SubscribeMessage("t", first.position.format()).encode(), 0.0)
    assert not any(isinstance(o, StartLive) for o in outputs)
    assert [m["data"] for m in sent(outputs) if m["type"] == "event"] == ["b"]


def test_max_topics_per_connection_answers_an_error() -> None:
    server = make_server(max_topics=2)
    server.receive_text(SubscribeMessage("a").encode(), 0.0)
    server.receive_text(SubscribeMessage("b").encode(), 0.0)
    (error,) = server.receive_text(SubscribeMessage("c").encode(), 0.0)
    assert isinstance(error, ErrorMessage)
    assert (error.code, error.topic) == (ErrorCode.TOO_MANY_TOPICS, "c")
    assert server.topics == {"a", "b"}


def test_malformed_message_gets_an_error_message() -> None:
    server = make_server()
    (error,) = server.receive_text("{", 0.0)
    assert isinstance(error, ErrorMessage)
    assert error.code == ErrorCode.MALFORMED
    assert not server.closed


def test_too_many_errors_close_with_policy_violation() -> None:
    server = make_server(max_errors=3)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    assert server.receive_text("x", 0.0)[-1] != CloseConnection(1008, "too many errors")
    server.receive_text("x", 0.0)
    outputs = server.receive_text("x", 0.0)
    assert outputs[-2:] == [StopLive("t"), CloseConnection(1008, "too many errors")]
    assert server.closed
    with pytest.raises(LocalProtocolError):
        server.receive_text(SubscribeMessage("t").encode(), 0.0)


def test_oversized_message_closes_with_1009() -> None:
    server = make_server(max_message_size=64)
    server.receive_text(SubscribeMessage("t").encode(), 0.0)
    outputs = server.receive_text(PublishMessage("t", "m", "x" * 100).encode(), 0.0)
    assert outputs == [StopLive("t"), CloseConnection(1009, "message too big")]


def test_binary_message_closes_with_1003() -> None:
    assert make_server().receive_binary() == [CloseConnection(1003, "tidings.v1 messages are text")]


def test_adapter_detected_oversize_closes_with_1009() -> None:
    assert make_server().message_too_big() == [CloseConnection(1009, "message too big")]


def test_connection_closed_unregisters_every_topic() -> None:
    server = make_server()
    server.receive_text(SubscribeMessage("a").encode(), 0.0)
    server.receive_text(SubscribeMessage("b").encode(), 0.0)
    assert set(server.connection_closed()) == {StopLive("a"), StopLive("b")}
    assert server.live(EventMessage("a", "ep-1.1", "x")) == []


def test_publish_appends_then_acknowledges() -> None:
    history = MemoryHistory("ep")
    server = make_server(history)
    outputs = server.receive_text(PublishMessage("t", "m1", "hi", "greet").encode(), 0.0)
    appended, ack = outputs
    assert isinstance(appended, Appended)
    assert appended.event.data == "hi"
    assert appended.event.event == "greet"
    assert appended.message == EventMessage.from_stored("t", appended.event)
    assert ack == PublishedMessage("m1", appended.event.position.format())
    assert history.head("t") == appended.event.position


def test_server_dedup_answers_a_repeat_with_the_original_id() -> None:
    history = MemoryHistory("ep")
    dedup = PublishDeduplicator()
    publish = PublishMessage("t", "m1", "once").encode()
    first = make_server(history, dedup).receive_text(publish, 0.0)
    # the client reconnects on a new connection and resends
    second = make_server(history, dedup).receive_text(publish, 5.0)
    assert second == [first[-1]]
    assert history.stats("t")[0] == 1
    # the same msg_id on another topic is another publish
    other = make_server(history, dedup).receive_text(PublishMessage("u", "m1", "x").encode(), 6.0)
    assert isinstance(other[0], Appended)


def test_dedup_window_is_bounded_by_count() -> None:
    dedup = PublishDeduplicator(max_entries=2)
    for i in range(3):
        dedup.remember("t", f"m{i}", Position("e", i + 1), 0.0)
    assert len(dedup) == 2
    assert dedup.lookup("t", "m0", 0.0) is None
    assert dedup.lookup("t", "m2", 0.0) == Position("e", 3)


def test_dedup_window_is_bounded_by_age() -> None:
    dedup = PublishDeduplicator(max_age=10.0)
    dedup.remember("t", "old", Position("e", 1), 0.0)
    dedup.remember("t", "new", Position("e", 2), 5.0)
    assert dedup.lookup("t", "old", 9.9) == Position("e", 1)
    assert dedup.lookup("t", "old", 10.0) is None
    assert dedup.lookup("t", "new", 10.0) == Position("e", 2)
    assert len(dedup) == 1


def test_dedup_rejects_bad_limits() -> None:
    with pytest.raises(LocalProtocolError):
        PublishDeduplicator(max_entries=0)
    with pytest.raises(LocalProtocolError):
        PublishDeduplicator(max_age=float("inf"))


def test_rejected_publish_answers_an_error_with_msg_id() -> None:
    history = MemoryHistory("ep", max_event_size=10, max_bytes=1000)
    server = make_server(history)
    (error,) = server.receive_text(PublishMessage("t", "m1", "x" * 11).encode(), 0.0)
    assert isinstance(error, ErrorMessage)
    assert (error.code, error.topic, error.msg_id) == (ErrorCode.PUBLISH_REJECTED, "t", "m1")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 6),
    st.integers(0, 6),
    st.lists(st.sampled_from(["append", "deliver"]), max_size=40),
)
def test_subscribe_then_replay_has_no_gap_and_no_duplicate(
    before: int, cursor_at: int, steps: list[str]
) -> None:
    history = MemoryHistory("ep")
    stored = [history.append("t", f"e{i}") for i in range(before)]
    cursor = stored[min(cursor_at, before) - 1].position.format() if cursor_at and before else None
    expected_start = min(cursor_at, before) if cursor is not None else before
    server = make_server(history, replay_chunk=2)
    queue: list[EventMessage] = []  # hub -> connection buffer, delivered with a lag
    received: list[str] = []

    def take(outputs: Sequence[ServerOutput]) -> None:
        received.extend(o.data for o in outputs if isinstance(o, EventMessage))

    # Events appended "just before" the subscription are already queued by the hub
    # (the hub registered the connection first): they must be dropped as duplicates.
    take(server.receive_text(SubscribeMessage("t", cursor).encode(), 0.0))
    queue.extend(EventMessage.from_stored("t", event) for event in stored[expected_start:])
    total = before
    for step in steps:
        if step == "append":
            queue.append(EventMessage.from_stored("t", history.append("t", f"e{total}")))
            total += 1
        elif queue:
            take(server.live(queue.pop(0)))
    while queue:
        take(server.live(queue.pop(0)))
    assert received == [f"e{i}" for i in range(expected_start, total)]


# -------------------------------------------------------------------------- client


def open_client(client: SessionClient, now: float = 0.0) -> list[object]:
    """Drive the client's session to open; returns what to send."""
    session = client.session
    action = session.start(now) if session.state.value == "idle" else session.timer(now)
    assert isinstance(action, Connect)
    session.connected(now)
    return list(client.connection_made())


def drop(client: SessionClient, now: float) -> float:
    client.connection_lost()
    wait = client.session.closed(1006, by_peer=True, now=now)
    assert isinstance(wait, Wait)
    return wait.until


def test_client_new_events_and_acknowledgements_are_progress_subscribed_is_not() -> None:
    client = SessionClient(random.Random(1))
    client.subscribe("t", "ep.1")
    session = client.session
    now = 0.0
    for _ in range(3):
        open_client(client, now)
        client.receive_text(SubscribedMessage("t", "ep.1").encode())
        now = drop(client, now + 0.1)
    assert session.attempt == 3  # "subscribed" on every connection is no progress
    open_client(client, now)
    client.receive_text(EventMessage("t", "ep.1", "old").encode())  # a duplicate: dropped
    assert session.attempt == 3
    client.receive_text(EventMessage("t", "ep.2", "new").encode())
    assert session.attempt == 0
    now = drop(client, now + 0.1)
    open_client(client, now)
    msg_id, _ = client.publish("t", "x")
    now = drop(client, now + 0.1)
    assert session.attempt == 2  # one after the productive connection, one for this
    open_client(client, now)
    client.receive_text(PublishedMessage(msg_id, "ep.3").encode())
    assert session.attempt == 0


def test_client_msg_ids_are_deterministic_from_the_seeded_rng() -> None:
    a = SessionClient(random.Random(7))
    b = SessionClient(random.Random(7))
    ids_a = [a.publish("t", "x")[0] for _ in range(3)]
    ids_b = [b.publish("t", "x")[0] for _ in range(3)]
    assert ids_a == ids_b
    assert len(set(ids_a)) == 3
    assert all(len(i) == 22 and i.isalnum() and i.isascii() for i in ids_a)


def test_client_subscribes_every_topic_from_its_cursor_on_connect() -> None:
    client = SessionClient(random.Random(1))
    assert client.subscribe("a") == []
    assert client.subscribe("b", "ep.3") == []
    assert open_client(client) == [SubscribeMessage("a"), SubscribeMessage("b", "ep.3")]
    assert client.subscribe("c", "earliest") == [SubscribeMessage("c", "earliest")]
    assert client.unsubscribe("c") == [UnsubscribeMessage("c")]
    assert client.unsubscribe("c") == []


def test_client_outbox_is_resent_in_order_after_reconnect() -> None:
    client = SessionClient(random.Random(1))
    client.subscribe("t")
    open_client(client)
    m1, out1 = client.publish("t", "one")
    m2, out2 = client.publish("t", "two", event="kind")
    assert [m.msg_id for m in out1 + out2] == [m1, m2]  # type: ignore[union-attr]
    until = drop(client, 1.0)
    m3, out3 = client.publish("t", "three")
    assert out3 == []  # queued while disconnected
    resent = open_client(client, until)
    assert resent[0] == SubscribeMessage("t")
    assert [(m.msg_id, m.data) for m in resent[1:]] == [  # type: ignore[attr-defined]
        (m1, "one"),
        (m2, "two"),
        (m3, "three"),
    ]
    ack = client.receive_text(PublishedMessage(m2, "ep.9").encode())
    assert ack == [PublishAcknowledged(m2, "t", "ep.9")]
    assert [m.msg_id for m in client.outbox] == [m1, m3]
    assert client.receive_text(PublishedMessage(m2, "ep.9").encode()) == []  # repeat ack


def test_client_outbox_is_bounded() -> None:
    client = SessionClient(random.Random(1), max_outbox=2)
    client.publish("t", "a")
    client.publish("t", "b")
    assert client.outbox_full
    with pytest.raises(LocalProtocolError):
        client.publish("t", "c")


def test_client_refused_publish_leaves_the_outbox() -> None:
    client = SessionClient(random.Random(1))
    open_client(client)
    msg_id, _ = client.publish("t", "x" * 10)
    error = ErrorMessage(ErrorCode.PUBLISH_REJECTED, "too large", "t", msg_id)
    assert client.receive_text(error.encode()) == [
        PublishFailed(msg_id, "t", ErrorCode.PUBLISH_REJECTED, "too large")
    ]
    assert client.outbox == ()
    other = ErrorMessage(ErrorCode.MALFORMED, "what")
    assert client.receive_text(other.encode()) == [other]


def test_client_drops_duplicate_and_older_events_in_the_same_epoch() -> None:
    client = SessionClient(random.Random(1))
    client.subscribe("t", "ep.2")
    open_client(client)
    got = client.receive_many(
        EventMessage("t", ident, "d").encode()
        for ident in ["ep.1", "ep.2", "ep.3", "ep.3", "ep.2", "ep.4", "new.1", "new.2"]
    )
    assert [m.id for m in got if isinstance(m, EventMessage)] == ["ep.3", "ep.4", "new.1", "new.2"]
    assert client.session.positions["t"] == "new.2"


def test_client_ignores_events_of_topics_it_does_not_follow() -> None:
    client = SessionClient(random.Random(1))
    open_client(client)
    assert client.receive_text(EventMessage("t", "ep.1", "d").encode()) == []


def test_client_resumes_live_from_now_topic_from_the_subscribed_cursor() -> None:
    client = SessionClient(random.Random(1))
    client.subscribe("t")
    open_client(client)
    client.receive_text(SubscribedMessage("t", "ep.5").encode())
    until = drop(client, 1.0)
    assert open_client(client, until) == [SubscribeMessage("t", "ep.5")]


def test_client_reset_moves_the_cursor_and_is_surfaced() -> None:
    client = SessionClient(random.Random(1))
    client.subscribe("t", "old.9")
    open_client(client)
    reset = ResetMessage("t", "ep.4")
    assert client.receive_text(reset.encode()) == [reset]
    assert client.receive_text(EventMessage("t", "ep.4", "d").encode()) == []
    assert len(client.receive_text(EventMessage("t", "ep.5", "d").encode())) == 1


@pytest.mark.parametrize(
    ("text", "code"),
    [("{", 1002), ('{"type": "subscribe", "topic": "t"}', 1002), ("x" * 200, 1009)],
)
def test_client_closes_on_bad_server_messages(text: str, code: int) -> None:
    client = SessionClient(random.Random(1), max_message_size=100)
    open_client(client)
    (close,) = client.receive_text(text)
    assert isinstance(close, CloseConnection)
    assert close.code == code
    assert client.receive_binary()[0].code == 1003  # type: ignore[union-attr]


def test_client_misuse_raises() -> None:
    client = SessionClient(random.Random(1))
    with pytest.raises(LocalProtocolError):
        client.receive_text("{}")
    with pytest.raises(LocalProtocolError):
        client.subscribe("")
    with pytest.raises(LocalProtocolError):
        client.subscribe("a\nb")
    with pytest.raises(LocalProtocolError):
        client.publish("t", b"bytes")  # type: ignore[arg-type]
    open_client(client)
    with pytest.raises(LocalProtocolError):
        client.connection_made()


def test_client_shares_topics_given_to_its_session() -> None:
    session = ReconnectingSession(random.Random(1), topics={"a": "ep.1"})
    client = SessionClient(random.Random(2), session=session)
    assert client.topics == {"a"}
    assert open_client(client) == [SubscribeMessage("a", "ep.1")]


# ---------------------------------------------------------------- end to end, no IO


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(["publish", "external", "to_server", "to_client", "to_client", "drop"]),
        max_size=60,
    ),
    st.integers(0, 2**32),
)
def test_sessions_survive_disconnects_exactly_once(steps: list[str], seed: int) -> None:
    """Publishes stored once and events seen once, in order, across random drops."""
    history = MemoryHistory("ep")
    dedup = PublishDeduplicator()
    client = SessionClient(random.Random(seed))
    client.subscribe("t", "earliest")
    server: SessionServer | None = None
    up: list[str] = []  # client -> server, in flight
    down: list[str] = []  # server -> client, in flight
    seen: list[str] = []
    published: list[str] = []
    now = 0.0

    def server_out(outputs: list[ServerOutput]) -> None:
        for output in outputs:
            if isinstance(output, Appended):
                assert server is not None
                fan_out(output.message)
            elif not isinstance(output, StartLive | StopLive | CloseConnection):
                down.append(output.encode())

    def fan_out(message: EventMessage) -> None:
        if server is not None and not server.closed:
            down.extend(m.encode() for m in server.live(message))

    def connect() -> None:
        nonlocal server, now
        action = client.session.start(now) if client.session.state.value == "idle" else None
        if action is None:
            deadline = client.session.next_deadline()
            assert deadline is not None
            now = max(now, deadline)
            action = client.session.timer(now)
        assert isinstance(action, Connect)
        client.session.connected(now)
        server = SessionServer(history, dedup)
        up.extend(m.encode() for m in client.connection_made())

    def deliver_down() -> None:
        for output in client.receive_text(down.pop(0)):
            if isinstance(output, EventMessage):
                seen.append(output.data)
            assert not isinstance(output, ResetMessage | CloseConnection | PublishFailed)

    connect()
    for step in steps:
        now += 1.0
        if step == "publish":
            data = f"c{len(published)}"
            published.append(data)
            _, out = client.publish("t", data)
            up.extend(m.encode() for m in out)
        elif step == "external":
            data = f"x{len(published)}"
            published.append(data)
            fan_out(EventMessage.from_stored("t", history.append("t", data)))
        elif step == "to_server" and up and server is not None:
            server_out(server.receive_text(up.pop(0), now))
        elif step == "to_client" and down:
            deliver_down()
        elif step == "drop" and server is not None:
            server.connection_closed()
            server = None
            up.clear()
            down.clear()
            client.connection_lost()
            client.session.closed(1006, by_peer=True, now=now)
            connect()
    # quiesce: deliver everything in flight
    while up or down:
        assert server is not None
        while up:
            server_out(server.receive_text(up.pop(0), now))
        while down:
            deliver_down()
    stored = [event.data for event in history.read("t", "earliest", limit=10_000).events]  # type: ignore[union-attr]
    assert sorted(stored) == sorted(published)  # every publish stored exactly once
    assert client.outbox == ()
    assert seen == stored  # every event seen once, in order
