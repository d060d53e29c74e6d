"""Fixtures of the Redis history tests: a real ``redis-server`` per test module.

The tests are skipped when ``redis-server`` is not installed, except on CI
(``CI=true``), where that fails: ``.ci/run`` installs it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

try:
    from tests.redis._redis import RedisServer
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _redis import RedisServer  # type: ignore[no-redef]

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running ``redis-server`` of this test module (persistence off)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests sharing a server do not meet."""
    return f"test{next(_prefixes)}:"
