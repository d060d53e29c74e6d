"""atheris harness: the reconnect machine, its retry decisions and the heartbeat clock.

The input is a program: a :class:`~tidings.session.ReconnectingSession` (with a
fuzzer-chosen ``max_retries``, ``restart_delay`` and ``max_floor``) is fed a sequence
of inputs -- start, connected, messages, progress, closes with any close code (the
registered ones, the 4xxx convention, junk), HTTP failures with any status and
``Retry-After`` (including hostile ones), network errors, timers, stop, topics tracked
and forgotten, and now and then an argument of the wrong kind -- at a clock that moves
by fuzzer-chosen steps.  A :class:`~tidings.session.HeartbeatPolicy` is driven by the
same program (start, timers, pongs right and wrong).

Invariants, after every step:

- an input raises :class:`~tidings.errors.LocalProtocolError` exactly when its
  ``(state, input)`` pair is not in :data:`~tidings.session.TRANSITIONS` or an
  argument is bad, and then changes nothing; nothing else ever raises;
- the new state is one the table allows; a :class:`~tidings.session.Wait` is due at
  ``now + delay`` with ``0 <= delay <= max_floor + 30`` (the pacing's cap) and leaves
  the machine waiting with that deadline; :class:`~tidings.session.GiveUp` leaves it
  closed; a :class:`~tidings.session.Connect` resumes every tracked topic;
- with ``max_retries``, the attempt counter never exceeds ``max_retries + 1``;
- the heartbeat pings at most once per interval, never with a ping outstanding,
  closes only after ``timeout`` without the right pong, and then stays silent.

Run: ``python fuzz/fuzz_session.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.errors import LocalProtocolError
    from tidings.session import (
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
    )

_CAP = 30.0  # the default pacing's largest jittered delay
_CODES = [None, 1000, 1001, 1002, 1003, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 1015]
_CODES += [3000, 3003, 3008, 4000, 4400, 4401, 4408, 4429, 4500, 4503, 4599, 4600, 0, 65535]
_STATUSES = [0, 100, 101, 200, 204, 301, 304, 400, 401, 403, 404, 408, 425, 429, 500, 502, 503]
_STATUSES += [504, 505, 599, 600, 999, -1]
_RETRY_AFTERS = [None, 0.0, 1.5, 120.0, 299.0, 1e9, 1e308]
_BAD = [math.nan, math.inf, -math.inf, True, "1", None]
_TOPICS = ["", "a", "b", "news"]


def _heartbeat_step(fdp: atheris.FuzzedDataProvider, beat: HeartbeatPolicy, now: float) -> None:
    """One heartbeat input, checked against what the policy promised."""
    deadline = beat.next_deadline()
    was_dead = beat.dead
    awaiting = beat.awaiting_pong
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0:
        with suppress(LocalProtocolError):
            beat.start(now)
        return
    if choice == 1:
        payload = b"tidings-%d" % fdp.ConsumeIntInRange(0, 4) if fdp.ConsumeBool() else b""
        beat.pong_received(payload, now)
        return
    actions = beat.handle_timer(now)
    if was_dead and actions:
        raise AssertionError(f"a dead peer's heartbeat acted: {actions}")
    for action in actions:
        if isinstance(action, SendPing):
            if awaiting:
                raise AssertionError("a second ping while one is outstanding")
            if deadline is None or now < deadline:
                raise AssertionError(f"pinged at {now}, before the deadline {deadline}")
        elif isinstance(action, ClosePeer):
            if not awaiting or deadline is None or now < deadline or action.code != 1011:
                raise AssertionError(f"closed the peer at {now} (deadline {deadline})")
        else:
            raise AssertionError(f"unexpected heartbeat action {action!r}")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    rng = random.Random(fdp.ConsumeIntInRange(0, 2**16))
    max_retries = fdp.PickValueInList([None, 0, 1, 3])
    max_floor = fdp.PickValueInList([0.0, 5.0, 300.0])
    restart_delay = fdp.PickValueInList([0.0, 5.0, 1000.0])
    session = ReconnectingSession(
        rng,
        topics={"a": None, "b": "e.1"},
        max_retries=max_retries,
        restart_delay=restart_delay,
        max_floor=max_floor,
    )
    beat = HeartbeatPolicy(
        interval=fdp.PickValueInList([0.5, 1.0, 20.0]), timeout=fdp.PickValueInList([0.5, 20.0])
    )
    now = 0.0
    for _ in range(fdp.ConsumeIntInRange(0, 64)):
        if fdp.remaining_bytes() == 0:
            break
        now += fdp.PickValueInList([0.0, 0.001, 0.5, 1.0, 5.0, 31.0, 400.0, -1.0])
        choice = fdp.ConsumeIntInRange(0, 13)
        call: Callable[[], Any]
        event: SessionInput | None
        if choice == 0:
            event, call = SessionInput.START, partial(session.start, now)
        elif choice == 1:
            event, call = SessionInput.CONNECTED, partial(session.connected, now)
        elif choice == 2:
            topic = fdp.PickValueInList(_TOPICS)
            position = f"e.{fdp.ConsumeIntInRange(0, 9)}"
            event = SessionInput.MESSAGE
            call = partial(session.message, position, topic=topic, progress=fdp.ConsumeBool())
        elif choice == 3:
            event, call = SessionInput.PROGRESS, session.progress
        elif choice == 4:
            code = fdp.PickValueInList(_CODES)
            event = SessionInput.CLOSED
            call = partial(session.closed, code, "why", by_peer=fdp.ConsumeBool(), now=now)
        elif choice == 5:
            status = fdp.PickValueInList(_STATUSES)
            retry_after = fdp.PickValueInList(_RETRY_AFTERS)
            event = SessionInput.HTTP_FAILURE
            call = partial(session.http_failure, status, retry_after, now)
        elif choice == 6:
            event, call = SessionInput.NETWORK_ERROR, partial(session.network_error, now, "x")
        elif choice == 7:
            event, call = SessionInput.TIMER, partial(session.timer, now)
        elif choice == 8:
            event, call = SessionInput.STOP, session.stop
        elif choice == 9:
            topic = fdp.PickValueInList(_TOPICS)
            session.track(topic, fdp.PickValueInList([None, "e.3", "earliest"]))
            continue
        elif choice == 10:
            session.forget(fdp.PickValueInList(_TOPICS))
            continue
        elif choice == 11:
            # A bad argument: refused, and nothing changes.
            bad = fdp.PickValueInList(_BAD)
            event = None
            call = fdp.PickValueInList(
                [
                    partial(session.start, bad),
                    partial(session.connected, bad),
                    partial(session.timer, bad),
                    partial(session.network_error, bad),
                    partial(session.closed, 1006, by_peer=True, now=bad),
                    partial(session.track, bad if not isinstance(bad, str) else 1),
                ]
            )
        else:
            _heartbeat_step(fdp, beat, now)
            continue

        before = (session.state, session.attempt, session.next_deadline(), session.positions)
        allowed = None if event is None else TRANSITIONS.get((session.state, event))
        try:
            result = call()
        except LocalProtocolError:
            after = (session.state, session.attempt, session.next_deadline(), session.positions)
            if allowed is not None and event is not SessionInput.MESSAGE:
                raise AssertionError(f"{event} refused in {before[0]}") from None
            if after != before:
                raise AssertionError(f"a refused input changed {before} to {after}") from None
            continue
        if event is None:
            raise AssertionError(f"a bad argument was accepted: {result!r}")
        if allowed is None:
            raise AssertionError(f"{event} accepted in {before[0]}")
        if session.state not in allowed:
            raise AssertionError(f"{event} led from {before[0]} to {session.state}")
        if isinstance(result, Wait):
            if not (0 <= result.delay <= max_floor + _CAP and result.until == now + result.delay):
                raise AssertionError(f"{result!r} at {now} (max_floor {max_floor})")
            if session.state is not SessionState.WAITING or session.next_deadline() != result.until:
                raise AssertionError(f"{result!r} but {session!r}")
        elif isinstance(result, GiveUp):
            if session.state is not SessionState.CLOSED:
                raise AssertionError(f"{result!r} but {session!r}")
        elif isinstance(result, Connect):
            if dict(result.resume) != dict(session.positions) or result.attempt != session.attempt:
                raise AssertionError(f"{result!r} for {dict(session.positions)}")
            if session.state is not SessionState.CONNECTING:
                raise AssertionError(f"{result!r} but {session!r}")
        elif result is not None:
            raise AssertionError(f"unexpected result {result!r}")
        if max_retries is not None and session.attempt > max_retries + 1:
            raise AssertionError(f"attempt {session.attempt} with max_retries {max_retries}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
