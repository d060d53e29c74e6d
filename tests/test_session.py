import bisect
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tidings.backoff import Backoff, FullJitter, NoJitter
from tidings.errors import LocalProtocolError
from tidings.retry_after import parse_retry_after
from tidings.session import (
    DEFAULT_RESTART_DELAY,
    TRANSITIONS,
    ClosePeer,
    Connect,
    GiveUp,
    HeartbeatPolicy,
    ReconnectingSession,
    SendPing,
    SessionInput,
    SessionState,
    Wait,
    default_backoff,
)

S = SessionState
I = SessionInput  # noqa: E741


def new_session(seed: int = 0, **kwargs: object) -> ReconnectingSession:
    return ReconnectingSession(random.Random(seed), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------- Retry-After parsing


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (b"0", 0.0),
        (" 5 ", 5.0),
        ("1.5", None),
        ("-1", None),
        ("", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not delta-seconds
        (b"\xff", None),
        ("9" * 17, None),
        ("Sun, 06 Nov 1994 08:49:37 GMT", None),  # a date needs now
    ],
)
def test_parse_retry_after_delta_seconds(value: str | bytes, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


_NOV_6_1994 = 784111777.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ],
)
def test_parse_retry_after_http_date_in_all_three_forms(value: str) -> None:
    assert parse_retry_after(value, wall_time=_NOV_6_1994 - 30) == 30.0
    assert parse_retry_after(value, wall_time=_NOV_6_1994 + 30) == 0.0


@pytest.mark.parametrize(
    "value", ["Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "tomorrow"]
)
def test_parse_retry_after_ignores_invalid_dates(value: str) -> None:
    assert parse_retry_after(value, wall_time=0.0) is None


# ------------------------------------------------------------- state x input walk


def drive(state: SessionState) -> ReconnectingSession:
    """A fresh session in *state*."""
    session = new_session(topics={"a": "e.1", "b": None})
    if state is S.IDLE:
        return session
    if state is S.CLOSED:
        session.stop()
        return session
    session.start(0.0)
    if state is S.CONNECTING:
        return session
    session.connected(0.0)
    if state is S.OPEN:
        return session
    session.closed(1006, by_peer=True, now=1.0)
    assert session.state is S.WAITING
    return session


codes = st.one_of(
    st.none(),
    st.sampled_from([1000, 1001, 1002, 1006, 1008, 1011, 1012, 4401, 4429, 4503]),
    st.integers(1000, 4999),
)
nows = st.floats(0, 1e6, allow_nan=False)
retry_afters = st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False))


def applier(
    data: st.DataObject, event: SessionInput, now: float
) -> Callable[[ReconnectingSession], object]:
    """A call of *event* with arguments drawn from *data*."""
    if event is I.START:
        return lambda s: s.start(now)
    if event is I.CONNECTED:
        return lambda s: s.connected(now)
    if event is I.CLOSED:
        code, by_peer = data.draw(codes), data.draw(st.booleans())
        return lambda s: s.closed(code, "bye", by_peer=by_peer, now=now)
    if event is I.HTTP_FAILURE:
        status, retry_after = data.draw(st.integers(100, 599)), data.draw(retry_afters)
        return lambda s: s.http_failure(status, retry_after, now)
    if event is I.NETWORK_ERROR:
        return lambda s: s.network_error(now, "refused")
    if event is I.MESSAGE:
        topic = data.draw(st.sampled_from(["a", "b"]))
        position = data.draw(st.sampled_from(["e.2", "x.9", ""]))
        return lambda s: s.message(position, topic=topic)
    if event is I.PROGRESS:
        return lambda s: s.progress()
    if event is I.TIMER:
        return lambda s: s.timer(now)
    return lambda s: s.stop()


def test_transition_table_covers_every_state_and_input_once() -> None:
    for state, event in TRANSITIONS:
        assert isinstance(state, SessionState)
        assert isinstance(event, SessionInput)
    # closed is terminal: only stop (idempotent) is allowed there
    assert {e for (s, e) in TRANSITIONS if s is S.CLOSED} == {I.STOP}
    # every state can be left towards closed by stop
    assert all((state, I.STOP) in TRANSITIONS for state in S)
    # every non-terminal state is reachable
    reached = {target for targets in TRANSITIONS.values() for target in targets}
    assert reached >= set(S) - {S.IDLE}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(list(S)), st.sampled_from(list(I)), st.data())
