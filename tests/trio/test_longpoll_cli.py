"""``python -m tidings tail --transport poll``, run as a real subprocess against a real
server on 127.0.0.1: the same JSON lines as the SSE tail."""

from __future__ import annotations

import json
import signal

import pytest
import trio

from tidings.trio import Hub, Server

try:
    from tests.trio._cli import TIMEOUT, Lines, replay_then_live, run_cli, start_cli
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _cli import TIMEOUT, Lines, replay_then_live, run_cli, start_cli  # type: ignore[no-redef]

# Each step has its own TIMEOUT; the whole test (tests/conftest.py) gets twice that.
pytestmark = pytest.mark.deadline(2 * TIMEOUT)


async def start_tail(nursery: trio.Nursery, *args: str) -> trio.Process:
    return await start_cli(nursery, "tail", "--transport", "poll", *args)


@pytest.mark.parametrize("http", [[], ["--http2"]], ids=["http1.1", "h2c"])
async def test_tail_over_poll_prints_replayed_and_live_events_as_json_lines(
    nursery: trio.Nursery, server: Server, hub: Hub, http: list[str]
) -> None:
    ids = [(await hub.publish("news", f"n{i}")).format() for i in range(3)]
    process = await start_tail(
        nursery, server.url + "/topics/news/poll", "--last-event-id", ids[0], *http
    )
    got, live, status = await replay_then_live(process, hub, "news")
    assert status == 0
    assert got == [
        {"id": ids[1], "event": "message", "data": "n1"},
        {"id": ids[2], "event": "message", "data": "n2"},
        {"id": live.format(), "event": "tick", "data": "multi\nline"},
    ]


async def test_tail_over_poll_prints_a_reset_line_for_an_evicted_cursor(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    first = await hub.publish("news", "old")
    for i in range(120):  # the fixture's history keeps 100
        head = await hub.publish("news", str(i))
    process = await start_tail(
        nursery, server.url + "/topics/news/poll", "--last-event-id", first.format()
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        # The reset stands where events were lost; the 100 retained ones follow.
        cursor = f"{first.epoch}.{head.offset - 100}"
        assert json.loads(await lines.next()) == {"reset": True, "cursor": cursor}
        replayed = [json.loads(await lines.next()) for _ in range(100)]
        assert replayed[0]["data"] == "20"
        assert replayed[-1]["id"] == head.format()
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_tail_over_poll_of_something_that_is_not_a_poll_endpoint_exits_1(
    server: Server,
) -> None:
    result = await run_cli("tail", "--transport", "poll", server.url + "/x")
    assert result.returncode == 1
    assert b"404" in result.stderr


async def test_tail_over_poll_with_a_malformed_cursor_is_a_usage_error() -> None:
    result = await run_cli(
        "tail",
        "--transport",
        "poll",
        "http://127.0.0.1:9/topics/t/poll",
        "--last-event-id",
        "not a cursor",
    )
    assert result.returncode == 2
    assert b"cursor" in result.stderr
