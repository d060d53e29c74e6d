"""The SSE form of a reset: an event of type ``tidings.reset`` whose data is JSON.

A tidings server sends it when it cannot resume from the client's ``Last-Event-ID``
(unknown epoch, malformed, evicted; see DESIGN §2).  The data is a JSON object with
at least ``"cursor"``, the position the stream continues from, and optionally
``"reason"``; other members are ignored so that servers may add more.  The event
should also carry ``id: <cursor>`` so that a plain ``EventSource`` resumes from the
new position too.

To any other SSE client it is an ordinary event of an unusual type; :func:`parse_reset`
is how a tidings client recognises it, giving the :class:`~tidings.events.ResetNotice`
every tidings client yields (re-exported here).
"""

from __future__ import annotations

import json

from tidings.events import ResetNotice
from tidings.sse.parser import MessageEvent

__all__ = [
    "RESET_EVENT_TYPE",
    "ResetNotice",
    "encode_reset_data",
    "parse_reset",
]

#: The SSE event type of a reset.
RESET_EVENT_TYPE = "tidings.reset"


def encode_reset_data(cursor: str, reason: str | None = None) -> str:
    """The ``data`` of a reset event: ``{"cursor": ..., "reason": ...}`` on one line."""
    body: dict[str, str] = {"cursor": cursor}
    if reason is not None:
        body["reason"] = reason
    return json.dumps(body, separators=(",", ":"))


def parse_reset(event: MessageEvent, topic: str | None = None) -> ResetNotice | None:
    """The :class:`~tidings.events.ResetNotice` that *event* carries (for *topic*), or
    ``None`` for any other event.

    An event of type ``tidings.reset`` whose data is not a JSON object with a string
    ``cursor`` (and, if present, a string or null ``reason``) is not a reset: it is
    returned as ``None`` and stays an ordinary event, as for a foreign server that
    happens to use the type.
    """
    if event.type != RESET_EVENT_TYPE:
        return None
    try:
        body = json.loads(event.data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    cursor = body.get("cursor")
    reason = body.get("reason")
    if not isinstance(cursor, str) or not (reason is None or isinstance(reason, str)):
        return None
    return ResetNotice(topic, cursor, reason)