def test_every_state_and_input_follows_the_transition_table(
    state: SessionState, event: SessionInput, data: st.DataObject
) -> None:
    session = drive(state)
    apply = applier(data, event, data.draw(nows))
    targets = TRANSITIONS.get((state, event))
    if targets is None:
        with pytest.raises(LocalProtocolError):
            apply(session)
        assert session.state is state
        return
    action = apply(session)
    assert session.state in targets
    if isinstance(action, Connect):
        assert session.state is S.CONNECTING
        assert action.resume["a"] is not None
    elif isinstance(action, Wait):
        assert session.state is S.WAITING
        assert session.next_deadline() == action.until
        assert action.delay >= 0
    elif isinstance(action, GiveUp):
        assert session.state is S.CLOSED
    else:
        assert action is None
        assert session.state is state or event is I.CONNECTED or event is I.STOP


class SessionWalk(RuleBasedStateMachine):
    """Random walks: invariants hold whatever the adapter feeds in allowed order."""

    def __init__(self) -> None:
        super().__init__()
        self.session = new_session(1, topics=["a", "b"], max_retries=20)
        self.now = 0.0

    @rule(dt=st.floats(0, 100, allow_nan=False), event=st.sampled_from(list(I)), data=st.data())
    def feed(self, dt: float, event: SessionInput, data: st.DataObject) -> None:
        self.now += dt
        before = self.session.state
        apply = applier(data, event, self.now)
        if (before, event) in TRANSITIONS:
            apply(self.session)
            assert self.session.state in TRANSITIONS[before, event]
        else:
            with pytest.raises(LocalProtocolError):
                apply(self.session)
            assert self.session.state is before

    @invariant()
    def deadline_only_while_waiting(self) -> None:
        deadline = self.session.next_deadline()
        assert (deadline is not None) == (self.session.state is S.WAITING)
        if deadline is not None:
            assert deadline >= 0

    @invariant()
    def topics_always_resumable(self) -> None:
        assert set(self.session.positions) == {"a", "b"}


SessionWalk.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_session_random_walks_keep_invariants = SessionWalk.TestCase


# ---------------------------------------------------------------------- behaviour


def test_start_connects_with_the_initial_positions() -> None:
    session = new_session(topics={"a": None, "b": "e.4"})
    action = session.start(0.0)
    assert action == Connect({"a": None, "b": "e.4"}, 0)


def test_messages_move_the_resume_positions_used_by_the_next_connect() -> None:
    session = new_session(topics=["a", "b"])
    session.start(0.0)
    session.connected(0.0)
    session.message("e.1", topic="a")
    session.message("e.2", topic="a")
    session.message("f.7", topic="b")
    wait = session.closed(1006, by_peer=True, now=1.0)
    assert isinstance(wait, Wait)
    assert session.timer(wait.until - 0.001) is None
    action = session.timer(wait.until)
    assert isinstance(action, Connect)
    assert dict(action.resume) == {"a": "e.2", "b": "f.7"}


def test_single_stream_transports_use_the_empty_topic() -> None:
    session = new_session()
    session.start(0.0)
    session.connected(0.0)
    session.message("42")
    assert session.positions == {"": "42"}


def test_track_and_forget_topics_in_any_state() -> None:
    session = new_session()
    session.track("a", "e.3")
    session.start(0.0)
    session.track("b")
    session.forget("a")
    session.forget("missing")
    assert dict(session.positions) == {"b": None}


def test_normal_close_by_server_gives_up_with_the_code() -> None:
    session = drive(S.OPEN)
    action = session.closed(1000, "done", by_peer=True, now=2.0)
    assert isinstance(action, GiveUp)
    assert action.code == 1000
    assert "done" in action.reason
    assert session.state is S.CLOSED
    assert session.next_deadline() is None


def test_auth_refusal_4401_gives_up() -> None:
    action = drive(S.OPEN).closed(4401, by_peer=True, now=2.0)
    assert isinstance(action, GiveUp)


def test_http_4xx_on_connect_gives_up_with_the_status() -> None:
    action = drive(S.CONNECTING).http_failure(403, None, 1.0)
    assert action == GiveUp("HTTP 403 Forbidden", None, 403)


