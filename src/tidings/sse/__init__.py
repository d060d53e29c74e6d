"""Server-Sent Events, sans-IO: the encoder, the WHATWG parser and the EventSource model.

* :class:`ServerSentEvent` / :func:`encode_event` / :func:`encode_comment` turn events
  into ``text/event-stream`` bytes, refusing values that would inject fields.
* :class:`EventStreamParser` turns bytes, split anywhere, into :class:`MessageEvent`\\ s
  exactly as a browser does (HTML Living Standard, "Server-sent events").
* :class:`EventSourceClient` is the connection model around it: request headers,
  judging responses, and when to reconnect.
* :func:`parse_reset` recognises how a tidings server says "I could not resume you"
  (a :class:`~tidings.events.ResetNotice`, re-exported here).
"""

from tidings.sse.client import (
    DEFAULT_MAX_RECONNECTION_TIME,
    EVENT_STREAM_MEDIA_TYPE,
    EventSourceClient,
    EventSourceCloseReason,
    EventSourceState,
)
from tidings.sse.encoder import ServerSentEvent, encode_comment, encode_event
from tidings.sse.parser import (
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_LENGTH,
    EventStreamParser,
    MessageEvent,
)
from tidings.sse.reset import RESET_EVENT_TYPE, ResetNotice, encode_reset_data, parse_reset

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_RECONNECTION_TIME",
    "EVENT_STREAM_MEDIA_TYPE",
    "RESET_EVENT_TYPE",
    "EventSourceClient",
    "EventSourceCloseReason",
    "EventSourceState",
    "EventStreamParser",
    "MessageEvent",
    "ResetNotice",
    "ServerSentEvent",
    "encode_comment",
    "encode_event",
    "encode_reset_data",
    "parse_reset",
]
