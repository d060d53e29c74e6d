"""Paths to handlers, and the rules for topic names in paths.

A route is a path pattern such as ``/topics/{topic}/events`` and a handler per
method.  Literal segments match exactly (case-sensitive, not decoded).  A
``{topic}`` segment is percent-decoded once (``%HH`` only; a stray ``%`` is an
error) and must then be a *topic name* (:mod:`tidings.names`): 1 to 128 characters from
``A-Z a-z 0-9 . _ ~ -`` (RFC 3986 "unreserved"), and not ``.`` or ``..``.  So
``%41bc`` names the topic ``Abc``, while ``a%2Fb`` or ``a b`` are refused with
``400``.  Paths matching no pattern get ``404``; a known path with a method it
does not serve gets ``405`` with ``Allow``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from tidings.names import is_valid_topic
from tidings.trio._http import Request, Responder

if TYPE_CHECKING:
    from tidings.trio._app import App

__all__ = [
    "BadParameter",
    "Handler",
    "Route",
    "Router",
    "parse_topic",
    "static",
]

_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

#: A request handler: ``await handler(app, request, responder)``.
Handler = Callable[["App", Request, Responder], Awaitable[None]]


def parse_topic(segment: str) -> str | None:
    """Decode one path segment into a topic name, or ``None`` when it is not one."""
    if "%" in segment:
        if _BAD_PERCENT_RE.search(segment):
            return None
        try:
            segment = unquote_to_bytes(segment).decode("ascii")
        except UnicodeDecodeError:
            return None
    return segment if is_valid_topic(segment) else None


class BadParameter(Exception):
    """A path parameter is malformed (answer ``400``)."""


_CONVERTERS: dict[str, Callable[[str], str | None]] = {"topic": parse_topic}


@dataclass(frozen=True, slots=True)
class Route:
    """A path pattern and its handlers by method."""

    pattern: str
    methods: Mapping[str, Handler]
    segments: tuple[str, ...] = ()

    @property
    def allowed(self) -> list[str]:
        """The methods to list in ``Allow``."""
        methods = set(self.methods) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


def static(content: bytes | str, content_type: str = "text/html; charset=utf-8") -> Handler:
    """A handler answering *content* (a page, a script, a stylesheet) with ``200``.

    ``str`` content is encoded as UTF-8.  The answer carries ``Cache-Control:
    no-cache`` (revalidate, so a new version is seen at once) and the server's
    common headers; ``HEAD`` gets the headers only.
    """
    body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    kind = content_type.encode("latin-1")

    async def handler(app: App, request: Request, responder: Responder) -> None:
        headers = app.headers((b"content-type", kind), (b"cache-control", b"no-cache"))
        await responder.respond(200, headers, body)

    return handler


class Router:
    """An ordered list of routes; the first pattern that matches wins.

    Patterns are paths whose segments are literal or ``{topic}`` (a topic name,
    decoded and checked with :mod:`tidings.names`; the handler finds it in
    ``request.params["topic"]``).  Start from :func:`~tidings.trio.default_router`
    to keep the tidings endpoints next to your own::

        router = default_router(prefix="/rt")
        router.add("/", {"GET": static(page)})
        await serve(hub, 8000, router=router)
    """

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, pattern: str, methods: Mapping[str, Handler]) -> None:
        """Serve *pattern* (e.g. ``/topics/{topic}/poll``) with *methods*.

        Adding a pattern that is already there replaces its handlers (in its place),
        so your own page can take ``/`` from the demo page of
        :func:`~tidings.trio.default_router`.
        """
        if not pattern.startswith("/"):
            raise ValueError("patterns start with '/'")
        segments = tuple(pattern[1:].split("/"))
        for segment in segments:
            if segment.startswith("{"):
                name = segment.strip("{}")
                if name not in _CONVERTERS:
                    raise ValueError(f"unknown path parameter {segment}")
        route = Route(pattern, dict(methods), segments)
        for index, existing in enumerate(self._routes):
            if existing.pattern == pattern:
                self._routes[index] = route
                return
        self._routes.append(route)

    def resolve(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route matching *path* and its decoded parameters, or ``None``.

        Raises :class:`BadParameter` when the shape matches but a parameter is not
        acceptable (for example a topic name with a slash in it).
        """
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        for route in self._routes:
            segments = route.segments
            if len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            bad: str | None = None
            for segment, part in zip(segments, parts, strict=True):
                if segment.startswith("{"):
                    name = segment[1:-1]
                    value = _CONVERTERS[name](part)
                    if value is None:
                        bad = name
                    else:
                        params[name] = value
                elif segment != part:
                    break
            else:
                if bad is not None:
                    raise BadParameter(f"invalid {bad} name")
                return route, params
        return None
