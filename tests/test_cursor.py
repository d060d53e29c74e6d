import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.cursor import MAX_CURSOR_LENGTH, MAX_OFFSET, Position, new_epoch
from tidings.errors import InvalidCursor, LocalProtocolError, RemoteProtocolError

epochs = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=64,
)
offsets = st.integers(min_value=0, max_value=MAX_OFFSET)


def test_format_is_epoch_dot_offset() -> None:
    assert Position("abc", 42).format() == "abc.42"
    assert str(Position("a-b_C", 0)) == "a-b_C.0"


@given(epochs, offsets)
def test_parse_inverts_format(epoch: str, offset: int) -> None:
    position = Position(epoch, offset)
    text = position.format()
    assert len(text.encode()) <= MAX_CURSOR_LENGTH
    assert Position.parse(text) == position
    assert Position.parse(text.encode()) == position


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".5",
        "abc.01",
        "abc.-1",
        "abc.+1",
        "abc.1.2",
        "ab c.1",
        "abc.1 ",
        " abc.1",
        "abc.1\n",
        "abc.1\x00",
        "\u00e9t\u00e9.1",
        "abc.\u0661",  # Arabic-Indic digit one: int() would take it
        "abc.1_000",  # underscores: int() would take them
        "a" * 65 + ".1",
        "abc." + str(MAX_OFFSET + 1),
        "abc.99999999999999999999",
        "x" * 200,
    ],
)
def test_malformed_cursor_raises_invalid_cursor(text: str) -> None:
    with pytest.raises(InvalidCursor):
        Position.parse(text)


def test_invalid_cursor_is_a_remote_protocol_error_with_400_hint() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Position.parse("nope")
    assert info.value.error_status_hint == 400
    assert isinstance(info.value, ValueError)


def test_non_ascii_bytes_are_invalid() -> None:
    with pytest.raises(InvalidCursor):
        Position.parse(b"ab\xff.1")


def test_overlong_bytes_rejected_before_decoding() -> None:
    with pytest.raises(InvalidCursor):
        Position.parse(b"a" * 10_000_000)


def test_wrong_type_is_invalid() -> None:
    with pytest.raises(InvalidCursor):
        Position.parse(12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("epoch", "offset"), [("", 0), ("a.b", 0), ("a" * 65, 0), ("a", -1), ("a", True), ("a", 1.0)]
)
def test_constructing_invalid_position_is_local_error(epoch: str, offset: int) -> None:
    with pytest.raises(LocalProtocolError):
        Position(epoch, offset)


def test_next_and_ordering() -> None:
    assert Position("e", 1).next() == Position("e", 2)
    assert Position("e", 1) < Position("e", 2)


def test_new_epoch_is_deterministic_under_a_seeded_rng() -> None:
    a = new_epoch(random.Random(7))
    b = new_epoch(random.Random(7))
    assert a == b
    assert len(a) == 12
    assert Position.parse(f"{a}.0").epoch == a
    assert new_epoch(random.Random(8)) != a


def test_new_epoch_length_bounds() -> None:
    with pytest.raises(LocalProtocolError):
        new_epoch(random.Random(), length=0)
    with pytest.raises(LocalProtocolError):
        new_epoch(random.Random(), length=65)


@given(st.binary(max_size=300))
def test_parse_arbitrary_bytes_gives_position_or_invalid_cursor(data: bytes) -> None:
    try:
        position = Position.parse(data)
    except InvalidCursor:
        return
    assert position.format().encode() == data


@given(st.text(max_size=300))
def test_parse_arbitrary_text_gives_position_or_invalid_cursor(text: str) -> None:
    try:
        position = Position.parse(text)
    except InvalidCursor:
        return
    assert position.format() == text


def test_the_largest_offset_parses_and_one_more_does_not() -> None:
    assert Position.parse(f"e.{MAX_OFFSET}") == Position("e", MAX_OFFSET)
    assert Position.parse(f"e.{MAX_OFFSET}".encode()) == Position("e", MAX_OFFSET)
    with pytest.raises(InvalidCursor):
        Position.parse(f"e.{MAX_OFFSET + 1}")


def test_new_epoch_lengths_at_the_bounds_are_accepted() -> None:
    assert len(new_epoch(random.Random(1), length=1)) == 1
    assert len(new_epoch(random.Random(1), length=64)) == 64


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_new_epoch_draws_each_character_uniformly_from_36() -> None:
    # [0, 1) maps onto 0-9a-z in 36 equal steps: the top of the range is "z".
    assert new_epoch(_Fixed(0.0), length=3) == "000"
    assert new_epoch(_Fixed(0.999), length=3) == "zzz"
    assert new_epoch(_Fixed(10 / 36), length=2) == "aa"
