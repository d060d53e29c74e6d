import math
import random
import statistics

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.backoff import (
    DEFAULT_BASE,
    DEFAULT_CAP,
    DEFAULT_SPREAD,
    Backoff,
    BackoffPolicy,
    DecorrelatedJitter,
    EqualJitter,
    FullJitter,
    Loss,
    NoJitter,
    capped_exponential,
    default_backoff,
)
from tidings.errors import LocalProtocolError

DRAWS = 10_000
SATURATED = 50  # 0.5 * 2**50 is far beyond the 30 s cap


class _Fixed:
    """An rng that always returns the same value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def all_policies() -> list[BackoffPolicy]:
    return [FullJitter(), EqualJitter(), DecorrelatedJitter(), NoJitter()]


# -- the capped exponential --------------------------------------------------------------


def test_capped_exponential_doubles_from_base_until_the_cap() -> None:
    values = [capped_exponential(n, 0.5, 2.0, 30.0) for n in range(9)]
    assert values == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_capped_exponential_with_factor_near_one_saturates_without_overflow() -> None:
    assert capped_exponential(10**400, 0.5, 1.0000001, 30.0) == 30.0
    assert capped_exponential(10_000, 0.5, 1.0000001, 30.0) == pytest.approx(0.5005, rel=1e-4)


def test_capped_exponential_with_factor_one_stays_at_base() -> None:
    assert capped_exponential(1000, 2.0, 1.0, 30.0) == 2.0


@pytest.mark.parametrize("attempt", [10_000, 10**100])
@pytest.mark.parametrize("factor", [1.5, 2.0, 10.0, 1e300])
def test_huge_attempt_does_not_overflow(attempt: int, factor: float) -> None:
    assert capped_exponential(attempt, 0.5, factor, 30.0) == 30.0
    rng = random.Random(1)
    for policy in (
        FullJitter(factor=factor),
        EqualJitter(factor=factor),
        NoJitter(factor=factor),
        DecorrelatedJitter(),
    ):
        delay = policy.next(attempt, rng, previous=30.0)
        assert 0 <= delay <= 30.0


# -- full jitter ---------------------------------------------------------------------------


def test_full_jitter_stays_within_zero_and_the_capped_value() -> None:
    rng = random.Random(1234)
    policy = FullJitter()
    for n in range(DRAWS):
        attempt = n % 20
        delay = policy.next(attempt, rng)
        assert 0 <= delay <= min(DEFAULT_CAP, DEFAULT_BASE * 2**attempt)


def test_full_jitter_mean_is_half_the_cap_at_saturation() -> None:
    rng = random.Random(5678)
    policy = FullJitter()
    delays = [policy.next(SATURATED, rng) for _ in range(DRAWS)]
    assert all(0 <= d <= DEFAULT_CAP for d in delays)
    assert statistics.fmean(delays) == pytest.approx(DEFAULT_CAP / 2, rel=0.05)


def test_full_jitter_is_applied_after_the_cap_so_saturated_delays_stay_spread() -> None:
    # Capping after jittering would put (almost) every saturated delay at the cap.
    rng = random.Random(42)
    delays = [FullJitter().next(SATURATED, rng) for _ in range(DRAWS)]
    at_cap = sum(d >= DEFAULT_CAP * 0.99 for d in delays)
    assert at_cap < DRAWS * 0.02
    # Roughly uniform: each tenth of [0, cap] holds about a tenth of the draws.
    deciles = [0] * 10
    for d in delays:
        deciles[min(9, int(d / DEFAULT_CAP * 10))] += 1
    assert all(800 <= count <= 1200 for count in deciles)


# -- equal jitter --------------------------------------------------------------------------


def test_equal_jitter_is_between_half_and_all_of_the_capped_value() -> None:
    rng = random.Random(99)
    policy = EqualJitter()
    for n in range(DRAWS):
        attempt = n % 20
        d = min(DEFAULT_CAP, DEFAULT_BASE * 2**attempt)
        assert d / 2 <= policy.next(attempt, rng) <= d


def test_equal_jitter_mean_is_three_quarters_of_the_cap_at_saturation() -> None:
    rng = random.Random(7)
    delays = [EqualJitter().next(SATURATED, rng) for _ in range(DRAWS)]
    assert statistics.fmean(delays) == pytest.approx(DEFAULT_CAP * 0.75, rel=0.05)


# -- decorrelated jitter -------------------------------------------------------------------


def test_decorrelated_jitter_starts_between_base_and_three_bases() -> None:
    rng = random.Random(3)
    policy = DecorrelatedJitter(base=1.0, cap=100.0)
    for _ in range(DRAWS):
        assert 1.0 <= policy.next(0, rng) <= 3.0


def test_decorrelated_jitter_is_between_base_and_three_times_previous_capped() -> None:
    rng = random.Random(11)
    policy = DecorrelatedJitter(base=0.5, cap=30.0)
    previous = None
    for _ in range(DRAWS):
        delay = policy.next(0, rng, previous=previous)
        upper = min(30.0, 3 * (0.5 if previous is None else previous))
        assert 0.5 <= delay <= upper
        previous = delay


def test_decorrelated_jitter_clamps_a_previous_beyond_the_cap() -> None:
    # The outer min(cap, ...) keeps any result within [base, cap] anyway; the clamp of
    # previous is what keeps the *range* U(base, 3 * cap): a previous of 1e12 draws
    # exactly like a previous of cap, not like U(1, 3e12) (which is the cap nearly
    # always, so that clients stay in step at the cap).
    policy = DecorrelatedJitter(base=1.0, cap=10.0)
    for draw in (0.0, 0.1, 0.25, 0.3):
        at_cap = policy.next(0, _Fixed(draw), previous=10.0)
        assert policy.next(0, _Fixed(draw), previous=1e12) == at_cap
        assert at_cap == pytest.approx(1.0 + 29.0 * draw)
    rng = random.Random(5)
    delays = [policy.next(0, rng, previous=1e12) for _ in range(1000)]
    assert all(1.0 <= delay <= 10.0 for delay in delays)
    # U(1, 30) capped at 10: about 9/29 of the draws fall below the cap.
    assert 0.25 < sum(delay < 10.0 for delay in delays) / len(delays) < 0.37


def test_decorrelated_jitter_clamps_a_previous_below_the_base() -> None:
    policy = DecorrelatedJitter(base=2.0, cap=100.0)
    for draw in (0.0, 0.5, 0.99):
        assert policy.next(0, _Fixed(draw), previous=0.0) == pytest.approx(2.0 + 4.0 * draw)


# -- no jitter -----------------------------------------------------------------------------


def test_no_jitter_is_exactly_the_capped_exponential() -> None:
    rng = _Fixed(0.3)
    assert [NoJitter().next(n, rng) for n in (0, 1, 6, 100)] == [0.5, 1.0, 30.0, 30.0]


# -- the floor ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", all_policies(), ids=repr)
def test_floor_is_a_lower_bound(policy: BackoffPolicy) -> None:
    rng = random.Random(8)
    for n in range(1000):
        assert policy.next(n % 10, rng, floor=3.0) >= 3.0


@pytest.mark.parametrize("policy", all_policies(), ids=repr)
def test_floor_above_the_cap_wins_exactly(policy: BackoffPolicy) -> None:
    assert policy.next(SATURATED, random.Random(1), floor=120.0) == 120.0


@pytest.mark.parametrize("policy", all_policies(), ids=repr)
def test_floor_below_the_jittered_delay_changes_nothing(policy: BackoffPolicy) -> None:
    for seed in range(50):
        unfloored = policy.next(SATURATED, random.Random(seed))
        floored = policy.next(SATURATED, random.Random(seed), floor=0.1)
        assert floored == max(0.1, unfloored)


@pytest.mark.parametrize("floor", [-1.0, math.nan, math.inf])
def test_invalid_floor_is_refused(floor: float) -> None:
    with pytest.raises(LocalProtocolError):
        FullJitter().next(0, random.Random(), floor=floor)
    with pytest.raises(LocalProtocolError):
        Backoff().disconnected(0.0, random.Random(), floor=floor)


# -- argument validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "factor", "cap"),
    [
        (0.0, 2.0, 30.0),
        (-1.0, 2.0, 30.0),
        (0.5, 0.9, 30.0),
        (0.5, 2.0, 0.4),
        (math.nan, 2.0, 30.0),
        (0.5, math.inf, 30.0),
        (0.5, 2.0, math.inf),
    ],
)
def test_invalid_exponential_parameters_are_refused(base: float, factor: float, cap: float) -> None:
    for policy_type in (FullJitter, EqualJitter, NoJitter):
        with pytest.raises(LocalProtocolError):
            policy_type(base=base, factor=factor, cap=cap)


@pytest.mark.parametrize(
    ("base", "cap", "multiplier"),
    [(0.0, 30.0, 3.0), (1.0, 0.5, 3.0), (1.0, 30.0, 0.5), (1.0, 30.0, math.nan)],
)
def test_invalid_decorrelated_parameters_are_refused(
    base: float, cap: float, multiplier: float
) -> None:
    with pytest.raises(LocalProtocolError):
        DecorrelatedJitter(base=base, cap=cap, multiplier=multiplier)


@pytest.mark.parametrize("attempt", [-1, True, 1.5])
def test_invalid_attempt_is_refused(attempt: int) -> None:
    for policy in all_policies():
        with pytest.raises(LocalProtocolError):
            policy.next(attempt, random.Random())


@pytest.mark.parametrize("stable_period", [-1.0, math.nan, math.inf])
def test_invalid_tracker_parameters_are_refused(stable_period: float) -> None:
    with pytest.raises(LocalProtocolError):
        Backoff(stable_period=stable_period)


# -- the tracker and the stable-period rule ---------------------------------------------------


def test_failed_attempts_grow_the_delay_bound() -> None:
    backoff = Backoff(NoJitter())
    rng = random.Random(0)
    delays = [backoff.disconnected(float(t), rng) for t in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.attempt == 8


def test_accept_then_close_does_not_reset_the_attempt_counter() -> None:
    backoff = Backoff(NoJitter())
    rng = random.Random(0)
    now = 0.0
    for expected in [0.5, 1.0, 2.0, 4.0, 8.0]:
        backoff.connected(now)
        now += 0.01  # the server closes right after accepting
        delay = backoff.disconnected(now, rng)
        assert delay == expected
        now += delay
    assert backoff.attempt == 5


def test_accept_then_close_server_cannot_cause_a_hot_loop() -> None:
    backoff = Backoff()
    rng = random.Random(2024)
    now, connections = 0.0, 0
    while now < 300.0:
        connections += 1
        backoff.connected(now)
        now += 0.001
        now += backoff.disconnected(now, rng)
    # Saturated full jitter waits 15 s on average: about 20 connections in 300 s plus
    # the first few short ones.  Resetting on every accept would make it ~1 200.
    assert connections < 60


def test_staying_up_for_the_stable_period_resets_the_attempt_counter() -> None:
    backoff = Backoff(NoJitter())
    rng = random.Random(0)
    for t in range(6):
        backoff.disconnected(float(t), rng)
    assert backoff.attempt == 6
    backoff.connected(100.0)
    assert backoff.disconnected(105.0, rng) == 0.5
    assert backoff.attempt == 1
    assert backoff.connected_at is None


def test_just_short_of_the_stable_period_does_not_reset() -> None:
    backoff = Backoff(NoJitter())
    rng = random.Random(0)
    for t in range(3):
        backoff.disconnected(float(t), rng)
    backoff.connected(100.0)
    assert backoff.disconnected(104.999, rng) == 4.0
    assert backoff.attempt == 4


def test_stable_period_is_configurable() -> None:
    backoff = Backoff(NoJitter(), stable_period=60.0)
    rng = random.Random(0)
    backoff.disconnected(0.0, rng)
    backoff.connected(1.0)
    assert backoff.disconnected(50.0, rng) == 1.0
    backoff.connected(60.0)
    assert backoff.disconnected(120.0, rng) == 0.5


def test_clock_going_backwards_does_not_reset() -> None:
    backoff = Backoff(NoJitter())
    rng = random.Random(0)
    backoff.disconnected(0.0, rng)
    backoff.connected(100.0)
    assert backoff.disconnected(50.0, rng) == 1.0


def test_reset_forgets_the_failures() -> None:
    backoff = Backoff(DecorrelatedJitter())
    rng = random.Random(0)
    backoff.disconnected(0.0, rng)
    assert backoff.previous is not None
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.previous is None


def test_tracker_feeds_previous_delay_to_decorrelated_jitter() -> None:
    backoff = Backoff(DecorrelatedJitter(base=1.0, cap=1000.0))
    rng = random.Random(77)
    previous = 1.0
    for t in range(200):
        delay = backoff.disconnected(float(t), rng)
        assert 1.0 <= delay <= min(1000.0, 3 * previous)
        assert backoff.previous == delay
        previous = delay
    # The bound above holds with or without previous; the chain itself: with a fixed
    # draw each range starts from the delay before, U(1, 3 * previous).
    backoff = Backoff(DecorrelatedJitter(base=1.0, cap=1000.0))
    delays = [backoff.disconnected(float(t), _Fixed(0.5)) for t in range(3)]
    assert delays == [2.0, 3.5, 5.75]


def test_a_fresh_tracker_has_no_progress_and_no_loss() -> None:
    backoff = Backoff(FullJitter())
    assert backoff.progressed is False
    assert backoff.last_loss is None
    assert backoff.previous is None


@pytest.mark.parametrize("factor", [True, False])
def test_a_bool_is_not_a_factor(factor: bool) -> None:
    with pytest.raises(LocalProtocolError):
        FullJitter(factor=factor)


def test_tracker_puts_the_floor_under_the_delay() -> None:
    backoff = Backoff()
    rng = random.Random(3)
    for t in range(100):
        assert backoff.disconnected(float(t), rng, floor=2.5) >= 2.5


def test_the_floor_goes_under_the_jitter_so_a_crowd_given_one_floor_stays_spread() -> None:
    rng = random.Random(9)
    delays = [
        Backoff(FullJitter(base=1.0)).disconnected(0.0, rng, floor=60.0) for _ in range(DRAWS)
    ]
    assert all(60.0 <= d < 61.0 for d in delays)
    assert statistics.fmean(delays) == pytest.approx(60.5, rel=0.01)
    assert len(set(delays)) == DRAWS


def test_the_policy_state_stays_unfloored() -> None:
    backoff = Backoff(NoJitter())
    assert backoff.disconnected(0.0, random.Random(1), floor=10.0) == 10.5
    assert backoff.previous == 0.5


# -- what the connection achieved: failure, progress, stable --------------------------------


def test_a_failure_grows_the_counter_and_keeps_both_floors() -> None:
    backoff = Backoff(NoJitter())
    backoff.connected(0.0)
    assert backoff.disconnected(1.0, _Fixed(0.5), floor=2.0, standing_floor=3.0) == 3.5
    assert backoff.last_loss is Loss.FAILURE
    backoff.connected(10.0)
    assert backoff.disconnected(11.0, _Fixed(0.5), standing_floor=3.0) == 4.0
    assert backoff.attempt == 2


def test_progress_resets_the_counter_and_waives_the_standing_floor() -> None:
    backoff = Backoff(NoJitter())
    for t in range(5):
        backoff.disconnected(float(t), _Fixed(0.5))
    assert backoff.attempt == 5
    backoff.connected(10.0)
    backoff.progress()
    assert backoff.progressed
    # A productive connection cut after 0.2 s: resume after the first delay, no retry floor.
    assert backoff.disconnected(10.2, _Fixed(0.5), standing_floor=3.0) == 0.5
    assert backoff.last_loss is Loss.PROGRESS
    assert backoff.attempt == 1
    assert not backoff.progressed


def test_progress_keeps_a_floor_that_belongs_to_the_loss_itself() -> None:
    backoff = Backoff(NoJitter())
    backoff.connected(0.0)
    backoff.progress()
    # e.g. WebSocket close 1012 "service restart": at least the restart delay.
    assert backoff.disconnected(0.5, _Fixed(0.5), floor=5.0, standing_floor=3.0) == 5.5


def test_progress_needs_a_connection() -> None:
    backoff = Backoff()
    with pytest.raises(LocalProtocolError):
        backoff.progress()
    backoff.connected(0.0)
    backoff.disconnected(1.0, random.Random())
    with pytest.raises(LocalProtocolError):
        backoff.progress()


def test_progress_is_forgotten_by_the_next_connection() -> None:
    backoff = Backoff(NoJitter())
    backoff.connected(0.0)
    backoff.progress()
    backoff.connected(1.0)  # a new connection (the adapter missed the loss of the old one)
    assert backoff.disconnected(1.5, _Fixed(0.5)) == 0.5
    assert backoff.last_loss is Loss.FAILURE


def test_a_connection_that_delivers_nothing_new_cannot_hot_loop() -> None:
    """Accept, send nothing new, close -- for five minutes: the delays still grow."""
    backoff = Backoff(FullJitter(base=1.0))
    rng = random.Random(5)
    now, connections = 0.0, 0
    while now < 300.0:
        connections += 1
        backoff.connected(now)
        now += 0.01
        now += backoff.disconnected(now, rng, standing_floor=0.0)
    assert connections < 60


def test_a_stable_connection_switches_to_the_spread_policy_until_the_next_reset() -> None:
    backoff = Backoff(NoJitter(base=1.0), spread_policy=NoJitter(base=5.0))
    backoff.connected(0.0)
    assert backoff.disconnected(60.0, _Fixed(0.0), standing_floor=3.0) == 8.0
    assert backoff.last_loss is Loss.STABLE
    # The server is still down: the spread policy keeps pacing the failures.
    assert backoff.disconnected(68.0, _Fixed(0.0)) == 10.0
    assert backoff.disconnected(78.0, _Fixed(0.0)) == 20.0
    # A productive connection goes back to the ordinary policy.
    backoff.connected(100.0)
    backoff.progress()
    assert backoff.disconnected(101.0, _Fixed(0.0)) == 1.0
    assert backoff.disconnected(102.0, _Fixed(0.0)) == 2.0


def test_default_backoff_windows() -> None:
    top = _Fixed(0.999999)
    failing = default_backoff()
    assert [round(failing.disconnected(0.0, top), 3) for _ in range(7)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0
    ]  # fmt: skip
    productive = default_backoff()
    productive.connected(0.0)
    productive.progress()
    assert round(productive.disconnected(0.3, top, standing_floor=3.0), 3) == 1.0
    stable = default_backoff()
    stable.connected(0.0)
    assert [round(stable.disconnected(10.0, top, standing_floor=3.0), 3)] + [
        round(stable.disconnected(10.0, top), 3) for _ in range(3)
    ] == [3.0 + DEFAULT_SPREAD, 10.0, 20.0, 30.0]


@pytest.mark.parametrize("now", [math.nan, math.inf])
def test_tracker_refuses_non_finite_times(now: float) -> None:
    backoff = Backoff()
    with pytest.raises(LocalProtocolError):
        backoff.connected(now)
    with pytest.raises(LocalProtocolError):
        backoff.disconnected(now, random.Random())


# -- properties -----------------------------------------------------------------------------

policies = st.one_of(
    st.builds(
        lambda cls, base, factor, extra: cls(base=base, factor=factor, cap=base + extra),
        st.sampled_from([FullJitter, EqualJitter, NoJitter]),
        st.floats(1e-3, 100.0),
        st.floats(1.0, 10.0),
        st.floats(0.0, 1000.0),
    ),
    st.builds(
        lambda base, extra, mult: DecorrelatedJitter(base=base, cap=base + extra, multiplier=mult),
        st.floats(1e-3, 100.0),
        st.floats(0.0, 1000.0),
        st.floats(1.0, 10.0),
    ),
)


def _cap(policy: BackoffPolicy) -> float:
    assert isinstance(policy, FullJitter | EqualJitter | NoJitter | DecorrelatedJitter)
    return policy.cap


@settings(max_examples=300)
@given(
    policy=policies,
    attempt=st.integers(0, 10**6),
    seed=st.integers(0, 2**32),
    floor=st.floats(0.0, 1e6),
    previous=st.none() | st.floats(0.0, 1e9),
)
def test_delay_is_finite_and_between_floor_and_max_of_floor_and_cap(
    policy: BackoffPolicy, attempt: int, seed: int, floor: float, previous: float | None
) -> None:
    delay = policy.next(attempt, random.Random(seed), previous=previous, floor=floor)
    assert math.isfinite(delay)
    assert floor <= delay <= max(floor, _cap(policy))


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.floats(0.0, 20.0), st.floats(0.0, 20.0)), max_size=40
    ),
    seed=st.integers(0, 2**32),
)
# Up for 5.0 s by the step, but 4.999999999999993 s by the clock readings
# (``(39.44... + 5.0) - 39.44...``): the tracker only sees the readings, so no reset.
@example(
    steps=[(False, 0.0, 19.446623680497613), (True, 20.0, 19.792831370261773), (True, 5.0, 0.0)],
    seed=0,
)
def test_counter_resets_exactly_when_a_connection_stayed_up_the_stable_period(
    steps: list[tuple[bool, float, float]], seed: int
) -> None:
    backoff = Backoff(NoJitter(), stable_period=5.0)
    rng = random.Random(seed)
    now = 0.0
    for did_connect, up_for, pause in steps:
        before = backoff.attempt
        connected_at = None
        if did_connect:
            connected_at = now
            backoff.connected(now)
            now += up_for
        delay = backoff.disconnected(now, rng)
        # The time up is what the two clock readings say, computed as the tracker
        # does: ``now - connected_at`` may differ from ``up_for`` by a rounding error.
        reset = connected_at is not None and now - connected_at >= 5.0
        expected_attempt = 0 if reset else before
        assert delay == capped_exponential(expected_attempt, DEFAULT_BASE, 2.0, DEFAULT_CAP)
        assert backoff.attempt == expected_attempt + 1
        now += pause
