import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tidings.cursor import EARLIEST, Position
from tidings.errors import LocalProtocolError
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent


def fill(history: MemoryHistory, topic: str, count: int) -> list[StoredEvent]:
    return [history.append(topic, f"event {i}") for i in range(1, count + 1)]


def replay(result: Replay | Reset) -> Replay:
    assert isinstance(result, Replay), result
    return result


def reset(result: Replay | Reset) -> Reset:
    assert isinstance(result, Reset), result
    return result


def test_append_assigns_consecutive_positions_from_one() -> None:
    history = MemoryHistory("ep")
    events = fill(history, "t", 3)
    assert [e.position.offset for e in events] == [1, 2, 3]
    assert len({e.position.epoch for e in events}) == 1
    assert history.head("t") == events[-1].position


def test_head_of_empty_topic_has_offset_zero() -> None:
    history = MemoryHistory("ep")
    assert history.head("t").offset == 0


def test_read_after_position_returns_later_events_in_order() -> None:
    history = MemoryHistory("ep")
    events = fill(history, "t", 5)
    result = replay(history.read("t", events[1].position))
    assert result.events == tuple(events[2:])
    assert result.cursor == events[-1].position
    assert not result.more


def test_read_accepts_the_wire_form() -> None:
    history = MemoryHistory("ep")
    events = fill(history, "t", 5)
    assert replay(history.read("t", str(events[1].position))).events == tuple(events[2:])


def test_read_at_head_is_empty_and_keeps_cursor() -> None:
    history = MemoryHistory("ep")
    fill(history, "t", 2)
    head = history.head("t")
    result = replay(history.read("t", head))
    assert result.events == ()
    assert result.cursor == head


def test_head_then_read_gives_only_later_events() -> None:
    history = MemoryHistory("ep")
    fill(history, "t", 2)
    head = history.head("t")
    new = history.append("t", "live")
    assert replay(history.read("t", head)).events == (new,)


def test_limit_cuts_and_reports_more() -> None:
    history = MemoryHistory("ep")
    events = fill(history, "t", 10)
    first = replay(history.read("t", EARLIEST, limit=4))
    assert first.events == tuple(events[:4])
    assert first.more
    second = replay(history.read("t", first.cursor, limit=100))
    assert second.events == tuple(events[4:])
    assert not second.more


def test_limit_must_be_positive() -> None:
    history = MemoryHistory("ep")
    with pytest.raises(LocalProtocolError):
        history.read("t", EARLIEST, limit=0)


def test_earliest_reads_all_retained() -> None:
    history = MemoryHistory("ep", max_events=3)
    events = fill(history, "t", 5)
    result = replay(history.read("t", EARLIEST))
    assert result.events == tuple(events[2:])


def test_earliest_on_empty_topic_gives_head_cursor() -> None:
    history = MemoryHistory("ep")
    result = replay(history.read("t", EARLIEST))
    assert result.events == ()
    assert result.cursor == history.head("t")


def test_malformed_cursor_resets_to_head() -> None:
    history = MemoryHistory("ep")
    fill(history, "t", 3)
    result = reset(history.read("t", "garbage\x00"))
    assert result.reason is ResetReason.MALFORMED
    assert result.cursor == history.head("t")  # names no place: live from now


def test_other_epoch_resets_before_the_earliest_retained_event() -> None:
    # A restart or a dropped topic: every event still retained follows the reset.
    history = MemoryHistory("ep", max_events=2)
    events = fill(history, "t", 3)
    result = reset(history.read("t", Position("other", 1)))
    assert result.reason is ResetReason.UNKNOWN_EPOCH
    assert result.cursor == Position(events[0].position.epoch, 1)
    assert replay(history.read("t", result.cursor)).events == tuple(events[1:])


def test_position_ahead_of_head_resets() -> None:
    history = MemoryHistory("ep")
    fill(history, "t", 3)
    head = history.head("t")
    result = reset(history.read("t", Position(head.epoch, 4)))
    assert result.reason is ResetReason.UNKNOWN_POSITION
    assert result.cursor == head


def test_evicted_position_resets_but_last_evicted_neighbour_does_not() -> None:
    history = MemoryHistory("ep", max_events=3)
    events = fill(history, "t", 6)  # keeps 4, 5, 6
    assert reset(history.read("t", events[1].position)).reason is ResetReason.EVICTED
    # After event 3 the next wanted is 4, which is retained: no gap, no reset.
    assert replay(history.read("t", events[2].position)).events == tuple(events[3:])


