"""Redis-backed history: several server processes share topics (``pip install 'tidings[redis]'``).

:func:`open_redis_history` opens a :class:`RedisHistory`, the
:class:`~tidings.trio.history.History` that keeps each topic's recent events in a
Redis stream and fans every appended event out to every process over Redis PUB/SUB.
It uses `coredis <https://coredis.readthedocs.io>`_, which runs on Trio through anyio.
See :doc:`/scaling` for the layout in Redis and what clients see when Redis fails.
"""

try:
    import coredis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("tidings.redis needs coredis: pip install 'tidings[redis]'") from exc

from tidings.redis.history import (
    DEFAULT_MAX_CALLS,
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_EVENTS,
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    RedisClient,
    RedisHistory,
    open_redis_history,
)

__all__ = [
    "DEFAULT_MAX_CALLS",
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "RedisClient",
    "RedisHistory",
    "open_redis_history",
]
