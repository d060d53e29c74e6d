"""The ``tidings.v1`` server machine, driven as an embedder would drive it.

:class:`Driver` is the smallest adapter there is: a synchronous history, each
follower's actions carried out at once, publishes stored idempotently.  It shows
that the machine plus the follow machine is everything a server needs; the Trio
adapter (tests/trio/test_ws_server.py) does the same with sockets and a hub.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.cursor import Position
from tidings.dedup import PublishDeduplicator
from tidings.errors import LocalProtocolError
from tidings.follow import CaughtUp, Deliver, FollowAction, Follower, Positioned, ReadHistory
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent
from tidings.session import Connect
from tidings.ws import (
    CloseConnection,
    ErrorCode,
    ErrorMessage,
    EventMessage,
    PublishedMessage,
    PublishFailed,
    PublishMessage,
    ResetMessage,
    ServerMessage,
    ServerOutput,
    SessionClient,
    SessionServer,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
)
from tidings.ws.server import Follow, Publish, Unfollow


class Driver:
    """A synchronous adapter for one :class:`SessionServer` (see the module)."""

    def __init__(
        self,
        server: SessionServer,
        history: MemoryHistory,
        dedup: PublishDeduplicator | None = None,
    ) -> None:
        self.server = server
        self.history = history
        self.dedup = dedup if dedup is not None else PublishDeduplicator()
        self.followers: dict[str, Follower[Positioned]] = {}
        self.instructions: list[ServerOutput] = []  # Follow / Unfollow / Publish / close
        self.now = 0.0

    def text(
        self, message: str | SubscribeMessage | UnsubscribeMessage | PublishMessage
    ) -> list[ServerMessage]:
        """What the server sends in answer to one client message."""
        text = message if isinstance(message, str) else message.encode()
        return self.handle(self.server.receive_text(text))

    def handle(self, outputs: list[ServerOutput]) -> list[ServerMessage]:
        sent: list[ServerMessage] = []
        for output in outputs:
            if isinstance(output, Follow):
                self.instructions.append(output)
                self.followers[output.topic] = output.follower
                sent += self.run(output.topic, output.follower.begin())
            elif isinstance(output, Unfollow):
                self.instructions.append(output)
                self.followers.pop(output.topic, None)
            elif isinstance(output, Publish):
                self.instructions.append(output)
                sent += self.store(output)
            elif isinstance(output, CloseConnection):
                self.instructions.append(output)
            else:
                sent.append(output)
        return sent

    def store(self, publish: Publish) -> list[ServerMessage]:
        original = self.dedup.lookup(publish.topic, publish.msg_id, self.now)
        if original is not None:
            return self.handle(self.server.published(publish.msg_id, original))
        try:
            stored = self.history.append(publish.topic, publish.data, publish.event)
        except LocalProtocolError as exc:
            return self.handle(self.server.publish_failed(publish.msg_id, str(exc)))
        self.dedup.remember(publish.topic, publish.msg_id, stored.position, self.now)
        sent = self.handle(self.server.published(publish.msg_id, stored.position))
        return self.live(publish.topic, stored) + sent

    def run(self, topic: str, actions: list[FollowAction[Positioned]]) -> list[ServerMessage]:
        sent: list[ServerMessage] = []
        for action in actions:
            if isinstance(action, ReadHistory):
                answer: Replay | Reset = (
                    Replay((), self.history.head(topic))
                    if action.after is None
                    else self.history.read(topic, action.after, action.limit)
                )
                sent += self.run(topic, self.followers[topic].history(answer))
            elif isinstance(action, Deliver):
                for event in action.events:
                    assert isinstance(event, StoredEvent)
                    sent.append(EventMessage.from_stored(topic, event))
            elif isinstance(action, Reset):
                sent.append(self.server.reset_message(topic, action))
            else:
                assert isinstance(action, CaughtUp)
                sent += self.handle(self.server.caught_up(topic, action.cursor))
        return sent

    def live(self, topic: str, stored: StoredEvent) -> list[ServerMessage]:
        follower = self.followers.get(topic)
        return [] if follower is None else self.run(topic, follower.live(stored))


def driver(history: MemoryHistory | None = None, **limits: int) -> Driver:
    return Driver(SessionServer(**limits), history if history is not None else MemoryHistory("ep"))


def datas(messages: list[ServerMessage]) -> list[str]:
    return [m.data for m in messages if isinstance(m, EventMessage)]


def test_subscribe_without_cursor_is_live_from_the_head() -> None:
    d = driver()
    d.history.append("t", "old")
    head = d.history.head("t")
    assert d.text(SubscribeMessage("t")) == [SubscribedMessage("t", head.format())]
    assert datas(d.live("t", d.history.append("t", "new"))) == ["new"]


def test_subscribe_with_cursor_replays_then_confirms() -> None:
    d = driver(replay_chunk=2)
    events = [d.history.append("t", f"e{i}") for i in range(5)]
    sent = d.text(SubscribeMessage("t", events[1].position.format()))
    assert datas(sent) == ["e2", "e3", "e4"]
    assert sent[-1] == SubscribedMessage("t", events[-1].position.format())
    assert isinstance(d.instructions[0], Follow)


def test_subscribe_earliest_replays_everything_retained() -> None:
    d = driver(MemoryHistory("ep", max_events=3))
    for i in range(5):
        d.history.append("t", f"e{i}")
    assert datas(d.text(SubscribeMessage("t", "earliest"))) == ["e2", "e3", "e4"]


def test_a_cursor_of_another_epoch_resets_then_replays_what_is_retained() -> None:
    d = driver()
    stored = d.history.append("t", "x")
    sent = d.text(SubscribeMessage("t", "other.3"))
    assert sent == [
        ResetMessage("t", Position(stored.position.epoch, 0).format(), "unknown-epoch"),
        EventMessage.from_stored("t", stored),
        SubscribedMessage("t", stored.position.format()),
    ]


@pytest.mark.parametrize("cursor", ["garbage", "{epoch}.99"])
def test_a_malformed_or_future_cursor_resets_to_the_head(cursor: str) -> None:
    d = driver()
    d.history.append("t", "x")
    head = d.history.head("t").format()
    sent = d.text(SubscribeMessage("t", cursor.format(epoch=d.history.head("t").epoch)))
    assert [type(m) for m in sent] == [ResetMessage, SubscribedMessage]
    assert sent[0].cursor == head  # type: ignore[union-attr]
    assert sent[1] == SubscribedMessage("t", head)


def test_unsubscribe_stops_following() -> None:
    d = driver()
    d.text(SubscribeMessage("t"))
    assert d.text(UnsubscribeMessage("t")) == []
    assert d.instructions[-1] == Unfollow("t")
    assert d.server.topics == frozenset()
    assert d.text(UnsubscribeMessage("t")) == []
    assert d.instructions[-1] == Unfollow("t")  # nothing new
    assert d.live("t", d.history.append("t", "x")) == []


def test_resubscribe_restarts_from_the_new_cursor_with_a_new_follower() -> None:
    d = driver()
    first = d.history.append("t", "a")
    d.history.append("t", "b")
    d.text(SubscribeMessage("t"))
    old = d.server.follower("t")
    sent = d.text(SubscribeMessage("t", first.position.format()))
    assert datas(sent) == ["b"]
    assert d.server.follower("t") is not old
    assert d.server.topics == {"t"}


def test_max_topics_per_connection_answers_an_error() -> None:
    d = driver(max_topics=2)
    d.text(SubscribeMessage("a"))
    d.text(SubscribeMessage("b"))
    (error,) = d.text(SubscribeMessage("c"))
    assert isinstance(error, ErrorMessage)
    assert (error.code, error.topic) == (ErrorCode.TOO_MANY_TOPICS, "c")
    assert d.server.topics == {"a", "b"}
    d.text(SubscribeMessage("a", "earliest"))  # re-subscribing is not one more
    assert d.server.topics == {"a", "b"}


def test_malformed_message_gets_an_error_message() -> None:
    d = driver()
    (error,) = d.text("{")
    assert isinstance(error, ErrorMessage)
    assert error.code == ErrorCode.MALFORMED
    assert not d.server.closed


def test_too_many_errors_close_with_policy_violation() -> None:
    server = SessionServer(max_errors=3)
    server.receive_text(SubscribeMessage("t").encode())
    assert server.receive_text("x")[-1] != CloseConnection(1008, "too many errors")
    server.receive_text("x")
    outputs = server.receive_text("x")
    assert outputs[-2:] == [Unfollow("t"), CloseConnection(1008, "too many errors")]
    assert server.closed
    with pytest.raises(LocalProtocolError):
        server.receive_text(SubscribeMessage("t").encode())


def test_refusals_by_the_adapter_count_toward_the_error_limit() -> None:
    server = SessionServer(max_errors=2)
    refusal = ErrorMessage("forbidden", "not yours", "t")
    assert server.refuse(refusal) == [refusal]
    assert server.refuse(refusal)[-1] == CloseConnection(1008, "too many errors")


def test_oversized_message_closes_with_1009() -> None:
    server = SessionServer(max_message_size=64)
    server.receive_text(SubscribeMessage("t").encode())
    outputs = server.receive_text(PublishMessage("t", "m", "x" * 100).encode())
    assert outputs == [Unfollow("t"), CloseConnection(1009, "message too big")]


def test_binary_message_closes_with_1003() -> None:
    assert SessionServer().receive_binary() == [
        CloseConnection(1003, "tidings.v1 messages are text")
    ]


def test_adapter_detected_oversize_closes_with_1009() -> None:
    assert SessionServer().message_too_big() == [CloseConnection(1009, "message too big")]


def test_connection_closed_unfollows_every_topic() -> None:
    server = SessionServer()
    server.receive_text(SubscribeMessage("a").encode())
    server.receive_text(SubscribeMessage("b").encode())
    assert set(server.connection_closed()) == {Unfollow("a"), Unfollow("b")}
    assert server.caught_up("a", Position("e", 1)) == []
    assert server.published("m", Position("e", 1)) == []


def test_publish_is_stored_then_acknowledged() -> None:
    d = driver()
    d.text(SubscribeMessage("t"))
    sent = d.text(PublishMessage("t", "m1", "hi", "greet"))
    stored = d.history.read("t", "earliest", 10)
    assert isinstance(stored, Replay)
    (event,) = stored.events
    assert (event.data, event.event) == ("hi", "greet")
    assert d.instructions[-1] == Publish("t", "m1", "hi", "greet")
    assert sent == [
        EventMessage.from_stored("t", event),  # the publisher follows the topic too
        PublishedMessage("m1", event.position.format()),
    ]


def test_a_resend_while_the_first_is_being_stored_gets_one_answer() -> None:
    server = SessionServer()
    message = PublishMessage("t", "m1", "x").encode()
    assert server.receive_text(message) == [Publish("t", "m1", "x", None)]
    assert server.receive_text(message) == []
    assert server.published("m1", Position("e", 1)) == [PublishedMessage("m1", "e.1")]
    assert server.published("m1", Position("e", 1)) == []


def test_a_resend_on_a_new_connection_is_answered_with_the_original_id() -> None:
    history = MemoryHistory("ep")
    dedup = PublishDeduplicator()
    message = PublishMessage("t", "m1", "once")
    first = Driver(SessionServer(), history, dedup).text(message)
    second = Driver(SessionServer(), history, dedup).text(message)
    assert second == first
    assert history.stats("t")[0] == 1


def test_a_refused_publish_answers_an_error_with_the_msg_id() -> None:
    d = driver(MemoryHistory("ep", max_event_size=10, max_bytes=1000))
    (error,) = d.text(PublishMessage("t", "m1", "x" * 11))
    assert isinstance(error, ErrorMessage)
    assert (error.code, error.topic, error.msg_id) == (ErrorCode.PUBLISH_REJECTED, "t", "m1")


def test_a_publish_that_cannot_be_stored_now_asks_for_a_resend() -> None:
    server = SessionServer()
    server.receive_text(PublishMessage("t", "m1", "x").encode())
    (error,) = server.publish_failed("m1", "store unreachable", retry=True)
    assert isinstance(error, ErrorMessage)
    assert (error.code, error.msg_id) == (ErrorCode.UNAVAILABLE, "m1")
    assert json.loads(error.encode())["code"] == "unavailable"


def test_limits_are_checked() -> None:
    with pytest.raises(LocalProtocolError):
        SessionServer(max_topics=0)
    with pytest.raises(LocalProtocolError):
        SessionServer(replay_chunk=0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 6),
    st.integers(0, 6),
    st.lists(st.sampled_from(["append", "deliver"]), max_size=40),
)
def test_subscribe_then_replay_has_no_gap_and_no_duplicate(
    before: int, cursor_at: int, steps: list[str]
) -> None:
    d = driver(replay_chunk=2)
    stored = [d.history.append("t", f"e{i}") for i in range(before)]
    cursor = stored[min(cursor_at, before) - 1].position.format() if cursor_at and before else None
    expected_start = min(cursor_at, before) if cursor is not None else before
    # The live feed lags: events appended "just before" the subscription were queued
    # for it already (it registers first) and must come out once.
    queue = list(stored[expected_start:])
    received = datas(d.text(SubscribeMessage("t", cursor)))
    total = before
    for step in steps:
        if step == "append":
            queue.append(d.history.append("t", f"e{total}"))
            total += 1
        elif queue:
            received += datas(d.live("t", queue.pop(0)))
    while queue:
        received += datas(d.live("t", queue.pop(0)))
    assert received == [f"e{i}" for i in range(expected_start, total)]


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
    server: Driver | None = None
    up: list[str] = []  # client -> server, in flight
    down: list[str] = []  # server -> client, in flight
    seen: list[str] = []
    published: list[str] = []
    now = 0.0

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
        server = Driver(SessionServer(), history, dedup)
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
            stored = history.append("t", data)
            if server is not None:
                down.extend(m.encode() for m in server.live("t", stored))
        elif step == "to_server" and up and server is not None:
            server.now = now
            down.extend(m.encode() for m in server.text(up.pop(0)))
        elif step == "to_client" and down:
            deliver_down()
        elif step == "drop" and server is not None:
            server.server.connection_closed()
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
            down.extend(m.encode() for m in server.text(up.pop(0)))
        while down:
            deliver_down()
    everything = history.read("t", "earliest", limit=10_000)
    assert isinstance(everything, Replay)
    stored_data = [event.data for event in everything.events]
    assert sorted(stored_data) == sorted(published)  # every publish stored exactly once
    assert client.outbox == ()
    assert seen == stored_data  # every event seen once, in order


def test_outcomes_of_unknown_publishes_are_ignored() -> None:
    server = SessionServer()
    assert server.publish_failed("never-sent", "nope") == []
    assert "topics=0" in repr(server)
    server.connection_closed()
    assert server.publish_failed("m", "nope") == []
    assert "closed=True" in repr(server)
