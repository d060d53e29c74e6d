"""The one retry decision every client uses: the tables and the Retrier, with a fixed rng."""

import random

import pytest

from tidings.backoff import Backoff, NoJitter
from tidings.errors import LocalProtocolError
from tidings.retry import (
    DEFAULT_RESTART_DELAY,
    RETRY_STATUSES,
    GiveUp,
    Reconnect,
    Retrier,
    classify_close,
    classify_http,
)


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def retrier(**kwargs: object) -> Retrier:
    kwargs.setdefault("backoff", Backoff(NoJitter(base=0.5)))
    return Retrier(_Fixed(0.5), **kwargs)  # type: ignore[arg-type]


# -- HTTP statuses ------------------------------------------------------------------------


def test_the_retried_statuses_are_exactly_the_documented_seven() -> None:
    assert frozenset({408, 425, 429, 500, 502, 503, 504}) == RETRY_STATUSES
    for status in range(100, 600):
        assert classify_http(status).retry is (status in RETRY_STATUSES), status


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (204, "HTTP 204 No Content: the server asks the client to stop"),
        (100, "unexpected HTTP 100"),
        (301, "unexpected HTTP 301"),
        (399, "unexpected HTTP 399"),
        (400, "HTTP 400 Bad Request"),
        (404, "HTTP 404 Not Found"),
        (501, "HTTP 501 Not Implemented"),
        (505, "HTTP 505"),
        (503, "HTTP 503 Service Unavailable"),
    ],
)
def test_reasons_name_the_status(status: int, reason: str) -> None:
    assert classify_http(status).reason == reason


def test_strict_mode_stops_on_every_status_as_a_browser_does() -> None:
    for status in range(100, 600):
        assert classify_http(status, 1.0, strict=True).retry is False


def test_retry_after_is_the_floor_of_a_retry_only() -> None:
    assert classify_http(429, 7.0).floor == 7.0
    assert classify_http(503, 120).floor == 120.0
    assert classify_http(503).floor == 0.0
    assert classify_http(404, 30.0).floor == 0.0


@pytest.mark.parametrize("status", [99, 600, -1, True])
def test_impossible_statuses_are_refused(status: int) -> None:
    with pytest.raises(LocalProtocolError):
        classify_http(status)


@pytest.mark.parametrize("retry_after", [-1.0, float("nan"), float("inf")])
def test_impossible_retry_after_is_refused(retry_after: float) -> None:
    with pytest.raises(LocalProtocolError):
        classify_http(503, retry_after)


# -- WebSocket close codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "by_peer", "retry"),
    [
        (None, True, True),
        (None, False, True),
        (1000, True, False),
        (1000, False, False),
        (1001, True, True),
        (1001, False, False),
        (1002, True, False),
        (1003, True, False),
        (1005, True, True),
        (1006, True, True),
        (1006, False, True),
        (1007, True, False),
        (1008, True, False),
        (1009, True, False),
        (1010, False, False),
        (1011, True, True),
        (1011, False, True),
        (1012, True, True),
        (1013, True, True),
        (1014, True, True),
        (1015, False, False),
        (3000, True, False),
        (3003, True, False),
        (3008, True, True),
        (4000, True, True),
        (4399, True, True),
        (4400, True, False),
        (4401, True, False),
        (4403, True, False),
        (4404, True, False),
        (4408, True, True),
        (4425, True, True),
        (4429, True, True),
        (4499, True, False),
        (4500, True, True),
        (4501, True, False),
        (4503, True, True),
        (4505, True, False),
        (4600, True, True),
        (4999, True, True),
    ],
)
def test_classify_close_follows_the_documented_table(
    code: int | None, by_peer: bool, retry: bool
) -> None:
    verdict = classify_close(code, by_peer=by_peer)
    assert verdict.retry is retry
    assert verdict.reason


def test_application_close_codes_are_judged_as_their_http_status() -> None:
    for code in range(4400, 4600):
        assert classify_close(code, by_peer=True).retry is classify_http(code - 4000).retry


def test_classify_close_service_restart_waits_at_least_restart_delay() -> None:
    assert classify_close(1012, by_peer=True).floor == DEFAULT_RESTART_DELAY
    assert classify_close(1012, by_peer=True, restart_delay=9.0).floor == 9.0
    assert classify_close(1006, by_peer=True).floor == 0.0


