"""Write the seed corpora under ``fuzz/seeds/<harness>/`` from the tests' own inputs.

The literals the tests feed the parsers (SSE bodies, cursors, WebSocket messages,
``Retry-After`` values, poll queries) and the requests they send the server (HTTP/1.1
heads, HTTP/2 requests encoded by an h2 client) are read from the test modules'
syntax trees, prefixed with the byte that puts each harness in raw mode, and
written one file per input (named by its SHA-1, so reruns are idempotent).

Run from the repository root: ``python fuzz/make_seeds.py`` (it needs h2, not
atheris).  The harnesses driven by a program (``fuzz_follow``, ``fuzz_session``,
``fuzz_ws_session``) have no seeds: their inputs are not bytes any test sends.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
# The first settings frame h2 sends, and the empty one raw mode puts after the preface.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = {"GET", "HEAD", "POST", "OPTIONS", "DELETE", "PUT"}


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def _constants(path: str, kind: type) -> Iterator[object]:
    """Every constant of *kind* (str or bytes) in a test module, concatenations
    of constants included."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, kind):
            yield node.value
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            try:
                value = ast.literal_eval(node)
            except ValueError:
                continue
            if isinstance(value, kind):
                yield value


def _calls(path: str, name: str) -> Iterator[list[object]]:
    """The constant positional arguments of every call to ``name`` / ``x.name``."""
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called != name:
            continue
        args = []
        for arg in node.args:
            try:
                args.append(ast.literal_eval(arg))
            except ValueError:
                break
        yield args


def _sse_bodies() -> Iterator[bytes]:
    for value in _constants("tests/sse/test_parser.py", bytes):
        assert isinstance(value, bytes)
        if len(value) >= 4:
            yield value


def _http1_requests() -> Iterator[bytes]:
    for path in ("tests/trio/test_server_http1.py", "tests/trio/test_longpoll_endpoint.py"):
        for value in _constants(path, bytes):
            assert isinstance(value, bytes)
            if value.split(b" ", 1)[0].decode("latin-1") in _METHODS:
                yield value
        for name in ("request", "send"):
            for args in _calls(path, name):
                if len(args) >= 2 and args[0] in _METHODS and isinstance(args[1], str):
                    head = f"{args[0]} {args[1]} HTTP/1.1\r\nhost: test\r\n"
                    body = args[3] if len(args) > 3 and isinstance(args[3], bytes) else b""
                    if body:
                        head += f"content-length: {len(body)}\r\n"
                    yield head.encode("latin-1") + b"\r\n" + body


def _h2_requests() -> Iterator[bytes]:
    pairs = set()
    for name in ("open", "request"):
        for args in _calls("tests/trio/test_server_h2.py", name):
            if len(args) >= 2 and args[0] in _METHODS and isinstance(args[1], str):
                pairs.add((args[0], args[1]))
    for method, path in sorted(pairs):
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.data_to_send()  # the preface and settings: raw mode sends its own
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "a")]
        conn.send_headers(1, headers, end_stream=method != "POST")
        if method == "POST":
            conn.send_data(1, b"hello", end_stream=True)
        yield conn.data_to_send()


def _ws_messages() -> Iterator[bytes]:
    for path in ("tests/test_ws.py", "tests/ws/test_server.py"):
        for value in _constants(path, str):
            assert isinstance(value, str)
            if value.lstrip().startswith("{"):
                yield value.encode("utf-8", "surrogatepass")


def _retry_after_values() -> Iterator[bytes]:
    for value in _constants("tests/test_retry_after.py", str):
        assert isinstance(value, str)
        if value and len(value) < 64:
            yield value.encode("latin-1", "replace")


def _poll_queries() -> Iterator[bytes]:
    for args in _calls("tests/longpoll/test_longpoll_request.py", "parse_poll_request"):
        if args and isinstance(args[0], str | bytes):
            query = args[0] if isinstance(args[0], bytes) else args[0].encode()
            lines = [query]
            if len(args) > 1 and isinstance(args[1], list):
                lines += [
                    value if isinstance(value, bytes) else value.encode("latin-1")
                    for name, value in args[1]
                    if str(name if isinstance(name, str) else name.decode()).lower()
                    == "if-none-match"
                ]
            yield b"\n".join(lines)


def _cursors() -> Iterator[bytes]:
    for value in _constants("tests/test_cursor.py", str):
        assert isinstance(value, str)
        if len(value) <= 200:
            yield value.encode("utf-8", "surrogatepass")


# harness -> (prefix that selects raw mode, inputs, suffix)
HARNESSES: dict[str, tuple[bytes, Callable[[], Iterator[bytes]], bytes]] = {
    # fuzz_sse_parser reads its limits and cuts from the end: 512 / 2048, no cuts.
    "sse_parser": (b"", _sse_bodies, b"\x00\xff\xff\xff\xff"),
    "sse_client": (b"\x00", _sse_bodies, b""),
    "cursor": (b"", _cursors, b""),
    "ws_protocol": (b"\x02", _ws_messages, b""),
    "retry_after": (b"\x00", _retry_after_values, b""),
    "longpoll": (b"\x00", _poll_queries, b""),
    "server_http1": (b"\x00", _http1_requests, b""),
    "server_h2": (b"\x00", _h2_requests, b""),
}


def main() -> None:
    for harness, (prefix, inputs, suffix) in HARNESSES.items():
        folder = SEEDS / harness
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for value in inputs():
            seed = prefix + value + suffix
            (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
            count += 1
        print(f"{harness}: {count} inputs, {len(list(folder.iterdir()))} files")


if __name__ == "__main__":
    main()