def test_service_restart_waits_at_least_the_restart_delay() -> None:
    session = new_session(restart_delay=5.0)
    session.start(0.0)
    session.connected(0.0)
    action = session.closed(1012, by_peer=True, now=100.0)
    assert isinstance(action, Wait)
    assert action.delay >= 5.0
    assert action.until == 100.0 + action.delay


@pytest.mark.parametrize("status", [429, 503])
def test_http_retry_after_is_honoured(status: int) -> None:
    session = drive(S.CONNECTING)
    action = session.http_failure(status, 42.0, 10.0)
    assert isinstance(action, Wait)
    assert action.delay >= 42.0


def test_server_floor_is_capped_by_max_floor() -> None:
    session = new_session(max_floor=60.0)
    session.start(0.0)
    action = session.http_failure(503, 10**9, 0.0)
    assert isinstance(action, Wait)
    assert 60.0 <= action.delay <= 61.0  # the cap, plus the first jitter window above it


def test_max_retries_gives_up_after_that_many_failed_retries() -> None:
    session = new_session(max_retries=2)
    action: Connect | None = session.start(0.0)
    now = 0.0
    outcomes = []
    for _ in range(3):
        assert isinstance(action, Connect)
        result = session.network_error(now, "refused")
        outcomes.append(type(result))
        if isinstance(result, GiveUp):
            break
        now = result.until
        action = session.timer(now)
    assert outcomes == [Wait, Wait, GiveUp]
    assert session.state is S.CLOSED


def test_max_retries_zero_never_retries() -> None:
    session = new_session(max_retries=0)
    session.start(0.0)
    assert isinstance(session.network_error(0.0), GiveUp)


def test_stop_is_idempotent_and_final() -> None:
    session = drive(S.WAITING)
    session.stop()
    session.stop()
    assert session.state is S.CLOSED
    assert session.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        session.timer(1e9)


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1"])
def test_inputs_reject_non_finite_time(now: float) -> None:
    with pytest.raises(LocalProtocolError):
        new_session().start(now)


def test_constructor_validates_limits() -> None:
    with pytest.raises(LocalProtocolError):
        new_session(max_retries=-1)
    with pytest.raises(LocalProtocolError):
        new_session(restart_delay=-1.0)
    with pytest.raises(LocalProtocolError):
        new_session(max_floor=float("inf"))


# ------------------------------------------------------------------ hot-loop guard


def accept_then_close(session: ReconnectingSession, horizon: float) -> list[float]:
    """Connect times against a server that accepts every handshake and closes at once."""
    attempts = []
    action: object = session.start(0.0)
    now = 0.0
    while now < horizon:
        assert isinstance(action, Connect)
        attempts.append(now)
        session.connected(now)
        wait = session.closed(1011, by_peer=True, now=now)
        assert isinstance(wait, Wait)
        now = wait.until
        action = session.timer(now)
    return attempts


def test_accept_then_close_gives_growing_delays() -> None:
    session = new_session(backoff=Backoff(NoJitter(base=0.5, cap=30.0)))
    attempts = accept_then_close(session, 200.0)
    delays = [b - a for a, b in itertools.pairwise(attempts)]
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert all(d == 30.0 for d in delays[6:])


def test_accept_then_close_cannot_drive_a_hot_loop() -> None:
    # With the stable-period rule the attempt rate is bounded by the backoff cap...
    guarded = accept_then_close(new_session(3), 300.0)
    # ...whereas resetting on every accepted handshake (stable period 0, as some
    # libraries effectively do) reconnects after U(0, base) every time.
    naive = accept_then_close(
        new_session(3, backoff=Backoff(FullJitter(base=1.0), stable_period=0.0)), 300.0
    )
    assert len(guarded) < 40
    assert len(naive) > 10 * len(guarded)


def test_a_stable_connection_resets_the_backoff() -> None:
    session = new_session(backoff=Backoff(NoJitter(base=0.5), stable_period=5.0))
    session.start(0.0)
    for _ in range(4):
        session.network_error(0.0)
        session.timer(1e6)
    assert session.attempt == 4
    session.connected(1e6)
    wait = session.closed(1006, by_peer=True, now=1e6 + 5.0)
    assert isinstance(wait, Wait)
    assert wait.delay == 0.5
    assert session.attempt == 1