def test_byte_bound_evicts_oldest() -> None:
    history = MemoryHistory("ep", max_bytes=2000, max_event_size=500)
    for i in range(100):
        history.append("t", "x" * 400 + str(i))
    count, nbytes = history.stats("t")
    assert nbytes <= 2000
    assert count == 4
    assert replay(history.read("t", EARLIEST)).events[-1].data.endswith("99")


def test_non_ascii_payload_is_charged_in_utf8_bytes() -> None:
    history = MemoryHistory("ep", max_bytes=1000, max_event_size=900)
    history.append("t", "\u00e9" * 400)  # 800 bytes
    with pytest.raises(LocalProtocolError):
        history.append("t", "\u00e9" * 451)  # 902 bytes


def test_oversized_event_is_refused_with_413_hint() -> None:
    history = MemoryHistory("ep", max_event_size=10)
    with pytest.raises(LocalProtocolError) as info:
        history.append("t", "x" * 11)
    assert info.value.error_status_hint == 413
    assert history.head("t").offset == 0


def test_topics_are_independent() -> None:
    history = MemoryHistory("ep")
    a = history.append("a", "1")
    b = history.append("b", "1")
    assert a.position.epoch != b.position.epoch
    assert replay(history.read("a", EARLIEST)).events == (a,)
    assert reset(history.read("b", a.position)).reason is ResetReason.UNKNOWN_EPOCH


def test_dropped_topic_comes_back_in_a_new_epoch() -> None:
    history = MemoryHistory("ep", max_topics=2)
    old = history.append("a", "1")
    history.append("b", "1")
    history.append("c", "1")  # drops "a", the least recently used
    assert "a" not in history
    assert len(history) == 2
    new = history.append("a", "2")
    assert new.position.epoch != old.position.epoch
    assert reset(history.read("a", old.position)).reason is ResetReason.UNKNOWN_EPOCH


def test_recently_used_topic_is_kept() -> None:
    history = MemoryHistory("ep", max_topics=2)
    history.append("a", "1")
    history.append("b", "1")
    history.head("a")  # touch
    history.append("c", "1")
    assert "a" in history
    assert "b" not in history


def test_reading_unknown_topics_holds_nothing_and_drops_no_real_topic() -> None:
    history = MemoryHistory("ep", max_topics=3)
    [old, _] = fill(history, "real", 2)
    for n in range(1000):
        history.head(f"junk{n}")
        history.read(f"junk{n}", EARLIEST)
        history.read(f"junk{n}", "ep-1.5")
        history.read(f"junk{n}", "not a cursor")
    assert len(history) == 1
    assert "junk0" not in history
    assert [e.data for e in replay(history.read("real", old.position)).events] == ["event 2"]


def test_the_head_of_a_topic_not_stored_yet_is_offset_zero_of_its_future_epoch() -> None:
    history = MemoryHistory("ep")
    fresh = history.head("t")
    assert fresh.offset == 0
    assert history.head("u").epoch != fresh.epoch  # each topic its own epoch
    assert replay(history.read("t", fresh)) == Replay((), fresh)
    assert replay(history.read("t", EARLIEST)).cursor == fresh
    events = fill(history, "t", 3)
    # The first event is the next one after "nothing yet", in the same epoch.
    assert events[0].position == fresh.next()
    assert replay(history.read("t", fresh)).events == tuple(events)
    assert replay(history.read("t", fresh.format())).events == tuple(events)
    assert "t" not in MemoryHistory("ep")  # reading created nothing


def test_unusable_positions_in_an_unknown_topic_reset_to_a_fresh_head() -> None:
    history = MemoryHistory("ep")
    fresh = history.head("t")
    assert reset(history.read("t", "garbage")) == Reset(fresh, ResetReason.MALFORMED)
    assert reset(history.read("t", "other.3")) == Reset(fresh, ResetReason.UNKNOWN_EPOCH)
    assert "t" not in history
    ahead = Position(fresh.epoch, 1)
    assert reset(history.read("t", ahead)) == Reset(fresh, ResetReason.UNKNOWN_POSITION)


def test_a_fresh_position_resets_once_a_topic_was_dropped_since() -> None:
    # The topic might have lived and died in between: its events are unknowable.
    history = MemoryHistory("ep", max_topics=1)
    fresh = history.head("t")
    history.append("a", "1")
    history.append("b", "1")  # drops "a"
    history.append("t", "1")  # drops "b"
    result = reset(history.read("t", fresh))
    assert result.reason is ResetReason.UNKNOWN_EPOCH
    assert result.cursor == Position(history.head("t").epoch, 0)
    assert history.head("nothing").epoch != fresh.epoch


