"""``tidings tail`` and friends fail in one line with the right exit status, whatever the
transport: a 404, an HTML page, a refused connection, a timeout, a bad command line."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from tidings import __version__
from tidings.__main__ import main
from tidings.trio import Server

try:
    from tests.trio._cli import TIMEOUT, run_cli
    from tests.trio._fake_http import FakeServer, Reply
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _cli import TIMEOUT, run_cli  # type: ignore[no-redef]
    from _fake_http import FakeServer, Reply  # type: ignore[no-redef]

# Each step has its own TIMEOUT; the whole test (tests/conftest.py) gets twice that.
pytestmark = pytest.mark.deadline(2 * TIMEOUT)

TRANSPORTS = ["sse", "poll", "ws"]


def endpoint(transport: str, port: int, topic: str = "t") -> list[str]:
    """The tail arguments that follow *topic* at 127.0.0.1:*port* over *transport*."""
    if transport == "ws":
        return [f"ws://127.0.0.1:{port}/ws", "--transport", "ws", "--topic", topic]
    name = "events" if transport == "sse" else "poll"
    return [f"http://127.0.0.1:{port}/topics/{topic}/{name}", "--transport", transport]


def assert_one_line(stderr: bytes, *fragments: str) -> str:
    lines = [line for line in stderr.decode().splitlines() if line.startswith("tidings tail:")]
    assert len(lines) == 1, stderr.decode()
    assert "Traceback" not in stderr.decode()
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_404_is_one_line_and_exit_1(server: Server, transport: str) -> None:
    args = endpoint(transport, server.port)
    args[0] = args[0].replace("/topics/t/", "/nope/").replace("/ws", "/nope")
    result = await run_cli("tail", *args)
    assert result.returncode == 1
    assert result.stdout == b""
    assert_one_line(result.stderr, "404")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_html_page_is_one_line_and_exit_1(nursery: trio.Nursery, transport: str) -> None:
    page = Reply(headers=[("content-type", "text/html")], chunks=[b"<h1>Welcome</h1>"])
    server = await FakeServer(lambda seen, index: page).start(nursery)
    result = await run_cli("tail", *endpoint(transport, server.port))
    assert result.returncode == 1
    line = assert_one_line(result.stderr)
    if transport == "ws":
        assert "200" in line
        assert "not a WebSocket endpoint" in line
    else:
        assert "text/html" in line


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_connection_is_retried_then_given_up_in_one_line(transport: str) -> None:
    result = await run_cli("tail", *endpoint(transport, free_port()), "--max-retries", "1")
    assert result.returncode == 1
    assert_one_line(result.stderr, "gave up after 1 retries", "network error")


@pytest.fixture
async def silent_port(nursery: trio.Nursery) -> int:
    """A port that accepts connections and never answers."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_timeout_is_retried_then_given_up_in_one_line(
    silent_port: int, transport: str
) -> None:
    result = await run_cli(
        "tail",
        *endpoint(transport, silent_port),
        "--connect-timeout",
        "0.5",
        "--max-retries",
        "0",
    )
    assert result.returncode == 1
    assert_one_line(result.stderr, "gave up after 0 retries", "timed out")


async def test_poll_pointed_at_an_event_stream_fails_on_its_content_type(
    server: Server,
) -> None:
    with trio.fail_after(TIMEOUT):  # the poll's hold plus grace alone would be 35 s
        result = await run_cli("tail", server.url + "/topics/t/events", "--transport", "poll")
    assert result.returncode == 1
    assert_one_line(result.stderr, "text/event-stream", "use --transport sse")


async def test_sse_pointed_at_a_poll_endpoint_suggests_poll(server: Server) -> None:
    # timeout=0: the poll answers at once instead of holding the request.
    result = await run_cli("tail", server.url + "/topics/t/poll?timeout=0")
    assert result.returncode == 1
    assert_one_line(result.stderr, "application/json", "use --transport poll")


# -- the command line itself (in this process: argparse exits before any I/O) -------------


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_websocket_url_without_transport_ws_suggests_it(
    capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    err = usage_error(capsys, "tail", f"{scheme}://127.0.0.1:9/ws")
    assert err.startswith("usage: tidings tail")
    assert "add --transport ws" in err


def test_transport_ws_with_an_http_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = usage_error(capsys, "tail", "http://127.0.0.1:9/ws", "--transport", "ws", "--topic", "t")
    assert "ws:// or wss://" in err


@pytest.mark.parametrize("topic", ["a b", "a/b", "..", "x" * 129, "caf\u00e9"])
def test_websocket_topics_are_checked_with_the_servers_rule(
    capsys: pytest.CaptureFixture[str], topic: str
) -> None:
    err = usage_error(capsys, "tail", "ws://127.0.0.1:9/ws", "--transport", "ws", "--topic", topic)
    assert "is not a topic name" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "http"], "'http' is not a port number"),
        (["serve", "--port", "70000"], "not a port number (0 to 65535)"),
        (["serve", "--history", "many"], "'many' is not a whole number"),
        (["serve", "--retry", "-5"], "must be 0 or more"),
        (["tail", "http://h/", "--max-retries", "x"], "'x' is not a whole number"),
        (["tail", "http://h/", "--idle-timeout", "soon"], "is not a number of seconds"),
        (["publish", "http://h/t", "d", "--timeout", "nan"], "positive number of seconds"),
    ],
)
def test_bad_values_are_explained_without_internal_names(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    err = usage_error(capsys, *args)
    assert message in err
    assert "invalid _" not in err
    assert f"usage: tidings {args[0]}" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tidings {__version__}"


def test_serve_help_lists_every_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for endpoint_line in (
        "GET  /topics/{topic}/events",
        "GET  /topics/{topic}/poll",
        "POST /topics/{topic}",
        "GET  /ws",
        "GET  /healthz",
        "GET  /readyz",
        "--retry MS",
    ):
        assert endpoint_line in text
