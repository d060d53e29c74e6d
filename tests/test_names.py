"""One rule for topic names and one for event types, shared by every transport."""

import pytest

from tidings.errors import LocalProtocolError
from tidings.names import (
    MAX_EVENT_TYPE_LENGTH,
    MAX_TOPIC_LENGTH,
    check_event_type,
    check_topic,
    is_valid_event_type,
    is_valid_topic,
)


@pytest.mark.parametrize("name", ["a", "A-z_0.9~", "x" * MAX_TOPIC_LENGTH, "..."])
def test_valid_topics(name: str) -> None:
    assert is_valid_topic(name)
    assert check_topic(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "x" * (MAX_TOPIC_LENGTH + 1), "a/b", "a b", "caf\u00e9", "a%41", 7]
)
def test_invalid_topics(name: object) -> None:
    assert not is_valid_topic(name)
    with pytest.raises(LocalProtocolError, match="topic names are 1-128 characters"):
        check_topic(name)


@pytest.mark.parametrize("kind", ["e", "greeting", "caf\u00e9 \u2603", "x" * MAX_EVENT_TYPE_LENGTH])
def test_valid_event_types(kind: str) -> None:
    assert is_valid_event_type(kind)
    assert check_event_type(kind) == kind


@pytest.mark.parametrize(
    "kind", ["", "a\nb", "a\rb", "a\x00b", "\x7f", "x" * (MAX_EVENT_TYPE_LENGTH + 1), None]
)
def test_invalid_event_types(kind: object) -> None:
    assert not is_valid_event_type(kind)
    with pytest.raises(LocalProtocolError, match="event types are 1-256 characters"):
        check_event_type(kind)
