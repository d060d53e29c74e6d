"""The ``tidings`` command: run the reference server, follow a stream, publish an event.

``python -m tidings serve`` runs :func:`tidings.trio.serve` with an in-memory history;
``python -m tidings tail URL`` follows a stream over SSE (any server), long polling or
WebSocket with the matching client and prints one JSON line per event;
``python -m tidings publish URL DATA`` posts one event.  Results go to standard
output, diagnostics (logging, configured here for the command) to standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio

from tidings import __version__
from tidings._jsonlog import JsonFormatter
from tidings.cursor import new_epoch
from tidings.errors import LocalProtocolError
from tidings.history import DEFAULT_MAX_TOTAL_BYTES, MemoryHistory
from tidings.names import MAX_TOPIC_LENGTH, is_valid_topic
from tidings.trio import (
    Hub,
    ServerConfig,
    default_router,
    publish_token,
    serve,
    server_ssl_context,
)
from tidings.trio.client._http import HTTPTransportError, open_request
from tidings.trio.client._tail import TRANSPORTS, TailOptions, tail
from tidings.trio.history import History, HistoryUnavailable
from tidings.trio.metrics import metrics_page

__all__ = ["main"]

#: Exit status: success.
EXIT_OK = 0
#: Exit status: the operation failed (refused by the server, network, files).
EXIT_FAILURE = 1
#: Exit status: bad command line.
EXIT_USAGE = 2

_EPILOG = """\
exit status:
  0    success (serve: drained after SIGINT/SIGTERM; tail: stopped by SIGINT or
       SIGTERM, or the server asked it to stop; publish: event accepted)
  1    failure (serve: cannot listen or load the certificate; tail: the server
       refused the stream, or --max-retries attempts failed; publish: non-2xx
       answer or network error)
  2    bad command line
  130  interrupted by SIGINT before the command could stop cleanly
