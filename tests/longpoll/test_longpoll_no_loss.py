"""Property: a client polling a changing history sees every event once, in order, or a reset.

A simulated client and server share a small :class:`MemoryHistory` while events are
appended, the ring evicts, the topic is dropped (new epoch), held requests are woken,
answers are lost in transit and servers answer 503.  Every delivered event must be
the one right after the previous one (same epoch, next offset, the right payload);
the only way to jump is an explicit reset, only where events were really lost, and
the events still retained after it follow.  Once things calm down the client must
reach the head.
"""

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tidings.backoff import Backoff, NoJitter
from tidings.cursor import Position
from tidings.history import MemoryHistory, Replay, Reset
from tidings.longpoll import (
    AdaptivePoller,
    LongPollClient,
    LongPollServer,
    PollAnswer,
    PollEvent,
    PollReset,
    parse_poll_request,
)

TOPIC = "t"


class PollingClientFollowsHistory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.history = MemoryHistory("ep", max_events=6, max_topics=2)
        self.truth: dict[Position, str] = {}
        self.counter = 0
        self.now = 0.0
        self.last: Position | None = None
        self.delivered = 0
        self.resets = 0
        self.reset_allowed = False
        self.client = LongPollClient("http://h/topics/t/poll", rng=random.Random(0))

    @initialize(
        start=st.sampled_from([None, "earliest"]),
        mode=st.sampled_from(["query", "header"]),
        timeout=st.sampled_from([0.0, 5.0]),
        limit=st.one_of(st.none(), st.integers(1, 4)),
        adaptive=st.booleans(),
        prefill=st.integers(0, 8),
    )
    def start(
        self,
        start: str | None,
        mode: str,
        timeout: float,
        limit: int | None,
        adaptive: bool,
        prefill: int,
    ) -> None:
        self.append(prefill)
        self.client = LongPollClient(
            "http://h/topics/t/poll",
            rng=random.Random(0),
            cursor=start,
            cursor_in="header" if mode == "header" else "query",
            timeout=timeout,
            limit=limit,
            poller=AdaptivePoller(1.0, 8.0) if adaptive else None,
            backoff=Backoff(NoJitter(base=0.5, cap=4.0)),
        )

    @rule(count=st.integers(1, 8))
    def append(self, count: int) -> None:
        for _ in range(count):
            self.counter += 1
            stored = self.history.append(TOPIC, f"payload {self.counter}")
            self.truth[stored.position] = stored.data

    @rule()
    def drop_topic(self) -> None:
        # Two other topics push ``t`` out of the LRU: it comes back in a new epoch.
        self.history.append("other-1", "x")
        self.history.append("other-2", "x")

    def _resolved_start(self) -> Position:
        """Where a request with the client's current cursor starts reading now."""
        if self.client.cursor is None:
            return self.history.head(TOPIC)
        result = self.history.read(TOPIC, "earliest", 1)
        assert isinstance(result, Replay)
        if result.events:
            first = result.events[0].position
            return Position(first.epoch, first.offset - 1)
        return result.cursor

    def _serve(self, wake_with: int) -> tuple[PollAnswer, Position | None]:
        request = self.client.send_request(self.now)
        query = request.url.partition("?")[2]
        poll = parse_poll_request(query, request.headers)
        start = None
        if self.client.cursor in (None, "earliest") and self.last is None:
            start = self._resolved_start()
        cursor = self.client.cursor
        # A reset is only right when the history cannot continue from the cursor.
        self.reset_allowed = cursor not in (None, "earliest") and isinstance(
            self.history.read(TOPIC, cursor, 1), Reset
        )
        server = LongPollServer(TOPIC, poll, self.now)
        answer = server.poll(self.history, self.now)
        if answer is None and wake_with:
            self.append(wake_with)
            answer = server.poll(self.history, self.now)
        if answer is None:
            deadline = server.next_deadline()
            assert deadline is not None
            self.now = max(self.now, deadline)
            answer = server.handle_timer(self.now)
        assert answer is not None
        return answer, start

    def _wait_for_client(self) -> None:
        deadline = self.client.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)

    @rule(wake_with=st.integers(0, 3), fate=st.sampled_from(["deliver"] * 4 + ["lose", "503"]))
    def poll_once(self, wake_with: int, fate: str) -> None:
        self._wait_for_client()
        answer, start = self._serve(wake_with)
        if fate == "lose":
            self.client.connection_failed(self.now)
            return
        if fate == "503":
            self.client.receive_response(503, [(b"retry-after", b"1")], b"", self.now)
            return
        self._deliver(answer, start)

    def _deliver(self, answer: PollAnswer, start: Position | None) -> None:
        before = self.client.cursor
        items = self.client.receive_response(answer.status, answer.headers, answer.body, self.now)
        if answer.status == 304:
            assert items == []
            assert self.client.cursor == before
            return
        if self.last is None and start is not None:
            self.last = start
        for item in items:
            if isinstance(item, PollReset):
                assert self.reset_allowed, "a reset where nothing was lost"
                self.resets += 1
                self.last = Position.parse(item.cursor)
                assert self.last.epoch == self.history.head(TOPIC).epoch
                continue
            assert isinstance(item, PollEvent)
            position = Position.parse(item.id)
            assert self.last is not None
            if position.epoch != self.last.epoch and self.last.offset == 0:
                # From a fresh position (the topic was not held) to its first event.
                assert "_" in self.last.epoch
                self.last = Position(position.epoch, 0)
            assert position.epoch == self.last.epoch, "epoch changed without a reset"
            assert position.offset == self.last.offset + 1, "skipped or repeated an event"
            assert self.truth[position] == item.data
            self.last = position
            self.delivered += 1
        assert self.last is not None
        assert self.client.cursor == self.last.format()

    @invariant()
    def client_keeps_going(self) -> None:
        assert not self.client.closed

    def teardown(self) -> None:
        # Calm: no more appends.  Within a bounded number of polls the client must be
        # at the head, having seen everything since its start or its last reset.
        for _ in range(40):
            self._wait_for_client()
            answer, start = self._serve(0)
            self._deliver(answer, start)
            if self.last == self.history.head(TOPIC):
                break
        assert self.last == self.history.head(TOPIC)


TestPollingClientFollowsHistory = PollingClientFollowsHistory.TestCase
TestPollingClientFollowsHistory.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