def test_a_message_is_progress_so_a_short_productive_connection_resets_the_backoff() -> None:
    session = new_session(backoff=Backoff(NoJitter(base=0.5), stable_period=5.0))
    session.start(0.0)
    for _ in range(4):
        session.network_error(0.0)
        session.timer(1e6)
    session.connected(1e6)
    session.message("e.7", topic="t")
    wait = session.closed(None, by_peer=True, now=1e6 + 0.1)
    assert isinstance(wait, Wait)
    assert wait.delay == 0.5
    assert session.attempt == 1
    assert session.positions["t"] == "e.7"


def test_bookkeeping_messages_are_not_progress() -> None:
    session = new_session(backoff=Backoff(NoJitter(base=0.5), stable_period=5.0))
    session.start(0.0)
    delays = []
    now = 0.0
    for _ in range(4):
        session.connected(now)
        session.message("e.1", topic="t", progress=False)  # e.g. "subscribed", every time
        wait = session.closed(None, by_peer=True, now=now + 0.1)
        assert isinstance(wait, Wait)
        delays.append(wait.delay)
        now = wait.until
        session.timer(now)
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_an_acknowledgement_is_progress() -> None:
    session = new_session(backoff=Backoff(NoJitter(base=0.5), stable_period=5.0))
    session.start(0.0)
    session.network_error(0.0)
    session.timer(10.0)
    session.connected(10.0)
    session.progress()
    wait = session.closed(1006, by_peer=True, now=10.5)
    assert isinstance(wait, Wait)
    assert wait.delay == 0.5


# ------------------------------------------------------------------ reconnect storm


def storm_reconnects(
    make_backoff: Callable[[], Backoff], *, code: int, down_for: float
) -> list[float]:
    """1 000 long-connected sessions lose the server at t=0; it is back at *down_for*.

    Returns when each got back in (its first attempt at or after *down_for*).
    """
    rng = random.Random(2024)
    times: list[float] = []
    for _ in range(1000):
        session = ReconnectingSession(rng, topics=["t"], backoff=make_backoff())
        session.start(-100.0)
        session.connected(-100.0)
        action: object = session.closed(code, by_peer=True, now=0.0)
        while True:
            assert isinstance(action, Wait)
            connect = session.timer(action.until)
            assert isinstance(connect, Connect)
            if action.until >= down_for:
                times.append(action.until)
                session.connected(action.until)
                break
            action = session.network_error(action.until, "connection refused")
    return times


def peak_share(times: list[float], window: float = 0.1) -> float:
    """The largest share of *times* in any *window* seconds."""
    times = sorted(times)
    peak = max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))
    return peak / len(times)


@pytest.mark.parametrize("down_for", [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0])
def test_reconnect_storm_peaks_at_five_percent_per_100_ms_and_ends_within_30_s(
    down_for: float,
) -> None:
    back = storm_reconnects(default_backoff, code=1006, down_for=down_for)
    unjittered = storm_reconnects(
        lambda: Backoff(NoJitter(base=1.0, cap=30.0)), code=1006, down_for=down_for
    )
    assert peak_share(unjittered) == 1.0
    assert peak_share(back) <= 0.05, peak_share(back)
    assert max(back) - down_for <= 30.0


def test_reconnect_storm_after_service_restart_is_spread_above_the_floor() -> None:
    back = storm_reconnects(default_backoff, code=1012, down_for=0.0)
    assert min(back) >= DEFAULT_RESTART_DELAY
    assert peak_share(back) <= 0.05
    assert max(back) <= DEFAULT_RESTART_DELAY + 30.0


# ----------------------------------------------------------------------- heartbeat


def test_heartbeat_pings_every_interval_while_pongs_come_back() -> None:
    heartbeat = HeartbeatPolicy(interval=20.0, timeout=20.0)
    assert heartbeat.next_deadline() is None
    heartbeat.start(0.0)
    assert heartbeat.next_deadline() == 20.0
    assert heartbeat.handle_timer(19.9) == []
    (ping,) = heartbeat.handle_timer(20.0)
    assert isinstance(ping, SendPing)
    assert heartbeat.awaiting_pong
    assert heartbeat.next_deadline() == 40.0  # pong timeout
    heartbeat.pong_received(ping.payload, 21.0)
    assert not heartbeat.awaiting_pong
    assert heartbeat.next_deadline() == 40.0  # next ping
    (ping2,) = heartbeat.handle_timer(40.0)
    assert isinstance(ping2, SendPing)
    assert ping2.payload != ping.payload