def test_the_append_that_creates_a_topic_and_drops_another_keeps_the_promised_epoch() -> None:
    history = MemoryHistory("ep", max_topics=1)
    history.append("a", "1")
    fresh = history.head("t")
    first = history.append("t", "1")  # drops "a": "t" did not live and die meanwhile
    assert first.position == fresh.next()
    assert replay(history.read("t", fresh)).events == (first,)


def test_a_fresh_position_resets_when_the_topic_already_lost_its_first_event() -> None:
    history = MemoryHistory("ep", max_events=2)
    fresh = history.head("t")
    fill(history, "t", 3)
    assert reset(history.read("t", fresh)).reason is ResetReason.EVICTED


def test_large_ring_stays_compact() -> None:
    history = MemoryHistory("ep", max_events=10)
    for i in range(10_000):
        history.append("t", str(i))
    events = replay(history.read("t", EARLIEST)).events
    assert [e.data for e in events] == [str(i) for i in range(9990, 10_000)]
    assert history.stats("t")[0] == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_events": 0},
        {"max_topics": 0},
        {"max_event_size": 0},
        {"max_bytes": 10, "max_event_size": 100},
    ],
)
def test_invalid_limits_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        MemoryHistory("ep", **kwargs)


def test_invalid_epoch_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        MemoryHistory("bad epoch")
    with pytest.raises(LocalProtocolError):
        MemoryHistory("a" * 60)


class HistoryMachine(RuleBasedStateMachine):
    """Readers never see a duplicate or a gap unless they were told to reset."""

    @initialize(
        max_events=st.integers(1, 8),
        max_topics=st.integers(1, 3),
        max_total_bytes=st.sampled_from([600, 1500, 100_000]),
    )
    def setup(self, max_events: int, max_topics: int, max_total_bytes: int) -> None:
        self.history = MemoryHistory(
            "ep",
            max_events=max_events,
            max_bytes=4096,
            max_event_size=512,
            max_topics=max_topics,
            max_total_bytes=max_total_bytes,
        )
        self.published: dict[str, list[StoredEvent]] = {}
        # reader -> (topic, cursor, events seen since its last reset)
        self.readers: list[tuple[str, Position | str, list[StoredEvent]]] = []

    @rule(topic=st.sampled_from("abc"), size=st.integers(0, 300))
    def append(self, topic: str, size: int) -> None:
        event = self.history.append(topic, "x" * size)
        self.published.setdefault(topic, []).append(event)

    @rule(topic=st.sampled_from("abc"), earliest=st.booleans())
    def new_reader(self, topic: str, earliest: bool) -> None:
        cursor: Position | str = EARLIEST if earliest else self.history.head(topic)
        self.readers.append((topic, cursor, []))

    @precondition(lambda self: self.readers)
    @rule(data=st.data(), limit=st.integers(1, 5))
    def read(self, data: st.DataObject, limit: int) -> None:
        index = data.draw(st.integers(0, len(self.readers) - 1))
        topic, cursor, seen = self.readers[index]
        result = self.history.read(topic, cursor, limit=limit)
        if isinstance(result, Reset):
            if result.reason is not ResetReason.MALFORMED:
                # Every event still retained after the loss follows the reset.
                after = replay(self.history.read(topic, result.cursor, limit=1000))
                retained = [
                    e
                    for e in self.published.get(topic, [])
                    if e.position.epoch == after.cursor.epoch
                ]
                assert list(after.events) == retained[len(retained) - len(after.events) :]
            self.readers[index] = (topic, result.cursor, [])
            return
        if result.events:
            first = result.events[0].position
            if isinstance(cursor, Position):
                assert first.epoch == cursor.epoch, "another epoch without a reset"
                assert first.offset == cursor.offset + 1, "gap or duplicate without reset"
            positions = [e.position.offset for e in result.events]
            assert positions == list(range(positions[0], positions[0] + len(positions)))
            # Every delivered event is one that was really published, unchanged.
            for event in result.events:
                assert event in self.published.get(topic, [])
        self.readers[index] = (topic, result.cursor, seen + list(result.events))

    @invariant()
    def bounded(self) -> None:
        total = 0
        for topic in "abc":
            count, nbytes = self.history.stats(topic)
            assert count <= self.history.max_events
            assert nbytes <= self.history.max_bytes
            total += nbytes
        assert len(self.history) <= self.history.max_topics
        assert self.history.total_bytes == total <= self.history.max_total_bytes


