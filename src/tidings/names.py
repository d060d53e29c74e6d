"""The names every transport must agree on: topics and event types.

One rule each, used by the routes (``/topics/{topic}/...``), the WebSocket protocol,
the hub and the clients, so that whatever one transport accepts every other can
carry:

* a **topic** is 1 to :data:`MAX_TOPIC_LENGTH` characters from ``A-Z a-z 0-9 . _ ~ -``
  (RFC 3986 "unreserved": it needs no escaping in a URL path), and not ``.`` or
  ``..`` (which a URL path would resolve away);
* an **event type** is 1 to :data:`MAX_EVENT_TYPE_LENGTH` characters without control
  characters (U+0000-U+001F, U+007F), so it is one SSE ``event:`` line and one JSON
  string on every transport.
"""

from __future__ import annotations

import re

from tidings.errors import LocalProtocolError

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_TOPIC_LENGTH",
    "check_event_type",
    "check_topic",
    "is_valid_event_type",
    "is_valid_topic",
]

#: The longest topic name, in characters.
MAX_TOPIC_LENGTH = 128
#: The longest event type, in characters.
MAX_EVENT_TYPE_LENGTH = 256

_TOPIC_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

#: What a topic name may be, for error messages.
TOPIC_RULE = "topic names are 1-128 characters from A-Z a-z 0-9 . _ ~ - (not . or ..)"
#: What an event type may be, for error messages.
EVENT_TYPE_RULE = "event types are 1-256 characters without control characters"


def is_valid_topic(name: object) -> bool:
    """Whether *name* is an acceptable topic name (see the module)."""
    return (
        type(name) is str and _TOPIC_RE.fullmatch(name) is not None and name not in (".", "..")
    )


def check_topic(name: object) -> str:
    """*name*, if it is an acceptable topic name; else :class:`~tidings.errors.LocalProtocolError`."""
    if not is_valid_topic(name):
        raise LocalProtocolError(f"invalid topic {str(name)[:140]!r}: {TOPIC_RULE}")
    return name  # type: ignore[return-value]


def is_valid_event_type(value: object) -> bool:
    """Whether *value* is an acceptable event type (see the module)."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_EVENT_TYPE_LENGTH
        and _CONTROL_RE.search(value) is None
    )


def check_event_type(value: object) -> str:
    """*value*, if it is an acceptable event type; else
    :class:`~tidings.errors.LocalProtocolError`."""
    if not is_valid_event_type(value):
        raise LocalProtocolError(f"invalid event type {str(value)[:40]!r}: {EVENT_TYPE_RULE}")
    return value  # type: ignore[return-value]
