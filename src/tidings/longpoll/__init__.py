"""Long polling as sans-IO machines: the fallback for networks that break streaming.

Long polling gives the same guarantee as the streaming transports: every event once,
in order, or an explicit reset.  The pieces, one module each:

* :mod:`~tidings.longpoll.request`: parse and bound an incoming poll
  (:func:`parse_poll_request` → :class:`PollRequest`).
* :mod:`~tidings.longpoll.server`: :class:`LongPollServer` decides, per request,
  whether to answer now or hold until a publish or the deadline, and builds the
  :class:`PollAnswer`.
* :mod:`~tidings.longpoll.client`: :class:`LongPollClient` keeps the cursor, builds
  requests, parses answers and paces retries.
* :mod:`~tidings.longpoll.adaptive`: :class:`AdaptivePoller` paces conditional short
  polling.
* :mod:`~tidings.longpoll.retry_after`: ``Retry-After`` without a clock.
"""

from tidings.longpoll.adaptive import DEFAULT_ACTIVE_INTERVAL, DEFAULT_IDLE_INTERVAL, AdaptivePoller
from tidings.longpoll.client import (
    ClientState,
    LongPollClient,
    OutgoingPoll,
    PollEvent,
    PollRejected,
    PollReset,
)
from tidings.longpoll.request import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_LIMIT,
    MAX_TIMEOUT,
    Cursor,
    PollLimits,
    PollRequest,
    parse_poll_request,
)
from tidings.longpoll.server import (
    LongPollServer,
    PollAnswer,
    ReadableHistory,
    encode_poll_body,
    error_answer,
)
from tidings.retry_after import parse_http_date, parse_retry_after

__all__ = [
    "DEFAULT_ACTIVE_INTERVAL",
    "DEFAULT_IDLE_INTERVAL",
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT",
    "MAX_LIMIT",
    "MAX_TIMEOUT",
    "AdaptivePoller",
    "ClientState",
    "Cursor",
    "LongPollClient",
    "LongPollServer",
    "OutgoingPoll",
    "PollAnswer",
    "PollEvent",
    "PollLimits",
    "PollRejected",
    "PollRequest",
    "PollReset",
    "ReadableHistory",
    "encode_poll_body",
    "error_answer",
    "parse_http_date",
    "parse_poll_request",
    "parse_retry_after",
]
