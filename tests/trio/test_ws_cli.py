"""``python -m tidings tail --transport ws``, run as a real subprocess against a real
server on 127.0.0.1: the same JSON lines as the SSE and long-poll tails."""

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
    return await start_cli(nursery, "tail", "--transport", "ws", *args)


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def test_tail_over_ws_prints_replayed_and_live_events_as_json_lines(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    ids = [(await hub.publish("news", f"n{i}")).format() for i in range(3)]
    process = await start_tail(
        nursery, ws_url(server), "--topic", "news", "--last-event-id", ids[0]
    )
    got, live, status = await replay_then_live(process, hub, "news")
    assert status == 0
    assert got == [
        {"id": ids[1], "event": "message", "data": "n1"},
        {"id": ids[2], "event": "message", "data": "n2"},
        {"id": live.format(), "event": "tick", "data": "multi\nline"},
    ]


async def test_tail_over_ws_prints_a_reset_line_for_an_unknown_cursor(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    head = await hub.publish("news", "x")
    process = await start_tail(
        nursery, ws_url(server), "--topic", "news", "--last-event-id", "other.5"
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        reset = json.loads(await lines.next())
        assert reset == {"reset": True, "cursor": f"{head.epoch}.0"}
        assert json.loads(await lines.next())["id"] == head.format()
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_tail_over_ws_with_several_topics_labels_each_line(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    process = await start_tail(
        nursery, ws_url(server), "--topic", "a", "--topic", "b", "--last-event-id", "earliest"
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        event = await hub.publish("b", "to b")
        line = json.loads(await lines.next())
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert line == {
        "id": event.format(),
        "event": "message",
        "data": "to b",
        "topic": "b",
    }


async def test_tail_over_ws_without_a_topic_is_a_usage_error() -> None:
    result = await run_cli("tail", "--transport", "ws", "ws://127.0.0.1:9/ws")
    assert result.returncode == 2
    assert b"--topic" in result.stderr


async def test_tail_over_ws_refused_by_the_server_exits_1(server: Server) -> None:
    # /healthz answers 200 to the handshake instead of 101: a refused session.
    url = f"ws://127.0.0.1:{server.port}/healthz"
    result = await run_cli("tail", "--transport", "ws", url, "--topic", "t")
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("transport", ["sse", "poll", "ws"])
async def test_tail_ends_quietly_when_its_reader_goes_away(
    nursery: trio.Nursery, server: Server, hub: Hub, transport: str
) -> None:
    """``tidings tail ... | head -1``: a closed stdout ends the tail with status 0."""
    first = (await hub.publish("news", "one")).format()
    base = f"http://127.0.0.1:{server.port}/topics/news"
    url = {"sse": f"{base}/events", "poll": f"{base}/poll", "ws": ws_url(server)}[transport]
    extra = ["--topic", "news"] if transport == "ws" else []
    process = await start_cli(
        nursery, "tail", "--transport", transport, url, *extra, "--last-event-id", "earliest"
    )
    assert process.stdout is not None
    assert process.stderr is not None
    with trio.fail_after(TIMEOUT):
        assert json.loads(await Lines(process.stdout).next())["id"] == first
        await process.stdout.aclose()  # the reader leaves, like `head -1`
        await hub.publish("news", "two")  # its line cannot be written: EPIPE
        await process.wait()
        errors = await process.stderr.receive_some(65536)
    assert process.returncode == 0
    assert b"Traceback" not in errors
