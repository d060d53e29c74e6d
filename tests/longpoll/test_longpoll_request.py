from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.cursor import Position
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError
from tidings.longpoll import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_LIMIT,
    MAX_TIMEOUT,
    PollLimits,
    PollRequest,
    parse_poll_request,
)


def test_no_parameters_means_live_from_now_with_defaults() -> None:
    request = parse_poll_request(b"")
    assert request == PollRequest(None, DEFAULT_TIMEOUT, DEFAULT_LIMIT, conditional=False)


def test_cursor_query_parameter_is_parsed_strictly() -> None:
    request = parse_poll_request(b"cursor=ep.7")
    assert request.cursor == Position("ep", 7)
    assert request.cursor_text == "ep.7"
    assert not request.conditional


def test_earliest_asks_for_everything_retained() -> None:
    assert parse_poll_request("cursor=earliest").cursor == "earliest"


def test_empty_cursor_counts_as_absent() -> None:
    assert parse_poll_request("cursor=&timeout=&limit=").cursor is None


def test_percent_encoded_cursor_is_decoded() -> None:
    assert parse_poll_request("cursor=ep%2E7").cursor == Position("ep", 7)


@pytest.mark.parametrize(
    "query",
    [
        "cursor=nodot",
        "cursor=ep.01",
        "cursor=ep.-1",
        "cursor=e%20p.1",
        "cursor=" + "a" * 200 + ".1",
        "cursor=%C3%A9p.1",
        "cursor=ep.99999999999999999999",
    ],
)
def test_malformed_cursor_is_kept_as_text_not_refused(query: str) -> None:
    """Answered with a ``malformed`` reset (see test_longpoll_server), like a garbage
    ``Last-Event-ID`` on SSE or resume cursor on WebSocket."""
    request = parse_poll_request(query)
    assert request.cursor == unquote(query.removeprefix("cursor="))
    assert request.cursor_text == request.cursor
    with pytest.raises(InvalidCursor):
        Position.parse(request.cursor)


def test_non_utf8_percent_escape_in_cursor_is_a_malformed_cursor() -> None:
    assert parse_poll_request("cursor=%C3%28").cursor == "\ufffd("


def test_non_utf8_percent_escape_in_other_parameters_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8") as info:
        parse_poll_request("limit=%C3%28")
    assert info.value.error_status_hint == 400


def test_repeated_parameter_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="more than once"):
        parse_poll_request("cursor=ep.1&cursor=ep.2")


def test_unknown_parameters_are_ignored() -> None:
    assert parse_poll_request("_=12345&cursor=ep.1&x").cursor == Position("ep", 1)


def test_timeout_is_clamped_to_the_server_maximum() -> None:
    assert parse_poll_request("timeout=3600").timeout == MAX_TIMEOUT
    assert parse_poll_request("timeout=9" * 1 + "9" * 11).timeout == MAX_TIMEOUT
    limits = PollLimits(max_timeout=5.0, default_timeout=2.0)
    assert parse_poll_request("timeout=10", limits=limits).timeout == 5.0
    assert parse_poll_request("", limits=limits).timeout == 2.0


def test_timeout_accepts_decimals_and_zero() -> None:
    assert parse_poll_request("timeout=0").timeout == 0.0
    assert parse_poll_request("timeout=0.5").timeout == 0.5
    assert parse_poll_request("timeout=.25").timeout == 0.25
    assert parse_poll_request("timeout=2.").timeout == 2.0


@pytest.mark.parametrize("value", ["-1", "1e3", "nan", "inf", "abc", "1.2.3", "+5", " 5"])
def test_bad_timeout_is_rejected(value: str) -> None:
    with pytest.raises(RemoteProtocolError, match="timeout") as info:
        parse_poll_request("timeout=" + value.replace(" ", "%20"))
    assert info.value.error_status_hint == 400


def test_limit_is_clamped_to_the_server_maximum() -> None:
    assert parse_poll_request("limit=5").limit == 5
    assert parse_poll_request("limit=100000").limit == MAX_LIMIT
    assert parse_poll_request("limit=" + "9" * 32).limit == MAX_LIMIT
    assert parse_poll_request("limit=7", limits=PollLimits(max_limit=3, default_limit=2)).limit == 3


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "x", "9" * 33])
def test_bad_limit_is_rejected(value: str) -> None:
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_poll_request("limit=" + value)


