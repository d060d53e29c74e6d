"""h2load (nghttp2) as a real HTTP/2 client of our server: many concurrent streams
over a few connections, with prior knowledge (h2c) and over TLS with ALPN.

Each test starts the server on 127.0.0.1 (random port), runs the ``h2load`` binary
to its end against it and reads the summary it prints; the publishing test then
checks the hub's history holds exactly what was posted.
"""

from __future__ import annotations

import random
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trustme

from tidings.cursor import EARLIEST, new_epoch
from tidings.history import MemoryHistory, Replay
from tidings.trio import Hub, Server, ServerConfig

try:
    from tests.trio._tools import require_program
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _tools import require_program  # type: ignore[no-redef]

if TYPE_CHECKING:
    from conftest import StartServer

pytestmark = [pytest.mark.external, pytest.mark.timeout(60)]

#: Bound on each h2load run; the runs here take well under a second.
WAIT = 20.0


@pytest.fixture(scope="module")
def h2load() -> str:
    """The h2load executable; skip when missing, except on CI (then fail)."""
    return require_program(
        "h2load", reason="h2load is not installed (Debian package nghttp2-client)"
    )


@pytest.fixture
def hub() -> Hub:
    """A hub whose history holds every event the publishing test posts."""
    return Hub(MemoryHistory(new_epoch(random.Random(7)), max_events=10_000))


@dataclass
class Summary:
    """What h2load printed at the end of a run."""

    protocol: str
    requests: dict[str, int]
    status: dict[str, int]
    output: str

    @classmethod
    def parse(cls, output: str) -> Summary:
        protocol = re.search(r"^Application protocol: (\S+)$", output, re.M)
        requests = re.search(r"^requests: (.*)$", output, re.M)
        status = re.search(r"^status codes: (.*)$", output, re.M)
        assert protocol, output
        assert requests, output
        assert status, output
        return cls(protocol[1], _counts(requests[1]), _counts(status[1]), output)

    def assert_all_succeeded(self, count: int) -> None:
        """*count* requests made, every one answered with a 2xx status."""
        expected = {"total": count, "started": count, "done": count, "succeeded": count}
        assert {k: self.requests[k] for k in expected} == expected, self.output
        assert (self.requests["failed"], self.requests["errored"]) == (0, 0), self.output
        assert self.requests.get("timeout", 0) == 0, self.output  # newer h2load only
        assert self.status == {"2xx": count, "3xx": 0, "4xx": 0, "5xx": 0}, self.output


def _counts(text: str) -> dict[str, int]:
    """``"2000 total, 0 failed"`` -> ``{"total": 2000, "failed": 0}``."""
    pairs = [item.split() for item in text.split(",")]
    return {name: int(number) for number, name in pairs}


async def run_h2load(h2load: str, *args: str) -> Summary:
    """Run ``h2load ARGS`` to its end (at most WAIT seconds); parse its summary."""
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [h2load, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, (output, result.stderr)
    return Summary.parse(output)


# -- prior knowledge (h2c) ----------------------------------------------------------


async def test_h2load_health_checks_over_many_multiplexed_streams_all_succeed(
    h2load: str, server: Server
) -> None:
    # 4 connections with 16 concurrent streams each: 2000 requests in all.
    summary = await run_h2load(h2load, "-n", "2000", "-c", "4", "-m", "16", server.url + "/healthz")
    assert summary.protocol == "h2c"
    summary.assert_all_succeeded(2000)


async def test_h2load_posts_are_all_published_once_each_in_the_history(
    h2load: str, hub: Hub, server: Server, tmp_path: Path
) -> None:
    count = 500
    body = tmp_path / "body.txt"
    body.write_text("from h2load ✓", "utf-8")
    url = server.url + "/topics/h2load"
    summary = await run_h2load(
        h2load, "-n", str(count), "-c", "4", "-m", "16", "-d", str(body), url
    )
    assert summary.protocol == "h2c"
    summary.assert_all_succeeded(count)  # 201 Created each
    # Exactly one event per request: none lost, none doubled, offsets without gaps.
    head = hub.history.memory.head("h2load")
    assert head.offset == count
    replay = hub.history.memory.read("h2load", EARLIEST, limit=count + 1)
    assert isinstance(replay, Replay)
    assert [e.position.offset for e in replay.events] == list(range(1, count + 1))
    assert {(e.data, e.event) for e in replay.events} == {("from h2load ✓", None)}
    assert replay.cursor == head


# -- TLS with ALPN ------------------------------------------------------------------


async def test_h2load_over_tls_negotiates_h2_by_alpn_and_all_succeed(
    h2load: str, start_server: StartServer, ca: trustme.CA
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = await start_server(config=ServerConfig(), ssl_context=context)
    assert server.url.startswith("https://127.0.0.1:")
    # h2load offers h2 and http/1.1 by ALPN (and checks no certificate).
    summary = await run_h2load(h2load, "-n", "400", "-c", "2", "-m", "8", server.url + "/healthz")
    assert summary.protocol == "h2"
    summary.assert_all_succeeded(400)
