"""The bounded memory of recent idempotency keys (WebSocket ``msg_id``, HTTP
``Idempotency-Key``)."""

import pytest

from tidings.cursor import Position
from tidings.dedup import PublishDeduplicator, bind_key
from tidings.errors import LocalProtocolError


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


def test_dedup_limits_at_their_bounds_are_accepted() -> None:
    dedup = PublishDeduplicator(max_entries=1, max_age=0.5)
    dedup.remember("t", "a", Position("e", 1), 0.0)
    dedup.remember("t", "b", Position("e", 2), 0.0)
    assert dedup.lookup("t", "a", 0.0) is None
    assert dedup.lookup("t", "b", 0.4) == Position("e", 2)
    assert dedup.lookup("t", "b", 0.5) is None
    with pytest.raises(LocalProtocolError):
        PublishDeduplicator(max_age=0)


def test_remembering_a_key_again_makes_it_the_newest() -> None:
    dedup = PublishDeduplicator(max_entries=2)
    dedup.remember("t", "a", Position("e", 1), 0.0)
    dedup.remember("t", "b", Position("e", 2), 1.0)
    dedup.remember("t", "a", Position("e", 3), 2.0)
    dedup.remember("t", "c", Position("e", 4), 3.0)  # one too many: the oldest goes
    assert dedup.lookup("t", "b", 3.0) is None
    assert dedup.lookup("t", "a", 3.0) == Position("e", 3)
    assert dedup.lookup("t", "c", 3.0) == Position("e", 4)


def test_a_bound_key_matches_only_the_same_key_data_and_type() -> None:
    base = bind_key("k", "data", None)
    assert bind_key("k", "data", None) == base
    assert base.startswith("k#")
    others = {
        bind_key("k2", "data", None),
        bind_key("k", "data2", None),
        bind_key("k", "data", "message"),
        bind_key("k", "", "data"),  # no ambiguity between the type and the data
        bind_key("k", "data\x00", None),
    }
    assert base not in others
    assert len(others) == 5
