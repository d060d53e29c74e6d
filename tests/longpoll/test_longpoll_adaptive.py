import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import LocalProtocolError
from tidings.longpoll import AdaptivePoller


def waits(poller: AdaptivePoller, changes: list[bool], start: float = 0.0) -> list[float]:
    now = start
    result = []
    for changed in changes:
        deadline = poller.record(changed, now)
        result.append(deadline - now)
        now = deadline
    return result


def test_interval_starts_active_and_grows_toward_the_idle_ceiling() -> None:
    poller = AdaptivePoller()
    assert poller.interval == 2.0
    result = waits(poller, [False] * 10)
    assert result[:4] == [2.0, 3.0, 4.5, 6.75]
    assert result[-1] == 30.0
    assert all(a <= b for a, b in itertools.pairwise(result))
    assert max(result) == 30.0


def test_change_snaps_back_to_the_active_interval() -> None:
    poller = AdaptivePoller(active=1.0, idle=8.0, factor=2.0)
    assert waits(poller, [False, False, False, False, True, False, False]) == [
        1.0,
        2.0,
        4.0,
        8.0,
        1.0,
        1.0,
        2.0,
    ]


def test_reset_returns_to_active() -> None:
    poller = AdaptivePoller(active=1.0, idle=8.0, factor=2.0)
    waits(poller, [False] * 5)
    poller.reset()
    assert poller.interval == 1.0


def test_next_deadline_reports_the_last_decision() -> None:
    poller = AdaptivePoller()
    assert poller.next_deadline() is None
    assert poller.record(False, 100.0) == 102.0
    assert poller.next_deadline() == 102.0


def test_jitter_spreads_waits_within_bounds() -> None:
    poller = AdaptivePoller(active=10.0, idle=10.0, jitter=0.2, rng=random.Random(3))
    result = waits(poller, [False] * 200)
    assert all(8.0 <= w < 12.0 for w in result)
    assert len(set(result)) > 150


@given(
    st.lists(st.booleans(), max_size=60),
    st.floats(0.1, 5.0),
    st.floats(5.0, 100.0),
    st.floats(1.0, 3.0),
)
@settings(max_examples=100, deadline=None)
def test_waits_always_stay_between_active_and_idle(
    changes: list[bool], active: float, idle: float, factor: float
) -> None:
    poller = AdaptivePoller(active, idle, factor=factor)
    for changed in changes:
        wait = poller.record(changed, 0.0)  # at now=0 the deadline is the wait, exactly
        assert active <= wait <= idle
        if changed:
            assert wait == active


@pytest.mark.parametrize(
    "kwargs",
    [
        {"active": -1.0},
        {"active": 5.0, "idle": 1.0},
        {"factor": 0.5},
        {"jitter": 0.1},
        {"jitter": 1.0, "rng": random.Random()},
        {"idle": float("inf")},
    ],
)
def test_bad_settings_are_misuse(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        AdaptivePoller(**kwargs)
