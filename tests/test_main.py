"""The command line, run as real subprocesses against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from tidings.__main__ import build_parser, main
from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub, Server, serve
from tidings.trio.client._http import open_request

try:
    from tests.trio._cli import TIMEOUT, Lines, replay_then_live, run_cli, start_cli
except ImportError:  # tests/ is not a package: pytest put tests/trio on sys.path
    from _cli import TIMEOUT, Lines, replay_then_live, run_cli, start_cli  # type: ignore[no-redef]

# Each step has its own TIMEOUT; the whole test (tests/conftest.py) gets twice that.
pytestmark = pytest.mark.deadline(2 * TIMEOUT)


@pytest.fixture
def hub() -> Hub:
    return Hub(MemoryHistory(new_epoch(random.Random(3)), max_events=100))


@pytest.fixture
async def server(nursery: trio.Nursery, hub: Hub) -> AsyncIterator[Server]:
    server: Server = await nursery.start(partial(serve, hub, 0))
    yield server
    server.drain()


# -- serve ----------------------------------------------------------------------------


async def test_serve_prints_its_url_serves_and_exits_0_on_sigint(nursery: trio.Nursery) -> None:
    process = await start_cli(nursery, "serve", "--port", "0", "--history", "5")
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        url = await Lines(process.stdout).next()
        assert url.startswith("http://127.0.0.1:")
        ids = []
        for n in range(1, 8):  # seven events into a history of five
            async with open_request("POST", url + "/topics/t", body=f"e{n}".encode()) as response:
                assert response.status == 201
                ids.append(json.loads(await response.read())["id"])
        # A short poll from the earliest retained event: only the last five are left.
        async with open_request(
            "GET", url + "/topics/t/poll?cursor=earliest&timeout=0", http2=True
        ) as response:
            assert response.status == 200
            answer = json.loads(await response.read())
        async with open_request("GET", url + "/healthz", http2=True) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    assert ids[0].endswith(".1")
    assert answer["reset"] is False
    assert [(e["id"], e["data"]) for e in answer["events"]] == [
        (ids[n - 1], f"e{n}") for n in range(3, 8)
    ]
    assert answer["cursor"] == ids[-1]


async def test_serve_with_a_certificate_speaks_tls_and_tail_follows_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    files = ["--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem")]
    server = await start_cli(nursery, "serve", "--port", "0", *files)
    assert server.stdout is not None
    with trio.fail_after(TIMEOUT):
        url = await Lines(server.stdout).next()
        assert url.startswith("https://127.0.0.1:")
        tail = await start_cli(
            nursery, "tail", url + "/topics/t/events", "--cacert", str(tmp_path / "ca.pem")
        )
        assert tail.stdout is not None
        assert tail.stderr is not None
        stderr = Lines(tail.stderr)
        assert "(HTTP/2)" in await stderr.next()  # ALPN chose HTTP/2
        published = await run_cli(
            "publish", url + "/topics/t", "secret", "--cacert", str(tmp_path / "ca.pem")
        )
        assert published.returncode == 0, published.stderr
        line = json.loads(await Lines(tail.stdout).next())
        assert line == {
            "id": published.stdout.decode().strip(),
            "event": "message",
            "data": "secret",
        }
        tail.send_signal(signal.SIGINT)
        server.send_signal(signal.SIGTERM)
        assert await tail.wait() == 0
        assert await server.wait() == 0


async def test_serve_on_a_busy_port_exits_1_with_a_message(server: Server) -> None:
    result = await run_cli("serve", "--port", str(server.port))
    assert result.returncode == 1
    assert b"cannot listen" in result.stderr


async def test_serve_max_connections_caps_connections_but_not_health_probes(
    nursery: trio.Nursery,
) -> None:
    process = await start_cli(nursery, "serve", "--port", "0", "--max-connections", "1")
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        url = await Lines(process.stdout).next()
        port = int(url.rsplit(":", 1)[1])
        # One event stream takes the only place.
        async with await trio.open_tcp_stream("127.0.0.1", port) as held:
            await held.send_all(b"GET /topics/t/events HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await held.receive_some()).startswith(b"HTTP/1.1 200 ")
            async with open_request("GET", url + "/topics/t/poll?timeout=0") as response:
                assert response.status == 503
            for path in ("/healthz", "/readyz"):
                async with open_request("GET", url + path) as response:
                    assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_serve_refuses_a_max_connections_below_1() -> None:
    result = await run_cli("serve", "--port", "0", "--max-connections", "0")
    assert result.returncode == 2
    assert b"--max-connections" in result.stderr


# -- publish --------------------------------------------------------------------------


async def test_publish_prints_the_event_id(server: Server, hub: Hub) -> None:
    result = await run_cli("publish", server.url + "/topics/news", "hello", "--event", "tick")
    assert result.returncode == 0, result.stderr
    [stored] = hub.history.memory.read("news", f"{hub.history.memory.head('news').epoch}.0").events  # type: ignore[union-attr]
    assert result.stdout.decode().strip() == stored.position.format()
    assert (stored.data, stored.event) == ("hello", "tick")


async def test_publish_refused_exits_1_with_the_status_on_stderr(server: Server) -> None:
    result = await run_cli("publish", server.url + "/topics/bad%20name", "x")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"400" in result.stderr


async def test_publish_to_nowhere_exits_1_with_a_message() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_cli("publish", f"http://127.0.0.1:{port}/topics/t", "x")
    assert result.returncode == 1
    assert b"connection failed" in result.stderr


# -- tail -----------------------------------------------------------------------------


async def test_tail_prints_replayed_and_live_events_as_json_lines(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    ids = [(await hub.publish("news", f"n{i}")).format() for i in range(3)]
    process = await start_cli(
        nursery, "tail", server.url + "/topics/news/events", "--last-event-id", ids[0]
    )
    got, live, status = await replay_then_live(process, hub, "news")
    assert status == 0
    assert got == [
        {"id": ids[1], "event": "message", "data": "n1"},
        {"id": ids[2], "event": "message", "data": "n2"},
        {"id": live.format(), "event": "tick", "data": "multi\nline"},
    ]


async def test_tail_prints_a_reset_line_for_an_unusable_id(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    head = (await hub.publish("news", "old")).format()
    process = await start_cli(
        nursery, "tail", server.url + "/topics/news/events", "--last-event-id", "no.such", "--http2"
    )
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        assert json.loads(await Lines(process.stdout).next()) == {"reset": True, "cursor": head}
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_tail_of_something_that_is_not_a_stream_exits_1(server: Server) -> None:
    result = await run_cli("tail", server.url + "/healthz")
    assert result.returncode == 1
    assert b"not text/event-stream" in result.stderr


def test_tail_refuses_an_unknown_transport(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tail", "http://h/", "--transport", "carrier-pigeon"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tidings tail")  # the subcommand's usage
    assert "invalid choice: 'carrier-pigeon' (choose from 'poll', 'sse', 'ws')" in err


def test_help_documents_the_exit_statuses() -> None:
    text = build_parser().format_help()
    for status in ("0 success", "1 failure", "2 bad command line"):
        assert status in " ".join(text.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "ftp://h/x", "data"], "http or https"),
        (["tail", "ftp://h/x"], "http or https"),
        (["tail", "http://h/x", "--last-event-id", "a\nb"], "cannot be sent"),
    ],
)
async def test_a_bad_url_or_id_is_a_usage_error(args: list[str], message: str) -> None:
    result = await run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


async def test_serve_with_a_publish_token_guards_publishing_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = await start_cli(nursery, "serve", "--port", "0", "--publish-token", "t0ken")
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        url = await Lines(process.stdout).next()
        refused = await run_cli("publish", url + "/topics/t", "x")
        admitted = await run_cli("publish", url + "/topics/t", "x", "--token", "t0ken")
        async with open_request("GET", url + "/topics/t/poll?cursor=earliest&timeout=0") as r:
            assert r.status == 200  # reading stays open
            answer = json.loads(await r.read())
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    assert refused.returncode == 1
    assert b"401" in refused.stderr
    assert admitted.returncode == 0
    assert [e["id"] for e in answer["events"]] == [admitted.stdout.decode().strip()]


async def test_serve_admits_publishes_from_the_allowed_origin_only(
    nursery: trio.Nursery,
) -> None:
    process = await start_cli(
        nursery, "serve", "--port", "0", "--allow-origin", "https://app.example"
    )
    assert process.stdout is not None
    statuses = []
    with trio.fail_after(TIMEOUT):
        url = await Lines(process.stdout).next()
        for origin in ("https://app.example", "http://evil.example", None):
            headers = [("origin", origin)] if origin else []
            async with open_request(
                "POST", url + "/topics/t", headers=headers, body=b"x"
            ) as response:
                statuses.append(response.status)
                cors = dict(response.headers).get(b"access-control-allow-origin")
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    assert statuses == [201, 403, 201]
    assert cors == b"https://app.example"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_publish_flood_stays_within_the_history_budget(nursery: trio.Nursery) -> None:
    """The attack that took a default server to 2.5 GB, at small scale: 1 MiB
    publishes to many topics.  The history keeps its budget; memory stays bounded."""
    process = await start_cli(nursery, "serve", "--port", "0", "--history-bytes", "16M")
    assert process.stdout is not None
    body = b"x" * (1024 * 1024 - 100)
    with trio.fail_after(4 * TIMEOUT):
        url = await Lines(process.stdout).next()
        async with open_request("POST", url + "/topics/warm", body=b"x") as response:
            assert response.status == 201
        before = _rss_kib(process.pid)
        for n in range(160):  # 160 MiB into a 16 MiB budget, over 40 topics
            async with open_request("POST", f"{url}/topics/t{n % 40}", body=body) as response:
                assert response.status == 201
        after = _rss_kib(process.pid)
        async with open_request("POST", url + "/topics/t", body=body + b"x" * 200) as response:
            too_big = response.status
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    assert too_big == 413  # a single event over the per-event limit
    # 16 MiB retained, plus the allocator's slack: far below the 160 MiB sent.
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) // 1024} MiB"


async def test_serve_logs_one_json_line_per_start_and_stop_and_serves_metrics(
    nursery: trio.Nursery,
) -> None:
    pytest.importorskip("prometheus_client")
    process = await start_cli(nursery, "--log-format", "json", "serve", "--port", "0", "--metrics")
    assert process.stdout is not None
    assert process.stderr is not None
    with trio.fail_after(TIMEOUT):
        url = await Lines(process.stdout).next()
        errors = Lines(process.stderr)
        start = json.loads(await errors.next())
        async with open_request("POST", url + "/topics/t", body=b"x") as response:
            assert response.status == 201
        async with open_request("GET", url + "/metrics") as response:
            assert response.status == 200
            exposition = (await response.read()).decode()
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        stop = json.loads(await errors.next())
        rest = await process.stderr.receive_some()
    assert start["level"] == "info"
    assert start["logger"] == "tidings"
    assert start["message"].startswith(f"serving {url} (")
    assert stop["message"] == "stopped"
    assert not rest  # nothing else: routine events log below INFO
    assert "tidings_published_total 1.0" in exposition.splitlines()
