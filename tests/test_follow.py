"""The follow machine: resume, replay, live, holes, epochs, overflow -- and a model check."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tidings.cursor import EARLIEST, Position
from tidings.errors import LocalProtocolError
from tidings.follow import (
    CaughtUp,
    Deliver,
    FollowAction,
    Follower,
    FollowState,
    ReadHistory,
)
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent

Action = FollowAction[StoredEvent]


def ev(epoch: str, offset: int, data: str = "") -> StoredEvent:
    return StoredEvent(Position(epoch, offset), data or f"{epoch}.{offset}")


def positions(actions: Sequence[Action]) -> list[object]:
    """Actions as a readable list: event positions, ("reset", cursor), ("read", after)."""
    out: list[object] = []
    for action in actions:
        if isinstance(action, Deliver):
            out += [str(e.position) for e in action.events]
        elif isinstance(action, Reset):
            out.append(("reset", str(action.cursor), action.reason.value))
        elif isinstance(action, ReadHistory):
            out.append(("read", None if action.after is None else str(action.after)))
        else:
            assert isinstance(action, CaughtUp)
            out.append(("caught-up", str(action.cursor)))
    return out


def started(start: Position | str | None, answer: Replay | Reset) -> Follower[StoredEvent]:
    follower: Follower[StoredEvent] = Follower(start)
    follower.begin()
    follower.history(answer)
    return follower


# -- unit tests ------------------------------------------------------------------------


def test_live_from_now_reads_the_head_then_delivers_next_events() -> None:
    follower: Follower[StoredEvent] = Follower(None)
    assert follower.state is FollowState.IDLE
    assert follower.begin() == [ReadHistory(None, 128)]
    assert follower.state is FollowState.READING
    assert positions(follower.history(Replay((), Position("e", 4)))) == [("caught-up", "e.4")]
    assert follower.state is FollowState.LIVE
    assert positions(follower.live(ev("e", 5))) == ["e.5"]
    assert follower.last == Position("e", 5)


def test_a_replay_is_delivered_then_the_follower_is_live() -> None:
    follower: Follower[StoredEvent] = Follower("e.2", page_size=10)
    assert follower.begin() == [ReadHistory("e.2", 10)]
    actions = follower.history(Replay((ev("e", 3), ev("e", 4)), Position("e", 4)))
    assert positions(actions) == ["e.3", "e.4", ("caught-up", "e.4")]


def test_paging_reads_on_until_the_history_has_no_more() -> None:
    follower: Follower[StoredEvent] = Follower(EARLIEST, page_size=2)
    follower.begin()
    actions = follower.history(Replay((ev("e", 1), ev("e", 2)), Position("e", 2), more=True))
    assert positions(actions) == ["e.1", "e.2", ("read", "e.2")]
    assert follower.state is FollowState.READING
    actions = follower.history(Replay((ev("e", 3),), Position("e", 3)))
    assert positions(actions) == ["e.3", ("caught-up", "e.3")]


def test_live_events_during_a_read_are_buffered_and_duplicates_dropped() -> None:
    follower: Follower[StoredEvent] = Follower("e.1")
    follower.begin()
    assert follower.live_many([ev("e", 2), ev("e", 3)]) == []
    assert follower.buffered == 2
    # The read saw e.2 only; e.3 was published after it ran.
    actions = follower.history(Replay((ev("e", 2),), Position("e", 2)))
    assert positions(actions) == ["e.2", ("caught-up", "e.2"), "e.3"]
    assert follower.buffered == 0


def test_a_hole_in_the_live_feed_is_filled_from_the_history() -> None:
    follower = started(None, Replay((), Position("e", 1)))
    actions = follower.live_many([ev("e", 2), ev("e", 4), ev("e", 5)])
    assert positions(actions) == ["e.2", ("read", "e.2")]
    assert follower.state is FollowState.READING
    # e.4 and e.5 were dropped: the read covers them.
    actions = follower.history(Replay((ev("e", 3), ev("e", 4), ev("e", 5)), Position("e", 5)))
    assert positions(actions) == ["e.3", "e.4", "e.5"]
    assert follower.state is FollowState.LIVE


def test_duplicates_in_the_live_feed_are_dropped() -> None:
    follower = started(None, Replay((), Position("e", 1)))
    actions = follower.live_many([ev("e", 1), ev("e", 2), ev("e", 2), ev("e", 3)])
    assert positions(actions) == ["e.2", "e.3"]
    assert follower.last == Position("e", 3)


def test_a_new_epoch_in_the_live_feed_reads_the_history_which_resets() -> None:
    follower = started(None, Replay((), Position("old", 7)))
    assert positions(follower.live(ev("new", 1))) == [("read", "old.7")]
    actions = follower.history(Reset(Position("new", 0), ResetReason.UNKNOWN_EPOCH))
    assert positions(actions) == [("reset", "new.0", "unknown-epoch"), ("read", "new.0")]
    actions = follower.history(Replay((ev("new", 1),), Position("new", 1)))
    assert positions(actions) == ["new.1"]


def test_a_reset_is_followed_by_every_retained_event_not_a_jump_to_the_head() -> None:
    follower: Follower[StoredEvent] = Follower("e.1")
    follower.begin()
    actions = follower.history(Reset(Position("e", 4), ResetReason.EVICTED))
    assert positions(actions) == [("reset", "e.4", "evicted"), ("read", "e.4")]
    actions = follower.history(Replay((ev("e", 5), ev("e", 6)), Position("e", 6)))
    assert positions(actions) == ["e.5", "e.6", ("caught-up", "e.6")]


def test_the_first_event_of_another_epoch_is_checked_with_the_history() -> None:
    # After "nothing yet" (a topic that did not exist), offset 1 of some epoch may be
    # the topic's first event or a stale duplicate from before a restart: only the
    # history can tell, so the follower reads it.
    follower = started(None, Replay((), Position("fresh", 0)))
    assert follower.accept(Position("topic", 1)) is False
    assert positions(follower.live(ev("topic", 1))) == [("read", "fresh.0")]
    actions = follower.history(Replay((ev("topic", 1),), Position("topic", 1)))
    assert positions(actions) == ["topic.1"]
    assert positions(follower.live(ev("topic", 2))) == ["topic.2"]


def test_overflow_while_live_reads_from_the_last_delivered_event() -> None:
    follower = started(None, Replay((), Position("e", 3)))
    assert positions(follower.overflow()) == [("read", "e.3")]
    # Overflowing again before the answer only asks for one more read after it.
    assert follower.overflow() == []
    actions = follower.history(Replay((ev("e", 4),), Position("e", 4)))
    assert positions(actions) == ["e.4", ("read", "e.4")]
    assert positions(follower.history(Replay((), Position("e", 4)))) == []
    assert follower.state is FollowState.LIVE


def test_too_many_events_during_a_read_are_dropped_and_read_again() -> None:
    follower: Follower[StoredEvent] = Follower("e.0", max_buffered=2)
    follower.begin()
    follower.live_many([ev("e", 1), ev("e", 2), ev("e", 3)])
    assert follower.buffered == 0
    actions = follower.history(Replay((ev("e", 1),), Position("e", 1)))
    assert positions(actions) == ["e.1", ("read", "e.1")]


def test_accept_is_the_fast_path_of_live() -> None:
    follower = started(None, Replay((), Position("e", 1)))
    assert follower.accept(Position("e", 3)) is False  # a hole: live() decides
    assert follower.last == Position("e", 1)
    assert follower.accept(Position("e", 2)) is True
    assert follower.accept(Position("e", 2)) is False  # a duplicate
    assert follower.last == Position("e", 2)
    follower.overflow()
    assert follower.accept(Position("e", 3)) is False  # reading


def test_misuse_raises_local_protocol_errors() -> None:
    with pytest.raises(LocalProtocolError):
        Follower(42)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Follower(None, page_size=0)
    follower: Follower[StoredEvent] = Follower(None)
    with pytest.raises(LocalProtocolError):
        follower.history(Replay((), Position("e", 0)))
    follower.begin()
    with pytest.raises(LocalProtocolError):
        follower.begin()
    with pytest.raises(LocalProtocolError):
        follower.history("nonsense")  # type: ignore[arg-type]


def test_events_before_begin_are_covered_by_the_first_read() -> None:
    follower: Follower[StoredEvent] = Follower(EARLIEST)
    follower.live(ev("e", 1))
    follower.begin()
    actions = follower.history(Replay((ev("e", 1),), Position("e", 1)))
    assert positions(actions) == ["e.1", ("caught-up", "e.1")]


def test_actions_hold_no_empty_delivery() -> None:
    # Exact actions (positions() would hide an empty Deliver): a run that starts with
    # a duplicate, a run of duplicates only, a hole straight after the last delivered.
    follower = started(None, Replay((), Position("e", 2)))
    assert follower.live_many([ev("e", 2), ev("e", 3)]) == [Deliver([ev("e", 3)])]
    assert follower.live_many([ev("e", 1), ev("e", 3)]) == []
    assert follower.live(ev("e", 5)) == [ReadHistory(Position("e", 3), 128)]
    assert follower.last == Position("e", 3)  # where the read continues from


def test_last_is_where_the_follower_stands_at_every_step() -> None:
    follower: Follower[StoredEvent] = Follower("e.7")
    assert follower.last is None  # nothing answered yet
    follower.begin()
    assert follower.last is None
    reset = Reset(Position("f", 0), ResetReason.UNKNOWN_EPOCH)
    assert follower.history(reset) == [reset, ReadHistory(Position("f", 0), 128)]
    assert follower.last == Position("f", 0)  # the reset's cursor, until the next answer
    follower.history(Replay((ev("f", 1),), Position("f", 1)))
    assert follower.last == Position("f", 1)


def test_exactly_max_buffered_live_events_are_kept_during_a_read() -> None:
    follower: Follower[StoredEvent] = Follower("e.1", max_buffered=2)
    follower.begin()
    assert follower.live_many([ev("e", 2), ev("e", 3)]) == []
    assert follower.buffered == 2  # at the bound: kept, no read again
    actions = follower.history(Replay((), Position("e", 1)))
    assert actions == [CaughtUp(Position("e", 1)), Deliver([ev("e", 2), ev("e", 3)])]


# -- the model check -------------------------------------------------------------------


class FollowModel(RuleBasedStateMachine):
    """Random interleavings of publish, live delivery (in order, duplicated, dropped),
    slow history reads, eviction and restarts, against the real history.

    What is checked, after every step: every event delivered is one that was stored,
    delivered once; each continues exactly from the previous one (or from the cursor
    of the reset before it), so nothing is skipped without a reset; every read asks
    for exactly the place the follower stands at; and once everything in flight has
    arrived, the follower stands at the head.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.history = MemoryHistory("g0", max_events=6)
        self.stored: dict[Position, str] = {}
        self.in_flight: list[StoredEvent] = []  # published, not yet given to the follower
        self.sent: list[StoredEvent] = []  # given live at least once (for duplicates)
        self.follower: Follower[StoredEvent] = Follower(None)
        self.read: ReadHistory | None = None  # issued, not executed
        self.answer: Replay | Reset | None = None  # executed, not handed back
        self.cursor: Position | None = None  # where the delivered sequence stands
        self.delivered: set[Position] = set()
        self.counter = 0
        self.malformed = False
        self.from_history = False  # the actions being performed answer a read

    # -- the adapter -------------------------------------------------------------------

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ReadHistory):
                assert self.read is None, "two reads at once"
                assert self.answer is None, "two reads at once"
                if self.cursor is not None:
                    assert action.after == self.cursor, (action, self.cursor)
                self.read = action
            elif isinstance(action, Deliver):
                for event in action.events:
                    self.check_delivery(event)
                self.from_history = False
            elif isinstance(action, Reset):
                assert self.cursor is not None or action.reason is ResetReason.MALFORMED
                self.cursor = action.cursor
            else:
                assert isinstance(action, CaughtUp)
                assert action.cursor == self.cursor

    def check_delivery(self, event: StoredEvent) -> None:
        position = event.position
        assert self.stored.get(position) == event.data, f"{position} was never stored"
        assert position not in self.delivered, f"{position} delivered twice"
        cursor = self.cursor
        assert cursor is not None, "an event before the first answer"
        next_in_epoch = position.epoch == cursor.epoch and position.offset == cursor.offset + 1
        # Offset 0 of a fresh epoch (a topic not stored yet) is followed by the first
        # event of the topic's epoch: the history says so (it replays it).
        first_of_topic = cursor.offset == 0 and position.offset == 1 and self.from_history
        assert next_in_epoch or first_of_topic, f"{position} skips from {cursor}"
        self.delivered.add(position)
        self.cursor = position

    # -- rules -------------------------------------------------------------------------

    @initialize(
        before=st.integers(0, 8),
        start=st.sampled_from(["live", "earliest", "position", "zero", "malformed", "foreign"]),
        pick=st.integers(0, 100),
        page=st.integers(1, 4),
        buffer=st.integers(1, 5),
    )
    def setup(self, before: int, start: str, pick: int, page: int, buffer: int) -> None:
        for _ in range(before):
            self.append_event(live=False)
        head = self.history.head("t")
        begin: Position | str | None
        if start == "live":
            begin = None
        elif start == "earliest":
            begin = EARLIEST
        elif start == "position":
            begin = Position(head.epoch, pick % (head.offset + 1))
        elif start == "zero":
            begin = Position(head.epoch, 0)
        elif start == "malformed":
            begin = "not a cursor"
            self.malformed = True
        else:
            begin = Position("elsewhere", 3)
        self.follower = Follower(begin, page_size=page, max_buffered=buffer)
        if isinstance(begin, Position):
            self.cursor = begin
        self.perform(self.follower.begin())

    def append_event(self, *, live: bool = True) -> None:
        self.counter += 1
        stored = self.history.append("t", f"data {self.counter}")
        self.stored[stored.position] = stored.data
        if live:
            self.in_flight.append(stored)

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        for _ in range(count):
            self.append_event()

    @rule()
    def restart(self) -> None:
        """The history is lost (a restart, a flushed store): a new epoch."""
        self.generation += 1
        self.history = MemoryHistory(f"g{self.generation}", max_events=6)

    @rule(count=st.integers(1, 5), fast=st.booleans())
    def feed(self, count: int, fast: bool) -> None:
        batch, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        self.sent += batch
        if fast and len(batch) == 1:
            event = batch[0]
            before = (self.follower.state, self.follower.last)
            if self.follower.accept(event.position):
                self.perform([Deliver((event,))])
                return
            assert (self.follower.state, self.follower.last) == before
            actions = self.follower.live(event)
            assert actions != [Deliver((event,))], "accept() refused a deliverable event"
            self.perform(actions)
            return
        self.perform(self.follower.live_many(batch))

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 1000))
    def feed_duplicate(self, index: int) -> None:
        self.perform(self.follower.live(self.sent[index % len(self.sent)]))

    @precondition(lambda self: bool(self.in_flight))
    @rule(count=st.integers(1, 5))
    def drop(self, count: int) -> None:
        """The adapter's buffer overflowed: events are lost on their way."""
        self.in_flight = self.in_flight[count:]
        self.perform(self.follower.overflow())

    @precondition(lambda self: self.read is not None)
    @rule()
    def execute_read(self) -> None:
        read = self.read
        assert read is not None
        self.read = None
        if read.after is None:
            self.answer = Replay((), self.history.head("t"))
        else:
            self.answer = self.history.read("t", read.after, read.limit)
            if isinstance(self.answer, Reset):
                assert self.answer.reason is not ResetReason.UNKNOWN_POSITION
                if self.answer.reason is ResetReason.MALFORMED:
                    assert self.malformed
        if self.cursor is None:
            # Live from now, earliest or malformed: the first answer sets the place.
            assert isinstance(self.answer, Replay | Reset)
            if isinstance(self.answer, Replay):
                first = self.answer.events[0].position if self.answer.events else None
                self.cursor = (
                    self.answer.cursor if first is None else Position(first.epoch, first.offset - 1)
                )

    @precondition(lambda self: self.answer is not None)
    @rule()
    def answer_read(self) -> None:
        answer = self.answer
        assert answer is not None
        self.answer = None
        self.from_history = True
        self.perform(self.follower.history(answer))
        self.from_history = False

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def settles_at_the_head(self) -> None:
        """With nothing in flight, the follower is live at the head of the current
        history (unless that holds nothing yet: a new epoch is noticed with its
        first event)."""
        if self.in_flight or self.read is not None or self.answer is not None:
            return
        assert self.follower.state is FollowState.LIVE, self.follower
        head = self.history.head("t")
        if head.offset > 0:
            assert self.follower.last == head, (self.follower.last, head)


TestFollowModel = FollowModel.TestCase
TestFollowModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_the_follower_shows_where_it_stands() -> None:
    follower: Follower[StoredEvent] = Follower("e.3")
    assert follower.start == "e.3"
    assert follower.overflow() == []  # not begun: the first read covers everything
    assert repr(follower) == "<Follower idle last=None buffered=0>"
    follower.begin()
    follower.overflow()
    assert repr(follower) == "<Follower reading last=None buffered=0 reread>"