"""

log = logging.getLogger("tidings")


def _client_tls(cafile: str | None) -> ssl.SSLContext | None:
    if cafile is None:
        return None
    return ssl.create_default_context(cafile=cafile)


def _http2_choice(args: argparse.Namespace) -> bool | None:
    if args.http2:
        return True
    if args.http1:
        return False
    return None


# -- serve ---------------------------------------------------------------------------


@asynccontextmanager
async def _history(args: argparse.Namespace) -> AsyncIterator[History | MemoryHistory]:
    """The history ``serve`` uses: in memory, or in Redis with ``--redis``."""
    if args.redis is None:
        try:
            memory = MemoryHistory(
                new_epoch(random.SystemRandom()),
                max_events=args.history,
                max_total_bytes=args.history_bytes,
                max_topics=args.max_topics,
            )
        except LocalProtocolError as exc:
            raise _ServeError(str(exc)) from None
        yield memory
        return
    try:
        from tidings.redis import open_redis_history
    except ImportError:
        raise _ServeError("--redis needs coredis: pip install 'tidings[redis]'") from None
    try:
        async with open_redis_history(
            args.redis, max_events=args.history, ttl=args.history_ttl
        ) as history:
            yield history
    except HistoryUnavailable as exc:
        raise _ServeError(f"cannot reach Redis at {args.redis}: {exc}") from None


class _ServeError(Exception):
    """``serve`` cannot start (the message says why)."""


async def _serve(args: argparse.Namespace) -> int:
    try:
        async with _history(args) as history:
            return await _run_server(args, Hub(history))
    except _ServeError as exc:
        print(f"tidings serve: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _run_server(args: argparse.Namespace, hub: Hub) -> int:
    token = args.publish_token or os.environ.get("TIDINGS_PUBLISH_TOKEN") or None
    try:
        config = ServerConfig(
            http2=args.http2,
            sse_retry=args.retry,
            max_connections=args.max_connections,
            allow_origin=args.allow_origin,
            auth=publish_token(token) if token is not None else None,
        )
    except LocalProtocolError as exc:
        print(f"tidings serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    router = None
    if args.metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            print(
                "tidings serve: --metrics needs prometheus-client: pip install 'tidings[metrics]'",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        router = default_router()
        router.add("/metrics", {"GET": metrics_page()})
    ssl_context = None
    if args.certfile is not None:
        try:
            ssl_context = server_ssl_context(args.certfile, args.keyfile, http2=args.http2)
        except (OSError, ssl.SSLError) as exc:
            print(f"tidings serve: cannot load certificate: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                server = await nursery.start(
                    partial(
                        serve,
                        hub,
                        args.port,
                        host=args.host,
                        config=config,
                        ssl_context=ssl_context,
                        handle_signals=True,
                        router=router,
                    )
                )
            except OSError as exc:
                print(
                    f"tidings serve: cannot listen on {args.host}:{args.port}: {exc}",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            print(server.url, flush=True)
            log.info("serving %s (%s)", server.url, _describe_server(args, hub))

            async def drain_on_signal() -> None:
                # The server handles signals itself once serving; this catches the
                # ones that arrive before its own receiver is in place.
                async for _ in signals:
                    server.drain()

            nursery.start_soon(drain_on_signal)
            await server.wait_drained()
            nursery.cancel_scope.cancel()
    log.info("stopped")
    return EXIT_OK


def _describe_server(args: argparse.Namespace, hub: Hub) -> str:
    """What the start line says besides the URL."""
    versions = "HTTP/1.1 and HTTP/2" if args.http2 else "HTTP/1.1"
    store = "Redis" if args.redis else "in-memory history"
    extras = [versions, store]
    if args.metrics:
        extras.append("metrics at /metrics")
    return ", ".join(extras)


# -- tail ----------------------------------------------------------------------------


async def _tail(args: argparse.Namespace) -> int:
    return await tail(
        TailOptions(
            url=args.url,
            transport=args.transport,
            topics=args.topic or (),
            last_event_id=args.last_event_id,
            http2=_http2_choice(args),
            ssl_context=_client_tls(args.cacert),
            idle_timeout=args.idle_timeout,
            max_retries=args.max_retries,
            connect_timeout=args.connect_timeout,
        )
    )


# -- publish -------------------------------------------------------------------------


def _with_event_type(url: str, event: str | None) -> str:
    if event is None:
        return url
    parts = urlsplit(url)
    query = urlencode({"event": event})
    query = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit(parts._replace(query=query))


async def _publish(args: argparse.Namespace) -> int:
    data = sys.stdin.read() if args.data == "-" else args.data
    url = _with_event_type(args.url, args.event)
    headers = [("content-type", "text/plain; charset=utf-8"), ("accept", "application/json")]
    token = args.token or os.environ.get("TIDINGS_PUBLISH_TOKEN") or None
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    try:
        with trio.fail_after(args.timeout):
            async with open_request(
                "POST",
                url,
                headers=headers,
                body=data.encode("utf-8"),
                http2=_http2_choice(args),
                ssl_context=_client_tls(args.cacert),
            ) as response:
                body = await response.read()
    except HTTPTransportError as exc:
        print(f"tidings publish: {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except trio.TooSlowError:
        print(f"tidings publish: {url}: no answer within {args.timeout} s", file=sys.stderr)
        return EXIT_FAILURE
    text = body.decode("utf-8", "replace")
    if not 200 <= response.status < 300:
        detail = text.strip()[:500] or "(empty body)"
        print(
            f"tidings publish: {url}: server answered {response.status}: {detail}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        answer = json.loads(text)
        event_id = answer["id"]
    except (ValueError, TypeError, KeyError):
        print(f"tidings publish: {url}: answer has no event id: {text[:500]!r}", file=sys.stderr)
        return EXIT_FAILURE
    print(event_id, flush=True)
    return EXIT_OK


# -- the command line ----------------------------------------------------------------


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _positive_int(text: str) -> int:
    value = _integer(text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(text: str) -> int:
    """A number of bytes, optionally with K, M or G (binary multiples)."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in ("K", "M", "G"):
        number, unit = number[:-1], number[-1].upper()
    value = _integer(number, "a size in bytes (K, M, G allowed)") * _SIZE_UNITS[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def _count(text: str) -> int:
    value = _integer(text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _port(text: str) -> int:
    value = _integer(text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _topic(text: str) -> str:
    if not is_valid_topic(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic name (1 to {MAX_TOPIC_LENGTH} characters from "
            "A-Z a-z 0-9 . _ ~ -, not . or ..)"
        )
    return text


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    version = parser.add_mutually_exclusive_group()
    version.add_argument(
        "--http2",
        action="store_true",
        help="insist on HTTP/2 (prior knowledge on http://, ALPN h2 on https://)",
    )
    version.add_argument(
        "--http1",
        action="store_true",
        help="insist on HTTP/1.1 (default: HTTP/1.1 on http://, ALPN chooses on https://)",
    )
    parser.add_argument(
        "--cacert", metavar="FILE", help="trust the CA certificates in FILE (PEM) for https://"
    )


_SERVE_DESCRIPTION = """Serve every tidings endpoint on one port:

  GET  /topics/{topic}/events   Server-Sent Events (resume with Last-Event-ID)
  GET  /topics/{topic}/poll     long polling (?cursor=, ?timeout=, ?limit=)
  POST /topics/{topic}          publish: the body is the data, ?event= its type;
                                answers 201 {"id": ...}
  GET  /ws                      WebSocket sessions (subprotocol tidings.v1)
  GET  /tidings.js              the browser client (an ES module)
  GET  /                        a demo page using it
  GET  /healthz                 200 while the process runs
  GET  /readyz                  200, or 503 while draining

HTTP/1.1 and HTTP/2 (prior knowledge) share the port; with --certfile, TLS with
ALPN.  Prints the URL on stdout, then serves until SIGINT or SIGTERM, drains
gracefully and exits 0."""

_TAIL_DESCRIPTION = """Follow a stream and print one JSON object per line on stdout:
{"id": ..., "event": ..., "data": ...} per event and {"reset": true, "cursor": ...}
per reset (events were skipped).  URL is the endpoint of the chosen transport:

  sse   an event stream, http://host/topics/T/events (any SSE server)
  poll  a long-poll endpoint, http://host/topics/T/poll
  ws    a WebSocket session endpoint, ws://host/ws, with one or more --topic

Reconnects and resumes by itself (busy servers, 503 and Retry-After included) and
logs each reconnection on stderr.  Stops on SIGINT/SIGTERM or when the server asks
it to (exit 0), or with one line on stderr (exit 1) when the server refuses the
stream or --max-retries attempts in a row failed."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tidings`` command."""
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Live updates over SSE, long polling and WebSockets that survive every "
        "disconnect.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only warnings and errors on stderr"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="diagnostics on stderr as text lines or one JSON object per line [text]",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_serve = commands.add_parser(
        "serve",
        help="run the reference server (in-memory history)",
        description=_SERVE_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    p_serve.add_argument(
        "--port", type=_port, default=8000, help="port to listen on, 0 for any free one [8000]"
    )
    p_serve.add_argument(
        "--http2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer HTTP/2 besides HTTP/1.1 [on]",
    )
    p_serve.add_argument("--certfile", metavar="F", help="TLS certificate chain (PEM)")
    p_serve.add_argument(
        "--keyfile", metavar="F", help="TLS private key (PEM; default: in --certfile)"
    )
    p_serve.add_argument(
        "--history",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="events kept per topic for resuming [1000]",
    )
    p_serve.add_argument(
        "--history-bytes",
        type=_size,
        default=DEFAULT_MAX_TOTAL_BYTES,
        metavar="SIZE",
        help="bytes of events kept for all topics together (K, M, G allowed); beyond it "
        "the least recently used topics lose their oldest events [256M]",
    )
    p_serve.add_argument(
        "--max-topics",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="topics kept; beyond it the least recently used one is dropped [10000]",
    )
    p_serve.add_argument(
        "--retry",
        type=_count,
        default=ServerConfig().sse_retry,
        metavar="MS",
        help="the SSE 'retry' sent to clients: the least wait, in milliseconds, before "
        "they reconnect after a stream ended [%(default)s]",
    )
    p_serve.add_argument(
        "--redis",
        metavar="URL",
        help="keep topics in Redis (redis://HOST:PORT/DB), shared by every server "
        "started with the same URL; needs 'tidings[redis]' [in memory]",
    )
    p_serve.add_argument(
        "--history-ttl",
        type=_positive_float,
        metavar="SECONDS",
        help="with --redis: drop a topic idle this long [never]",
    )
    p_serve.add_argument(
        "--publish-token",
        metavar="TOKEN",
        help="publishing (POST and WebSocket publish) then needs 'Authorization: Bearer "
        "TOKEN'; reading stays open [$TIDINGS_PUBLISH_TOKEN, else none]",
    )
    p_serve.add_argument(
        "--allow-origin",
        metavar="ORIGIN",
        help="a browser origin (or '*') that may read across sites (CORS), publish and "
        "open WebSocket sessions, besides the server's own origin [none]",
    )
    p_serve.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at GET /metrics (needs 'tidings[metrics]')",
    )
    default_max = ServerConfig().max_connections
    p_serve.add_argument(
        "--max-connections",
        type=_positive_int,
        default=default_max,
        metavar="N",
        help=(
            "connections served at once; beyond them requests get 503, except"
            f" /healthz and /readyz [{default_max}]"
        ),
    )

    p_tail = commands.add_parser(
        "tail",
        help="follow a stream, one JSON line per event",
        description=_TAIL_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_tail.add_argument("url", metavar="URL", help="the endpoint, e.g. http://host/topics/T/events")
    p_tail.add_argument(
        "--transport",
        default="sse",
        choices=sorted(TRANSPORTS),
        help="how to follow URL [sse]",
    )
    p_tail.add_argument(
        "--last-event-id",
        metavar="ID",
        help="resume after this event ID ('earliest': everything retained; the start "
        "cursor with --transport poll)",
    )
    p_tail.add_argument(
        "--topic",
        action="append",
        type=_topic,
        metavar="T",
        help="with --transport ws: a topic to follow (repeat for several)",
    )
    p_tail.add_argument(
        "--max-retries",
        type=_count,
        metavar="N",
        help="give up (exit 1) after N failed reconnection attempts in a row [never]",
    )
    p_tail.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="a connection attempt that takes longer than S seconds (with --transport poll: "
        "S plus the poll's hold time) fails and is retried [30]",
    )
    p_tail.add_argument(
        "--idle-timeout",
        type=_positive_float,
        metavar="S",
        help="with --transport sse: reconnect when the stream is silent for S seconds (use "
        "with servers that send heartbeats; tidings sends one every 15 s) [never]",
    )
    _add_client_options(p_tail)
    p_tail.set_defaults(subparser=p_tail)

    p_publish = commands.add_parser(
        "publish",
        help="publish one event",
        description=(
            "POST DATA to URL (http://host/topics/T) and print the event ID the\n"
            "server returns on stdout."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_publish.add_argument("url", metavar="URL", help="the topic, e.g. http://host/topics/T")
    p_publish.add_argument("data", metavar="DATA", help="the event data; '-' reads stdin")
    p_publish.add_argument("--event", metavar="TYPE", help="the event type")
    p_publish.add_argument(
        "--token",
        metavar="TOKEN",
        help="send 'Authorization: Bearer TOKEN' (a server run with --publish-token) "
        "[$TIDINGS_PUBLISH_TOKEN, else none]",
    )
    p_publish.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="give up after S seconds [30]",
    )
    _add_client_options(p_publish)
    return parser


def _check_tail(args: argparse.Namespace) -> None:
    """Refuse tail options that do not fit together, with the tail's own usage."""
    p_tail: argparse.ArgumentParser = args.subparser
    scheme = urlsplit(args.url).scheme.lower()
    if args.transport != "ws" and scheme in ("ws", "wss"):
        p_tail.error(f"{args.url} is a WebSocket URL: add --transport ws (and --topic T)")
    if args.transport == "ws":
        if scheme in ("http", "https"):
            p_tail.error(
                f"--transport ws needs a ws:// or wss:// URL (the session endpoint, "
                f"e.g. ws://host/ws), not {args.url}"
            )
        if not args.topic:
            p_tail.error("--transport ws needs at least one --topic")
        for option, given in (
            ("--idle-timeout", args.idle_timeout is not None),
            ("--http2", args.http2),
            ("--http1", args.http1),
        ):
            if given:
                p_tail.error(f"{option} is not for --transport ws")
    elif args.topic:
        p_tail.error("--topic is for --transport ws (the URL names the topic otherwise)")
    if args.transport == "poll" and args.idle_timeout is not None:
        p_tail.error("--idle-timeout is for --transport sse")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command with *argv* (default: ``sys.argv[1:]``); the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tail":
        _check_tail(args)
    if args.command == "serve" and args.keyfile is not None and args.certfile is None:
        parser.error("--keyfile needs --certfile")
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("tidings: %(message)s"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    # The Redis client retries and reconnects on its own; tidings reports what matters.
    logging.getLogger("coredis").setLevel(logging.ERROR)
    run = {"serve": _serve, "tail": _tail, "publish": _publish}[args.command]
    try:
        return trio.run(run, args)
    except LocalProtocolError as exc:
        print(f"tidings {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
