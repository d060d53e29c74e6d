"""The minimal streaming HTTP client, against a scripted HTTP/1.1 + HTTP/2 server."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trustme

from tidings.errors import LocalProtocolError
from tidings.trio.client._http import URL, HTTPTransportError, open_request

try:
    from tests.trio._fake_http import FakeServer, Reply, Seen
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _fake_http import FakeServer, Reply, Seen  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def echo(seen: Seen, index: int) -> Reply:
    return Reply(
        headers=[("content-type", "text/plain"), ("x-seen-body", str(len(seen.body)))],
        chunks=[b"hello ", b"world"],
    )


# -- URLs -----------------------------------------------------------------------------


def test_url_splits_scheme_host_port_and_target() -> None:
    assert URL.parse("http://example.com/a?b=1#frag") == URL("http", "example.com", 80, "/a?b=1")
    assert URL.parse("https://example.com") == URL("https", "example.com", 443, "/")
    assert URL.parse("HTTP://[::1]:8080/x").authority == "[::1]:8080"
    assert URL.parse("https://h:443/").authority == "h"
    assert str(URL.parse("http://h:81/p?q")) == "http://h:81/p?q"


@pytest.mark.parametrize(
    "url",
    ["ftp://h/", "http:///path", "http://user:pw@h/", "http://h:99999/", "ws://h/", "nonsense"],
)
def test_unusable_urls_are_local_errors(url: str) -> None:
    with pytest.raises(LocalProtocolError):
        URL.parse(url)


async def test_host_and_content_length_headers_belong_to_the_client() -> None:
    with pytest.raises(LocalProtocolError):
        async with open_request("GET", "http://127.0.0.1:1/", headers=[("Host", "x")]):
            pass


# -- HTTP/1.1 -------------------------------------------------------------------------


async def test_http11_get_streams_a_chunked_body(nursery: trio.Nursery) -> None:
    server = await FakeServer(echo).start(nursery)
    async with open_request("GET", server.url("/p?q=1"), headers=[("X-A", "b")]) as response:
        assert response.status == 200
        assert response.http_version == "1.1"
        assert response.get_header(b"content-type") == b"text/plain"
        assert await response.read() == b"hello world"
        assert await response.receive_some() == b""
    seen = server.requests[0]
    assert (seen.method, seen.target) == ("GET", "/p?q=1")
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["x-a"] == "b"


async def test_http11_post_sends_body_with_content_length(nursery: trio.Nursery) -> None:
    server = await FakeServer(echo).start(nursery)
    async with open_request("POST", server.url(), body=b"data!") as response:
        assert response.get_header(b"x-seen-body") == b"5"
    assert server.requests[0].body == b"data!"
    assert server.requests[0].headers["content-length"] == "5"


async def test_close_before_content_length_is_complete_is_a_transport_error(
    nursery: trio.Nursery,
) -> None:
    server = await FakeServer(lambda s, i: Reply(chunks=[b"abc"], length=10)).start(nursery)
    async with open_request("GET", server.url()) as response:
        with pytest.raises(HTTPTransportError):
            await response.read()


async def test_close_before_a_response_is_a_transport_error(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: Reply(raw=b"")).start(nursery)
    with pytest.raises(HTTPTransportError, match="before a response"):
        async with open_request("GET", server.url()):
            pass  # pragma: no cover


async def test_garbage_response_is_a_transport_error(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: Reply(raw=b"SSH-2.0-OpenSSH\r\n\r\n")).start(nursery)
    with pytest.raises(HTTPTransportError, match="invalid HTTP"):
        async with open_request("GET", server.url()):
            pass  # pragma: no cover


async def test_body_larger_than_read_limit_is_refused(nursery: trio.Nursery) -> None:
    server = await FakeServer(echo).start(nursery)
    async with open_request("GET", server.url()) as response:
        with pytest.raises(HTTPTransportError, match="larger than 4"):
            await response.read(max_size=4)


async def test_refused_connection_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HTTPTransportError, match="connection failed"):
        async with open_request("GET", f"http://127.0.0.1:{port}/"):
            pass  # pragma: no cover


# -- HTTP/2 ---------------------------------------------------------------------------


async def test_http2_prior_knowledge_get(nursery: trio.Nursery) -> None:
    server = await FakeServer(echo).start(nursery)
    async with open_request(
        "GET", server.url("/x"), headers=[("Connection", "keep-alive"), ("X-A", "b")], http2=True
    ) as response:
        assert response.http_version == "2"
        assert response.status == 200
        assert ("content-type", "text/plain") in [
            (k.decode(), v.decode()) for k, v in response.headers
        ]
        assert await response.read() == b"hello world"
    seen = server.requests[0]
    assert seen.http_version == "2"
    assert seen.target == "/x"
    assert "connection" not in seen.headers  # hop-by-hop headers are dropped on HTTP/2
    assert seen.headers["x-a"] == "b"


async def test_http2_post_larger_than_the_window_waits_for_window_updates(
    nursery: trio.Nursery,
) -> None:
    server = await FakeServer(echo).start(nursery)
    body = bytes(range(256)) * 1000  # 256 kB, four times the default window
    async with open_request("POST", server.url(), body=body, http2=True) as response:
        assert response.get_header(b"x-seen-body") == str(len(body)).encode()
    assert server.requests[0].body == body


async def test_http2_body_larger_than_the_window_is_acknowledged_as_read(
    nursery: trio.Nursery,
) -> None:
    big = b"x" * (3 * 1024 * 1024)
    server = await FakeServer(lambda s, i: Reply(chunks=[big])).start(nursery)
    async with open_request("GET", server.url(), http2=True) as response:
        assert await response.read(max_size=len(big)) == big


async def test_http2_stream_cut_short_is_a_transport_error(nursery: trio.Nursery) -> None:
    server = await FakeServer(lambda s, i: Reply(chunks=[b"abc"], hold=True)).start(nursery)
    async with open_request("GET", server.url(), http2=True) as response:
        assert await response.receive_some() == b"abc"
        nursery.cancel_scope.cancel()  # the server goes away mid-stream
        with pytest.raises(HTTPTransportError):
            await response.receive_some()


@pytest.mark.parametrize(
    "head",
    [
        [(":status", "abc")],
        [(":status", "+20")],
        [(":status", " 200")],
        [(":status", "2_0")],
        [(":status", "2000")],
        [(":status", "20")],
        [(":status", "")],
        [(":status", "099")],
        [(":status", "200"), (":status", "200")],
        [("content-type", "text/plain")],
        [(":status", "200"), ("content-length", "abc")],
        [(":status", "200"), ("content-length", "-1")],
        [(":status", "200"), ("content-length", "1"), ("content-length", "2")],
    ],
)
async def test_http2_hostile_response_head_is_a_transport_error(
    nursery: trio.Nursery, head: list[tuple[str, str]]
) -> None:
    server = await FakeServer(lambda s, i: Reply(h2_head=head, chunks=[b"x"])).start(nursery)
    with pytest.raises(HTTPTransportError, match="invalid HTTP from peer"):
        async with open_request("GET", server.url(), http2=True):
            pass  # pragma: no cover


async def test_http2_body_longer_than_its_content_length_is_a_transport_error(
    nursery: trio.Nursery,
) -> None:
    head = [(":status", "200"), ("content-length", "1")]
    server = await FakeServer(lambda s, i: Reply(h2_head=head, chunks=[b"abc"])).start(nursery)
    with pytest.raises(HTTPTransportError, match="invalid HTTP from peer"):
        async with open_request("GET", server.url(), http2=True) as response:
            await response.read()


@pytest.mark.parametrize("status", [200, 204, 599, 600, 999])
async def test_both_versions_hand_over_the_same_statuses(
    nursery: trio.Nursery, status: int
) -> None:
    """h11 reads any three digits from 200 up: HTTP/2 gives the same, the callers judge
    (:mod:`tidings.retry` makes a status beyond 599 final)."""
    line = f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode()
    head = [(":status", str(status)), ("content-length", "0")]
    h1 = await FakeServer(lambda s, i: Reply(raw=line)).start(nursery)
    h2 = await FakeServer(lambda s, i: Reply(h2_head=head)).start(nursery)
    for server, http2 in ((h1, False), (h2, True)):
        async with open_request("GET", server.url(), http2=http2) as response:
            assert response.status == status
            assert await response.read() == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 +20 OK\r\n\r\n",
        b"HTTP/1.1 099 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ],
)
async def test_http11_hostile_response_head_is_a_transport_error(
    nursery: trio.Nursery, raw: bytes
) -> None:
    server = await FakeServer(lambda s, i: Reply(raw=raw)).start(nursery)
    with pytest.raises(HTTPTransportError):
        async with open_request("GET", server.url()) as response:
            await response.read()


# -- TLS and ALPN ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "http2", "version"),
    [
        (["h2", "http/1.1"], None, "2"),
        (["http/1.1"], None, "1.1"),
        (["h2", "http/1.1"], False, "1.1"),
        (["h2"], True, "2"),
    ],
)
async def test_tls_alpn_chooses_the_version(
    nursery: trio.Nursery, ca: trustme.CA, offered: list[str], http2: bool | None, version: str
) -> None:
    server = await FakeServer(echo, tls=server_tls(ca, offered)).start(nursery)
    async with open_request(
        "POST", server.url(), body=b"tls", http2=http2, ssl_context=client_tls(ca)
    ) as response:
        assert response.http_version == version
        assert await response.read() == b"hello world"
    assert server.requests[0].body == b"tls"


async def test_tls_insisting_on_http2_fails_when_the_server_refuses(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    server = await FakeServer(echo, tls=server_tls(ca, ["http/1.1"])).start(nursery)
    with pytest.raises(HTTPTransportError, match="HTTP/2"):
        async with open_request("GET", server.url(), http2=True, ssl_context=client_tls(ca)):
            pass  # pragma: no cover


async def test_tls_untrusted_certificate_is_a_transport_error(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    server = await FakeServer(echo, tls=server_tls(ca, ["http/1.1"])).start(nursery)
    with pytest.raises(HTTPTransportError, match="CERTIFICATE_VERIFY_FAILED"):
        async with open_request("GET", server.url()):
            pass  # pragma: no cover
