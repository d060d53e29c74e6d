"""tidings: live updates over SSE, long polling and WebSockets that survive every disconnect.

The names here are the sans-IO core: protocol machines and building blocks that do
no I/O, read no clock and draw no random numbers of their own.  The Trio adapters
(server, hub, clients) live in :mod:`tidings.trio`.  Every client, whatever its
transport, yields :class:`Event` and :class:`ResetNotice` and decides about
reconnecting with one :class:`Retrier`.

The library logs under ``tidings.*`` (reconnections at INFO and DEBUG) and prints
nothing itself: configure :mod:`logging` in the application to see it.
"""

import logging

from tidings.backoff import (
    Backoff,
    BackoffPolicy,
    DecorrelatedJitter,
    EqualJitter,
    FullJitter,
    Loss,
    NoJitter,
    Random,
    default_backoff,
)
from tidings.cursor import EARLIEST, MAX_CURSOR_LENGTH, Position, new_epoch
from tidings.dedup import PublishDeduplicator
from tidings.errors import InvalidCursor, LocalProtocolError, ProtocolError, RemoteProtocolError
from tidings.events import Event, ResetNotice
from tidings.follow import CaughtUp, Deliver, FollowAction, Follower, FollowState, ReadHistory
from tidings.history import MemoryHistory, Replay, Reset, ResetReason, StoredEvent
from tidings.longpoll import (
    AdaptivePoller,
    LongPollClient,
    LongPollServer,
    PollAnswer,
    PollEvent,
    PollLimits,
    PollRejected,
    PollRequest,
    PollReset,
    error_answer,
    parse_poll_request,
)
from tidings.names import (
    MAX_EVENT_TYPE_LENGTH,
    MAX_TOPIC_LENGTH,
    check_event_type,
    check_topic,
    is_valid_event_type,
    is_valid_topic,
)
from tidings.retry import (
    RETRY_STATUSES,
    GiveUp,
    Reconnect,
    Retrier,
    Verdict,
    classify_close,
    classify_http,
)
from tidings.retry_after import parse_http_date, parse_retry_after
from tidings.session import (
    ClosePeer,
    Connect,
    HeartbeatPolicy,
    ReconnectingSession,
    SendPing,
    SessionState,
    Wait,
)
from tidings.sse import (
    EventSourceClient,
    EventSourceCloseReason,
    EventSourceState,
    EventStreamParser,
    MessageEvent,
    ServerSentEvent,
    encode_comment,
    encode_event,
)
from tidings.ws import (
    SUBPROTOCOL,
    ErrorMessage,
    EventMessage,
    MessageTooBig,
    PublishAcknowledged,
    PublishFailed,
    ResetMessage,
    SessionClient,
    SessionServer,
    SubscribedMessage,
)

__version__ = "0.1.0.dev0"

# A library leaves output to the application: without this, logging's last-resort
# handler would print this package's warnings on stderr when nothing is configured.
logging.getLogger("tidings").addHandler(logging.NullHandler())

__all__ = [
    "is_valid_topic",
    "is_valid_event_type",
    "check_topic",
    "check_event_type",
    "ReadHistory",
    "MAX_TOPIC_LENGTH",
    "MAX_EVENT_TYPE_LENGTH",
    "Follower",
    "FollowState",
    "FollowAction",
    "Deliver",
    "CaughtUp",
    "EARLIEST",
    "MAX_CURSOR_LENGTH",
    "RETRY_STATUSES",
    "SUBPROTOCOL",
    "AdaptivePoller",
    "Backoff",
    "BackoffPolicy",
    "ClosePeer",
    "Connect",
    "DecorrelatedJitter",
    "EqualJitter",
    "ErrorMessage",
    "Event",
    "EventMessage",
    "EventSourceClient",
    "EventSourceCloseReason",
    "EventSourceState",
    "EventStreamParser",
    "FullJitter",
    "GiveUp",
    "HeartbeatPolicy",
    "InvalidCursor",
    "LocalProtocolError",
    "LongPollClient",
    "Loss",
    "LongPollServer",
    "MemoryHistory",
    "MessageEvent",
    "MessageTooBig",
    "NoJitter",
    "PollAnswer",
    "PollEvent",
    "PollLimits",
    "PollRejected",
    "PollRequest",
    "PollReset",
    "Position",
    "ProtocolError",
    "PublishAcknowledged",
    "PublishDeduplicator",
    "PublishFailed",
    "Random",
    "Reconnect",
    "ReconnectingSession",
    "RemoteProtocolError",
    "Replay",
    "Reset",
    "ResetMessage",
    "ResetNotice",
    "ResetReason",
    "Retrier",
    "SendPing",
    "ServerSentEvent",
    "SessionClient",
    "SessionServer",
    "SessionState",
    "StoredEvent",
    "SubscribedMessage",
    "Verdict",
    "Wait",
    "__version__",
    "classify_close",
    "classify_http",
    "default_backoff",
    "encode_comment",
    "encode_event",
    "error_answer",
    "new_epoch",
    "parse_http_date",
    "parse_poll_request",
    "parse_retry_after",
]
