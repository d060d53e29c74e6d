"""atheris harness: the follow machine (:class:`~tidings.follow.Follower`).

The input is a program run in one of two worlds:

- **honest**: a real :class:`~tidings.history.MemoryHistory` (six events per topic)
  behind the follower, and the fuzzer interleaves publishes, live deliveries (whole
  batches, single events through the :meth:`~Follower.accept` fast path,
  duplicates), events dropped on their way (:meth:`~Follower.overflow`), slow
  reads (executed now, answered later), restarts of the history (a new epoch) and
  evictions.  The checks are those of the model in ``tests/test_follow.py``: every
  event delivered was stored and is delivered once; each continues exactly from the
  one before or from the reset before it; every read asks for the place the
  follower stands at; once nothing is in flight, the follower is live at the head.
- **hostile**: the answers and the live events are made up -- positions in a few
  epochs with any offset, replays whose events do not follow their cursor, resets
  anywhere, answers when no read is outstanding.  The machine must answer
  :class:`~tidings.errors.LocalProtocolError` for misuse (an answer with no read
  outstanding, ``begin`` twice) and nothing else, issue at most one read at a time,
  and deliver a *live* event only when it is exactly the next position after the
  last one delivered (so a live event is never delivered twice in one epoch, and
  never across a hole).

Run: ``python fuzz/fuzz_follow.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.cursor import EARLIEST, Position
    from tidings.errors import LocalProtocolError
    from tidings.follow import CaughtUp, Deliver, Follower, FollowState, ReadHistory
    from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent

_EPOCHS = ["a", "b", "g0_0abcde"]
_OFFSETS = [0, 1, 2, 3, 4, 5, 7, 10, 2**63 - 1]


class Honest:
    """The model of ``tests/test_follow.py``, driven by the fuzzer."""

    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp
        self.generation = 0
        self.history = MemoryHistory("g0", max_events=6)
        self.stored: dict[Position, str] = {}
        self.in_flight: list[StoredEvent] = []
        self.sent: list[StoredEvent] = []
        self.read: ReadHistory | None = None
        self.answer: Replay | Reset | None = None
        self.cursor: Position | None = None
        self.delivered: set[Position] = set()
        self.counter = 0
        self.from_history = False
        for _ in range(fdp.ConsumeIntInRange(0, 8)):
            self.append(live=False)
        head = self.history.head("t")
        start = fdp.ConsumeIntInRange(0, 5)
        begin: Position | str | None = [
            None,
            EARLIEST,
            Position(head.epoch, fdp.ConsumeIntInRange(0, head.offset)),
            Position(head.epoch, 0),
            "not a cursor",
            Position("elsewhere", 3),
        ][start]
        self.follower: Follower[StoredEvent] = Follower(
            begin,
            page_size=fdp.ConsumeIntInRange(1, 4),
            max_buffered=fdp.ConsumeIntInRange(1, 5),
        )
        if isinstance(begin, Position):
            self.cursor = begin
        self.perform(self.follower.begin())

    def append(self, *, live: bool = True) -> None:
        self.counter += 1
        stored = self.history.append("t", f"data {self.counter}")
        self.stored[stored.position] = stored.data
        if live:
            self.in_flight.append(stored)

    def perform(self, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, ReadHistory):
                if self.read is not None or self.answer is not None:
                    raise AssertionError("two reads at once")
                if self.cursor is not None and action.after != self.cursor:
                    raise AssertionError(f"{action} from {self.cursor}")
                self.read = action
            elif isinstance(action, Deliver):
                for event in action.events:
                    self.check_delivery(event)
                self.from_history = False
            elif isinstance(action, Reset):
                self.cursor = action.cursor
            elif isinstance(action, CaughtUp):
                if action.cursor != self.cursor:
                    raise AssertionError(f"{action} at {self.cursor}")
            else:
                raise AssertionError(f"unexpected action {action!r}")

    def check_delivery(self, event: StoredEvent) -> None:
        position = event.position
        if self.stored.get(position) != event.data:
            raise AssertionError(f"{position} was never stored")
        if position in self.delivered:
            raise AssertionError(f"{position} delivered twice")
        cursor = self.cursor
        if cursor is None:
            raise AssertionError("an event before the first answer")
        next_in_epoch = position.epoch == cursor.epoch and position.offset == cursor.offset + 1
        first_of_topic = cursor.offset == 0 and position.offset == 1 and self.from_history
        if not (next_in_epoch or first_of_topic):
            raise AssertionError(f"{position} skips from {cursor}")
        self.delivered.add(position)
        self.cursor = position

    def step(self) -> None:
        fdp = self.fdp
        choice = fdp.ConsumeIntInRange(0, 6)
        if choice == 0:
            for _ in range(fdp.ConsumeIntInRange(1, 4)):
                self.append()
        elif choice == 1:
            self.generation += 1
            self.history = MemoryHistory(f"g{self.generation}", max_events=6)
        elif choice == 2:
            count = fdp.ConsumeIntInRange(1, 5)
            batch, self.in_flight = self.in_flight[:count], self.in_flight[count:]
            self.sent += batch
            if len(batch) == 1 and fdp.ConsumeBool():
                event = batch[0]
                before = (self.follower.state, self.follower.last)
                if self.follower.accept(event.position):
                    self.perform([Deliver((event,))])
                    return
                if (self.follower.state, self.follower.last) != before:
                    raise AssertionError("accept() refused but changed the follower")
                actions = self.follower.live(event)
                if actions == [Deliver((event,))]:
                    raise AssertionError("accept() refused a deliverable event")
                self.perform(actions)
            else:
                self.perform(self.follower.live_many(batch))
        elif choice == 3 and self.sent:
            self.perform(self.follower.live(fdp.PickValueInList(self.sent)))
        elif choice == 4 and self.in_flight:
            self.in_flight = self.in_flight[fdp.ConsumeIntInRange(1, 5) :]
            self.perform(self.follower.overflow())
        elif choice == 5 and self.read is not None:
            read, self.read = self.read, None
            if read.after is None:
                self.answer = Replay((), self.history.head("t"))
            else:
                self.answer = self.history.read("t", read.after, read.limit)
            if self.cursor is None and isinstance(self.answer, Replay):
                first = self.answer.events[0].position if self.answer.events else None
                self.cursor = (
                    self.answer.cursor if first is None else Position(first.epoch, first.offset - 1)
                )
        elif choice == 6 and self.answer is not None:
            answer, self.answer = self.answer, None
            self.from_history = True
            self.perform(self.follower.history(answer))
            self.from_history = False

    def settled(self) -> None:
        # Deliver what is in flight and answer every read: the follower ends at the head.
        for _ in range(1000):
            if self.in_flight:
                batch, self.in_flight = self.in_flight, []
                self.perform(self.follower.live_many(batch))
            elif self.read is not None:
                read, self.read = self.read, None
                after = read.after
                self.answer = (
                    Replay((), self.history.head("t"))
                    if after is None
                    else self.history.read("t", after, read.limit)
                )
                if self.cursor is None and isinstance(self.answer, Replay):
                    first = self.answer.events[0].position if self.answer.events else None
                    self.cursor = (
                        self.answer.cursor
                        if first is None
                        else Position(first.epoch, first.offset - 1)
                    )
            elif self.answer is not None:
                answer, self.answer = self.answer, None
                self.from_history = True
                self.perform(self.follower.history(answer))
                self.from_history = False
            else:
                break
        else:
            raise AssertionError("the follower never settles")
        if self.follower.state is not FollowState.LIVE:
            raise AssertionError(f"settled but {self.follower!r}")
        head = self.history.head("t")
        if head.offset > 0 and self.follower.last != head:
            raise AssertionError(f"settled at {self.follower.last}, the head is {head}")


def _position(fdp: atheris.FuzzedDataProvider) -> Position:
    return Position(fdp.PickValueInList(_EPOCHS), fdp.PickValueInList(_OFFSETS))


def _event(fdp: atheris.FuzzedDataProvider) -> StoredEvent:
    return StoredEvent(_position(fdp), "x")


def hostile(fdp: atheris.FuzzedDataProvider) -> None:
    """Made-up answers and live events: only misuse errors, one read at a time, and
    live events delivered only in sequence."""
    start = fdp.PickValueInList([None, EARLIEST, "junk", "", "a.1", Position("a", 2)])
    follower: Follower[StoredEvent] = Follower(
        start, page_size=fdp.ConsumeIntInRange(1, 3), max_buffered=fdp.ConsumeIntInRange(1, 3)
    )
    reading = False
    for _ in range(fdp.ConsumeIntInRange(0, 48)):
        if fdp.remaining_bytes() == 0:
            break
        choice = fdp.ConsumeIntInRange(0, 6)
        state, last = follower.state, follower.last
        live: Sequence[StoredEvent] = ()
        try:
            if choice == 0:
                actions = follower.begin()
            elif choice == 1:
                events = tuple(_event(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3)))
                answer = Replay(events, _position(fdp), fdp.ConsumeBool())
                actions = follower.history(answer)
            elif choice == 2:
                reason = fdp.PickValueInList(list(ResetReason))
                actions = follower.history(Reset(_position(fdp), reason))
            elif choice == 3:
                live = [_event(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
                actions = follower.live_many(live)
            elif choice == 4:
                actions = follower.overflow()
            elif choice == 5:
                position = _position(fdp)
                accepted = follower.accept(position)
                if accepted and not (
                    state is FollowState.LIVE
                    and last is not None
                    and position == Position(last.epoch, last.offset + 1)
                ):
                    raise AssertionError(f"accepted {position} after {last} ({state})")
                actions = []
            else:
                live = [_event(fdp)]
                actions = follower.live(live[0])
        except LocalProtocolError:
            if choice == 0 and state is FollowState.IDLE:
                raise
            if choice in (1, 2) and state is FollowState.READING:
                raise
            if choice not in (0, 1, 2):
                raise
            if (follower.state, follower.last) != (state, last):
                raise AssertionError("a refused input changed the follower") from None
            continue
        if choice in (1, 2):
            reading = False
        reads = [action for action in actions if isinstance(action, ReadHistory)]
        if len(reads) > 1 or (reads and reading):
            raise AssertionError(f"two reads at once: {actions}")
        if reads:
            reading = True
        if reading != (follower.state is FollowState.READING):
            raise AssertionError(f"reading={reading} but {follower!r} after {actions}")
        if live and state is FollowState.LIVE:
            # Live events were delivered: each exactly the next one after the last.
            expected = last
            for action in actions:
                if not isinstance(action, Deliver):
                    continue
                for event in action.events:
                    assert expected is not None
                    if event.position != Position(expected.epoch, expected.offset + 1):
                        raise AssertionError(f"live {event.position} after {expected}")
                    expected = event.position
        if follower.buffered > follower.max_buffered:
            raise AssertionError(f"{follower.buffered} events buffered")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        hostile(fdp)
        return
    model = Honest(fdp)
    for _ in range(fdp.ConsumeIntInRange(0, 64)):
        if fdp.remaining_bytes() == 0:
            break
        model.step()
    model.settled()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
