"""A library logs and leaves output to the application: with logging not configured,
clients that reconnect (and give up) print nothing on stderr."""

from __future__ import annotations

import socket
import sys

import pytest
import trio

try:
    from tests.trio._cli import ENV, TIMEOUT
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _cli import ENV, TIMEOUT  # type: ignore[no-redef]

# Each step has its own TIMEOUT; the whole test (tests/conftest.py) gets twice that.
pytestmark = pytest.mark.deadline(2 * TIMEOUT)

SCRIPT = """
import sys
import trio
from tidings.trio import EventStreamFailed, SessionClosed, open_event_stream, open_session

async def main(kind, port):
    try:
        if kind == "sse":
            url = f"http://127.0.0.1:{port}/topics/t/events"
            async with open_event_stream(url, max_retries=2) as stream:
                async for _ in stream:
                    pass
        else:
            async with open_session(f"ws://127.0.0.1:{port}/ws", ["t"], max_retries=2) as s:
                async for _ in s:
                    pass
    except (EventStreamFailed, SessionClosed) as exc:
        print(type(exc).__name__)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


@pytest.mark.parametrize("kind", ["sse", "ws"])
async def test_reconnecting_clients_print_nothing_unless_logging_is_configured(
    kind: str,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-c", SCRIPT, kind, str(port)],
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
        )
    expected = "EventStreamFailed" if kind == "sse" else "SessionClosed"
    assert result.stdout.decode().split() == [expected]
    assert result.stderr == b""