TestHistoryMachine = HistoryMachine.TestCase
TestHistoryMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@given(st.lists(st.integers(0, 40), max_size=60), st.integers(1, 10))
def test_reading_in_pages_yields_every_retained_event_once(sizes: list[int], limit: int) -> None:
    history = MemoryHistory("ep", max_events=20)
    for size in sizes:
        history.append("t", "y" * size)
    cursor: Position | str = EARLIEST
    got: list[StoredEvent] = []
    while True:
        result = replay(history.read("t", cursor, limit=limit))
        got.extend(result.events)
        cursor = result.cursor
        if not result.more:
            break
    assert [e.position.offset for e in got] == list(range(max(1, len(sizes) - 19), len(sizes) + 1))


def test_the_total_budget_evicts_the_least_recently_used_topics_first() -> None:
    # Each event of 100 payload bytes is charged 164: three fit in 500.
    history = MemoryHistory("ep", max_event_size=100, max_total_bytes=500)
    old = history.append("old", "o" * 100)
    kept = history.append("kept", "k" * 100)
    history.read("kept", EARLIEST)  # reading counts as use
    history.append("new", "x" * 100)
    history.append("new", "y" * 100)  # over budget: "old" goes first, as a whole
    assert "old" not in history
    assert history.total_bytes <= 500
    assert reset(history.read("old", old.position)).reason is ResetReason.UNKNOWN_EPOCH
    # "kept" and the topic just written to hold what still fits.
    assert replay(history.read("kept", EARLIEST)).events == (kept,)
    assert [e.data[0] for e in replay(history.read("new", EARLIEST)).events] == ["x", "y"]
    history.append("new", "z" * 100)  # only busy topics left: the oldest events go
    assert history.total_bytes <= 500
    assert "kept" not in history
    assert [e.data[0] for e in replay(history.read("new", EARLIEST)).events] == ["x", "y", "z"]
    history.append("new", "w" * 100)
    result = history.read("new", history.head("new").epoch + ".0")
    assert reset(result).reason is ResetReason.EVICTED
    assert history.total_bytes <= 500


def test_the_total_budget_must_hold_one_event() -> None:
    with pytest.raises(LocalProtocolError):
        MemoryHistory("ep", max_event_size=1000, max_total_bytes=100)


# -- reads across the chunks the events are stored in ----------------------------------


def test_reads_across_chunk_boundaries_answer_like_a_plain_list() -> None:
    # Events are kept in chunks of 256; small histories never leave the first one.
    # Here: several chunks, the oldest evicted part-way into a chunk and then past
    # whole chunks, and reads of every length starting at every kind of place.
    history = MemoryHistory("e", max_events=700)
    kept: list[tuple[int, str, str | None]] = []
    for offset in range(1, 1400):
        event = "tick" if offset % 3 == 0 else None
        stored = history.append("t", f"d{offset}", event)
        assert stored.position == Position(history.head("t").epoch, offset)
        kept.append((offset, f"d{offset}", event))
        kept = kept[-700:]
        if offset in (300, 520, 777, 1024, 1399):
            epoch = stored.position.epoch
            first = kept[0][0]
            for after in (first - 1, first, first + 1, 511, 512, 513, 767, 768, offset - 1):
                if not first - 1 <= after <= offset:
                    continue
                for limit in (1, 2, 255, 256, 257, 600, 1000):
                    answer = history.read("t", Position(epoch, after), limit)
                    assert isinstance(answer, Replay)
                    expected = [item for item in kept if item[0] > after][:limit]
                    assert [(e.position.offset, e.data, e.event) for e in answer.events] == (
                        expected
                    )
                    assert answer.more == (after + len(expected) < offset)


def test_each_event_is_charged_its_utf8_size_its_type_and_the_overhead() -> None:
    history = MemoryHistory("e")
    history.append("t", "abc")
    assert history.total_bytes == 64 + 3
    history.append("t", "\u00e9\u20ac", "tick")  # 2 + 3 bytes of UTF-8, 4 of type
    assert history.total_bytes == 64 + 3 + 64 + 5 + 4
    history.append("u", "", "")
    assert history.total_bytes == 64 + 3 + 64 + 5 + 4 + 64


def test_max_bytes_evicts_exactly_what_does_not_fit() -> None:
    # Room for exactly two events of 64 + 10 bytes: the third evicts the first.
    history = MemoryHistory("e", max_bytes=2 * 74, max_event_size=10)
    for n in range(3):
        history.append("t", f"{n:010d}")
    answer = history.read("t", EARLIEST, 10)
    assert isinstance(answer, Replay)
    assert [e.data for e in answer.events] == ["0000000001", "0000000002"]