def test_classify_close_rejects_non_int_codes() -> None:
    with pytest.raises(LocalProtocolError):
        classify_close("1000", by_peer=True)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        classify_close(True, by_peer=True)


# -- the Retrier: decision and pacing together ---------------------------------------------


def test_a_stop_verdict_gives_up_with_what_decided() -> None:
    r = retrier()
    assert r.http_failure(403, None, 0.0) == GiveUp("HTTP 403 Forbidden", None, 403)
    assert r.closed(1008, "bad", by_peer=True, now=0.0) == GiveUp(
        "policy violation: bad", 1008, None
    )


@pytest.mark.parametrize("status", [0, 99, 600, 999])
def test_a_status_no_http_response_can_have_gives_up(status: int) -> None:
    # Found by fuzz/fuzz_longpoll.py: h11 reads any three digits as a status, and a
    # client handing such an answer on raised LocalProtocolError (a caller bug).
    assert retrier().http_failure(status, 5.0, 0.0) == GiveUp(
        f"invalid HTTP status {status}", None, status
    )


def test_every_kind_of_retryable_loss_reconnects() -> None:
    r = retrier()
    assert r.network_error(0.0, "refused") == Reconnect(0.5, "network error: refused")
    assert r.ended(1.0) == Reconnect(1.0, "stream ended by the server")
    assert r.closed(None, by_peer=True, now=2.0) == Reconnect(2.0, "network error")
    assert r.http_failure(503, 1.0, 3.0) == Reconnect(5.0, "HTTP 503 Service Unavailable")


def test_retry_after_goes_under_the_jitter_and_is_capped_by_max_floor() -> None:
    r = retrier(max_floor=60.0)
    assert r.http_failure(429, 2.0, 0.0) == Reconnect(2.5, "HTTP 429 Too Many Requests")
    assert r.http_failure(503, 10.0**9, 0.0) == Reconnect(61.0, "HTTP 503 Service Unavailable")


def test_the_standing_floor_applies_unless_the_connection_made_progress() -> None:
    r = retrier()
    r.standing_floor = 3.0
    r.connected(0.0)
    assert isinstance(decision := r.ended(0.1), Reconnect)
    assert decision.delay == 3.5  # nothing new: the server's retry, then the backoff
    r.connected(10.0)
    r.progress()
    assert isinstance(decision := r.network_error(10.2), Reconnect)
    assert decision.delay == 0.5  # a productive connection: resume at once
    r.connected(20.0)
    assert isinstance(decision := r.ended(30.0), Reconnect)
    assert decision.delay == 3.5  # a stable connection: the floor, then the spread


def test_strict_mode_always_waits_the_standing_floor() -> None:
    r = retrier(strict=True)
    r.standing_floor = 3.0
    r.connected(0.0)
    r.progress()
    assert r.network_error(0.1) == Reconnect(3.5, "network error")
    assert isinstance(r.http_failure(503, None, 5.0), GiveUp)


def test_max_retries_counts_consecutive_failures_and_progress_starts_again() -> None:
    r = retrier(max_retries=2)
    assert isinstance(r.network_error(0.0), Reconnect)
    assert isinstance(r.network_error(1.0), Reconnect)
    r.connected(2.0)
    r.progress()
    assert isinstance(r.network_error(2.5), Reconnect)  # the count starts again
    assert isinstance(r.network_error(3.0), Reconnect)
    decision = r.http_failure(503, None, 4.0)
    assert decision == GiveUp("gave up after 2 retries (HTTP 503 Service Unavailable)", None, 503)


def test_max_retries_zero_never_retries() -> None:
    assert isinstance(retrier(max_retries=0).network_error(0.0), GiveUp)


def test_a_stop_verdict_still_ends_the_connection() -> None:
    r = retrier()
    r.connected(0.0)
    r.http_failure(404, None, 1.0)
    assert r.backoff.connected_at is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"restart_delay": -1.0},
        {"max_floor": float("inf")},
    ],
)
def test_constructor_validates_its_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        Retrier(random.Random(0), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("now", [float("nan"), float("inf")])
def test_times_must_be_finite(now: float) -> None:
    with pytest.raises(LocalProtocolError):
        retrier().network_error(now)