def test_heartbeat_closes_1011_when_no_pong_within_timeout() -> None:
    heartbeat = HeartbeatPolicy(interval=20.0, timeout=5.0)
    heartbeat.start(0.0)
    (ping,) = heartbeat.handle_timer(20.0)
    assert isinstance(ping, SendPing)
    heartbeat.pong_received(b"unsolicited", 21.0)  # ignored
    heartbeat.pong_received(ping.payload + b"x", 22.0)  # ignored
    assert heartbeat.handle_timer(24.9) == []
    assert heartbeat.handle_timer(25.0) == [ClosePeer(1011, "ping timeout")]
    assert heartbeat.dead
    assert heartbeat.next_deadline() is None
    assert heartbeat.handle_timer(100.0) == []


def test_heartbeat_defaults_are_twenty_and_twenty() -> None:
    heartbeat = HeartbeatPolicy()
    assert (heartbeat.interval, heartbeat.timeout) == (20.0, 20.0)


def test_heartbeat_misuse_raises() -> None:
    heartbeat = HeartbeatPolicy()
    heartbeat.start(0.0)
    with pytest.raises(LocalProtocolError):
        heartbeat.start(1.0)
    with pytest.raises(LocalProtocolError):
        HeartbeatPolicy(interval=0.0)
    with pytest.raises(LocalProtocolError):
        HeartbeatPolicy(timeout=-1.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.5, 60), st.floats(0.5, 60), st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_heartbeat_with_timely_pongs_pings_every_interval_and_never_closes(
    interval: float, timeout: float, fractions: list[float]
) -> None:
    heartbeat = HeartbeatPolicy(interval=interval, timeout=timeout)
    heartbeat.start(0.0)
    now = 0.0
    sent = []
    for fraction in fractions:
        deadline = heartbeat.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        (ping,) = heartbeat.handle_timer(now)
        assert isinstance(ping, SendPing)
        sent.append(now)
        assert heartbeat.handle_timer(now) == []  # one ping outstanding at most
        now += fraction * timeout * 0.99
        heartbeat.pong_received(ping.payload, now)
    assert all(b - a >= interval * (1 - 1e-9) for a, b in itertools.pairwise(sent))
    assert not heartbeat.dead


@settings(max_examples=100, deadline=None)
@given(st.floats(0.5, 60), st.floats(0.5, 60), st.floats(0, 100))
def test_heartbeat_late_pong_closes_exactly_at_the_timeout(
    interval: float, timeout: float, extra: float
) -> None:
    heartbeat = HeartbeatPolicy(interval=interval, timeout=timeout)
    heartbeat.start(0.0)
    (ping,) = heartbeat.handle_timer(interval)
    assert isinstance(ping, SendPing)
    assert heartbeat.next_deadline() == interval + timeout
    assert heartbeat.handle_timer(interval + timeout + extra) == [ClosePeer(1011, "ping timeout")]
    heartbeat.pong_received(ping.payload, interval + timeout + extra)
    assert heartbeat.dead


def test_a_1001_from_the_peer_is_retried_and_our_own_is_not() -> None:
    # The session passes by_peer on: a server going away is retried, a client going
    # away (its own close) is the end.
    for by_peer, expected in ((True, Wait), (False, GiveUp)):
        session = new_session()
        session.start(0.0)
        session.connected(0.0)
        assert isinstance(session.closed(1001, by_peer=by_peer, now=1.0), expected)


def test_there_is_a_deadline_only_while_waiting() -> None:
    session = new_session()
    assert session.next_deadline() is None
    session.start(0.0)
    assert session.next_deadline() is None  # connecting: the caller times the attempt
    session.connected(0.0)
    assert session.next_deadline() is None
    wait = session.network_error(1.0)
    assert isinstance(wait, Wait)
    assert session.next_deadline() == wait.until
    session.stop()
    assert session.next_deadline() is None