def test_if_none_match_carries_the_cursor_and_makes_the_request_conditional() -> None:
    request = parse_poll_request(b"", [(b"If-None-Match", b'"ep.3"')])
    assert request.cursor == Position("ep", 3)
    assert request.conditional


def test_header_names_are_case_insensitive_and_may_be_str() -> None:
    assert parse_poll_request("", [("IF-NONE-MATCH", '"ep.3"')]).conditional


def test_weak_etag_counts_like_a_strong_one() -> None:
    assert parse_poll_request(b"", [(b"if-none-match", b'W/"ep.3"')]).cursor == Position("ep", 3)


def test_if_none_match_list_naming_one_cursor_is_accepted() -> None:
    headers = [(b"if-none-match", b'"ep.3", W/"ep.3",'), (b"if-none-match", b' "ep.3"')]
    assert parse_poll_request(b"", headers).cursor == Position("ep", 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b'"ep.3", "ep.4"', "more than one"),
        (b"*", r"\*"),
        (b"ep.3", "malformed entity tag"),
        (b'"ep.3', "malformed entity tag"),
        (b'w/"ep.3"', "malformed entity tag"),
        (b" , ", "empty"),
    ],
)
def test_bad_if_none_match_is_rejected(value: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message) as info:
        parse_poll_request(b"", [(b"if-none-match", value)])
    assert info.value.error_status_hint == 400


@pytest.mark.parametrize("tag", ["", "nodot", "ep.01"])
def test_if_none_match_naming_no_cursor_is_a_malformed_cursor(tag: str) -> None:
    request = parse_poll_request(b"", [(b"if-none-match", f'"{tag}"'.encode())])
    assert request.cursor == tag
    assert request.conditional


def test_cursor_in_query_and_header_must_agree() -> None:
    headers = [(b"if-none-match", b'"ep.3"')]
    assert parse_poll_request(b"cursor=ep.3", headers).conditional
    with pytest.raises(RemoteProtocolError, match="disagree"):
        parse_poll_request(b"cursor=ep.4", headers)


def test_other_headers_are_ignored() -> None:
    assert parse_poll_request(b"", [(b"etag", b"garbage"), (b"accept", b"*/*")]).cursor is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_timeout": -1.0},
        {"default_timeout": 40.0},
        {"max_timeout": float("inf")},
        {"default_limit": 0},
        {"default_limit": 2000},
        {"max_limit": 1.5},
    ],
)
def test_invalid_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        PollLimits(**kwargs)  # type: ignore[arg-type]


def test_poll_request_checks_its_fields() -> None:
    with pytest.raises(LocalProtocolError):
        PollRequest(cursor=None, conditional=True)
    with pytest.raises(LocalProtocolError):
        PollRequest(limit=0)
    with pytest.raises(LocalProtocolError):
        PollRequest(timeout=-1)
    with pytest.raises(LocalProtocolError):
        PollRequest(cursor=b"ep.1")  # type: ignore[arg-type]


@given(st.binary(max_size=200), st.lists(st.binary(max_size=60), max_size=3))
@settings(max_examples=300, deadline=None)
def test_arbitrary_input_gives_a_request_or_a_remote_protocol_error(
    query: bytes, tags: list[bytes]
) -> None:
    headers = [(b"if-none-match", tag) for tag in tags]
    try:
        request = parse_poll_request(query, headers)
    except RemoteProtocolError as exc:
        status = exc.error_status_hint
    else:
        status = 200
        assert 0 <= request.timeout <= MAX_TIMEOUT
        assert 1 <= request.limit <= MAX_LIMIT
    assert status in (200, 400)


@given(
    st.from_regex(r"[a-z_]{1,8}=[A-Za-z0-9.%_\-]{0,12}", fullmatch=True),
    st.sampled_from(["cursor", "timeout", "limit"]),
    st.from_regex(r"[A-Za-z0-9.%\-]{0,16}", fullmatch=True),
)
@settings(max_examples=300, deadline=None)
def test_structured_queries_never_crash(extra: str, name: str, value: str) -> None:
    try:
        request = parse_poll_request(f"{extra}&{name}={value}")
    except RemoteProtocolError as exc:
        status = exc.error_status_hint
    else:
        status = 200
        assert 0 <= request.timeout <= MAX_TIMEOUT
        assert 1 <= request.limit <= MAX_LIMIT
    assert status in (200, 400)
