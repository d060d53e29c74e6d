"""curl as a real client of the poll endpoint: answers, the ``304`` path and a held
request woken by a publish, over HTTP/1.1 and HTTP/2 with prior knowledge."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from tidings.trio import Hub, Server

try:
    from tests.trio._tools import require_program
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _tools import require_program  # type: ignore[no-redef]

pytestmark = [pytest.mark.external, pytest.mark.timeout(60)]

POLL = "/topics/t/poll"
CURL_MAX_TIME = "20"
WAIT = 10.0
PROTOCOLS = [
    pytest.param("--http1.1", "HTTP/1.1", id="http1.1"),
    pytest.param("--http2-prior-knowledge", "HTTP/2", id="h2c-prior-knowledge"),
]


@pytest.fixture(scope="module")
def curl() -> str:
    """The curl executable; skip when missing, except on CI (then fail)."""
    return require_program("curl", reason="curl is not installed")


async def run_curl(curl: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl with ``-s -i`` and split what it printed into status, headers, body."""
    result = await trio.run_process(
        [curl, "-s", "-i", "--max-time", CURL_MAX_TIME, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("flag", "version"), PROTOCOLS)
async def test_curl_with_if_none_match_gets_304_when_nothing_is_new(
    curl: str, server: Server, hub: Hub, flag: str, version: str
) -> None:
    cursor = (await hub.publish("t", "x")).format()
    with trio.fail_after(WAIT):
        status, headers, body = await run_curl(
            curl, flag, "-H", f'If-None-Match: "{cursor}"', f"{server.url}{POLL}?timeout=0"
        )
    assert status == 304
    assert body == b""
    assert headers["etag"] == f'"{cursor}"'
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("flag", "version"), PROTOCOLS)
async def test_curl_with_if_none_match_gets_the_events_after_its_cursor(
    curl: str, server: Server, hub: Hub, flag: str, version: str
) -> None:
    cursor = (await hub.publish("t", "old")).format()
    new = await hub.publish("t", "new", event="tick")
    with trio.fail_after(WAIT):
        status, headers, body = await run_curl(
            curl, flag, "-H", f'If-None-Match: W/"{cursor}"', f"{server.url}{POLL}"
        )
    assert status == 200
    assert headers["etag"] == f'"{new}"'
    assert json.loads(body) == {
        "events": [{"id": new.format(), "event": "tick", "data": "new"}],
        "cursor": new.format(),
        "reset": False,
    }


@pytest.mark.parametrize(("flag", "version"), PROTOCOLS)
async def test_curl_held_request_is_answered_by_a_publish(
    curl: str, server: Server, hub: Hub, flag: str, version: str
) -> None:
    cursor = hub.history.memory.head("t").format()
    results: list[tuple[int, dict[str, str], bytes]] = []

    async def poll() -> None:
        results.append(await run_curl(curl, flag, f"{server.url}{POLL}?cursor={cursor}"))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while hub.subscriber_count("t") < 1:
                await trio.testing.wait_all_tasks_blocked(0.01)
            stored = await hub.publish("t", "woken")
    status, _, body = results[0]
    assert status == 200
    assert json.loads(body)["events"] == [{"id": stored.format(), "event": None, "data": "woken"}]


async def test_curl_malformed_cursor_is_a_400_json_error(
    curl: str, server: Server, hub: Hub
) -> None:
    with trio.fail_after(WAIT):
        status, headers, body = await run_curl(
            curl, "-H", 'If-None-Match: "not a cursor"', f"{server.url}{POLL}"
        )
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)
