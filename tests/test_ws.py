import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.cursor import Position
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.history import StoredEvent
from tidings.session import Connect, ReconnectingSession, Wait
from tidings.ws import (
    SUBPROTOCOL,
    CloseConnection,
    ErrorCode,
    ErrorMessage,
    EventMessage,
    MessageTooBig,
    PublishAcknowledged,
    PublishedMessage,
    PublishFailed,
    PublishMessage,
    ResetMessage,
    SessionClient,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    parse_client_message,
    parse_server_message,
)

# ------------------------------------------------------------------------ messages

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=50)
names = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)
topics = st.from_regex(r"[A-Za-z0-9._~-]{1,40}", fullmatch=True).filter(
    lambda t: t not in (".", "..")
)
msg_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
cursors = st.builds(
    lambda e, o: f"{e}.{o}", st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), st.integers(0, 10**6)
)

client_messages = st.one_of(
    st.builds(SubscribeMessage, topics, st.one_of(st.none(), cursors, st.just("earliest"))),
    st.builds(UnsubscribeMessage, topics),
    st.builds(PublishMessage, topics, msg_ids, texts, st.one_of(st.none(), names)),
)
server_messages = st.one_of(
    st.builds(EventMessage, topics, cursors, texts, st.one_of(st.none(), names)),
    st.builds(ResetMessage, topics, cursors, st.one_of(st.none(), st.sampled_from(["evicted"]))),
    st.builds(SubscribedMessage, topics, cursors),
    st.builds(PublishedMessage, msg_ids, cursors),
    st.builds(
        ErrorMessage,
        st.sampled_from(list(ErrorCode)).map(str),
        texts,
        st.one_of(st.none(), topics),
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


@pytest.mark.parametrize("topic", ["x" * 129, "a/b", "a b", ".", "..", "caf\u00e9", "t\x00"])
def test_topics_follow_the_rule_every_transport_shares(topic: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_client_message(SubscribeMessage(topic).encode())
    assert parse_client_message(SubscribeMessage("x" * 128).encode()) == SubscribeMessage("x" * 128)


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
        try:
            message = parse(text, max_size=150)
        except RemoteProtocolError:
            continue
        assert parse(message.encode()) == message  # what was accepted reads back alike


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
