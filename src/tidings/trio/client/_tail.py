"""``python -m tidings tail``: one tail for every transport, driven by a table.

All three clients yield the same :class:`~tidings.events.Event` and
:class:`~tidings.events.ResetNotice`, so the tail is one loop: :data:`TRANSPORTS` maps
a transport name to how its client is opened and :func:`tail` prints what it yields,
one JSON line each, until the client gives up (one line on stderr, exit status 1),
the server asks it to stop (status 0) or a signal arrives (status 0).  A closed
standard output is the reader's choice, not an error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.events import Event, ResetNotice
from tidings.trio.client.longpoll import open_long_poll
from tidings.trio.client.sse import EventStreamClosed, EventStreamFailed, open_event_stream
from tidings.trio.client.websocket import SessionClosed, open_session

__all__ = [
    "TRANSPORTS",
    "TailOptions",
    "emit",
    "event_line",
    "reset_line",
    "run_tail",
    "tail",
]

log = logging.getLogger("tidings")

#: Exit statuses (the same as the command's).
_OK, _FAILURE, _USAGE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class TailOptions:
    """What ``tail`` was asked to do."""

    url: str
    transport: str
    topics: Sequence[str] = ()
    last_event_id: str | None = None
    http2: bool | None = None
    ssl_context: ssl.SSLContext | None = None
    idle_timeout: float | None = None
    max_retries: int | None = None
    connect_timeout: float = 30.0


Stream = AsyncIterator[Event | ResetNotice]
Opener = Callable[[TailOptions], AbstractAsyncContextManager[Stream]]


@asynccontextmanager
async def _sse(options: TailOptions) -> AsyncIterator[Stream]:
    async with open_event_stream(
        options.url,
        last_event_id=options.last_event_id,
        http2=options.http2,
        ssl_context=options.ssl_context,
        idle_timeout=options.idle_timeout,
        max_retries=options.max_retries,
        connect_timeout=options.connect_timeout,
    ) as events:
        yield events


@asynccontextmanager
async def _poll(options: TailOptions) -> AsyncIterator[Stream]:
    async with open_long_poll(
        options.url,
        cursor=options.last_event_id,
        http2=options.http2,
        ssl_context=options.ssl_context,
        max_retries=options.max_retries,
        connect_timeout=options.connect_timeout,
    ) as poll:
        yield poll


@asynccontextmanager
async def _ws(options: TailOptions) -> AsyncIterator[Stream]:
    async with open_session(
        options.url,
        dict.fromkeys(options.topics, options.last_event_id),
        ssl_context=options.ssl_context,
        max_retries=options.max_retries,
        connect_timeout=options.connect_timeout,
    ) as session:
        yield session


#: How each transport's client is opened.
TRANSPORTS: Mapping[str, Opener] = {"sse": _sse, "poll": _poll, "ws": _ws}


def event_line(id: str, event: str | None, data: str) -> dict[str, object]:
    """The line for one event; ``"message"`` stands for an event without a type."""
    return {"id": id, "event": "message" if event is None else event, "data": data}


def reset_line(cursor: str) -> dict[str, object]:
    """The line for one reset: the tail continues from *cursor*."""
    return {"reset": True, "cursor": cursor}


def emit(line: dict[str, object]) -> None:
    """Print *line* as one JSON line, at once (a reader may be waiting for it)."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _hint(options: TailOptions, exc: BaseException) -> str:
    """A suggestion for a likely mistake behind *exc*, or ``""``."""
    content_type = exc.content_type if isinstance(exc, EventStreamFailed) else None
    if content_type is not None and "json" in content_type:
        return " (a long-poll endpoint? use --transport poll)"
    if isinstance(exc, RemoteProtocolError) and "text/event-stream" in str(exc):
        return " (use --transport sse)"
    if isinstance(exc, SessionClosed) and exc.status is not None and exc.status < 300:
        return " (not a WebSocket endpoint)"
    return ""


def _failure(options: TailOptions, exc: BaseException) -> int:
    """Say why the tail ends in one line on stderr; the exit status."""
    if isinstance(exc, LocalProtocolError):
        print(f"tidings tail: {exc}", file=sys.stderr)
        return _USAGE
    if isinstance(exc, SessionClosed) and exc.code == 1000:
        log.info("%s: %s", options.url, exc)
        return _OK
    text = str(exc)
    if not text.startswith(options.url):  # SSE errors name the URL already
        text = f"{options.url}: {text}"
    print(f"tidings tail: {text}{_hint(options, exc)}", file=sys.stderr)
    return _FAILURE


async def tail(options: TailOptions) -> int:
    """Follow *options.url* over *options.transport*, printing JSON lines; the exit status.

    Each event is ``{"id", "event", "data"}`` (plus ``"topic"`` when several topics
    are followed) and each reset ``{"reset": true, "cursor"}``.
    """
    opener = TRANSPORTS[options.transport]
    several = len(options.topics) > 1

    async def follow() -> int:
        try:
            async with opener(options) as stream:
                async for item in stream:
                    if isinstance(item, ResetNotice):
                        because = f" ({item.reason})" if item.reason else ""
                        where = f" of {item.topic}" if several else ""
                        log.warning("reset%s%s: continuing from %s", where, because, item.cursor)
                        line = reset_line(item.cursor)
                    else:
                        line = event_line(item.id, item.event, item.data)
                    if several:
                        line["topic"] = item.topic
                    emit(line)
            log.info("%s: the server ended the stream: stopping", options.url)
        except EventStreamClosed as exc:
            log.info("%s", exc)
        except (
            EventStreamFailed,
            RemoteProtocolError,
            SessionClosed,
            LocalProtocolError,
        ) as exc:
            return _failure(options, exc)
        return _OK

    return await run_tail(follow)


def _is_broken_pipe(exc: BaseException) -> bool:
    """Whether *exc* is a broken pipe, alone or as every leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(BrokenPipeError)
        return matched is not None and rest is None
    return isinstance(exc, BrokenPipeError)


async def run_tail(follow: Callable[[], Awaitable[int]]) -> int:
    """Run *follow* until it returns an exit status, or until SIGINT or SIGTERM (then 0).

    A broken pipe on standard output (``tidings tail ... | head``) ends the tail
    with status 0 and sends further output to the null device.
    """
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            try:
                code = await follow()
            except BaseException as exc:
                # stdout went away (perhaps reported from inside a client's nursery,
                # wrapped in an exception group): not an error of ours.
                if not _is_broken_pipe(exc):
                    raise
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            nursery.cancel_scope.cancel()
    return code
