"""Positions: where a client is in a topic's history, and their one wire form.

A :class:`Position` is ``(epoch, offset)``.  The *epoch* names one generation of a
topic's history; the *offset* grows strictly within an epoch.  The same string form
is used as the SSE ``id:``, the long-poll cursor and the WebSocket resume token, so
a client can switch transports without losing its place.

Wire grammar (at most :data:`MAX_CURSOR_LENGTH` bytes)::

    cursor = epoch "." offset
    epoch  = 1*64( ALPHA / DIGIT / "-" / "_" )
    offset = "0" / ( %x31-39 *19DIGIT )        ; no leading zeros, < 2**63

Clients never need to parse it; servers must, strictly, because it comes from the
network: :func:`Position.parse` raises :class:`~tidings.errors.InvalidCursor` on
anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import NamedTuple, cast

from tidings.backoff import Random
from tidings.errors import InvalidCursor, LocalProtocolError

__all__ = [
    "EARLIEST",
    "MAX_CURSOR_LENGTH",
    "MAX_EPOCH_LENGTH",
    "MAX_OFFSET",
    "Position",
    "new_epoch",
]

#: The longest cursor string accepted, in bytes (all cursor characters are ASCII).
MAX_CURSOR_LENGTH = 128
#: The longest epoch accepted.
MAX_EPOCH_LENGTH = 64
#: The largest offset accepted (offsets fit a signed 64-bit integer).
MAX_OFFSET = 2**63 - 1
#: The cursor value that asks for everything still retained.
EARLIEST = "earliest"

_EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_RE = re.compile(r"([A-Za-z0-9_-]{1,64})\.(0|[1-9][0-9]{0,18})")
_EPOCH_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


class _PositionFields(NamedTuple):
    epoch: str
    offset: int


class Position(_PositionFields):
    """A place in one generation (*epoch*) of a topic's history.

    ``offset`` 0 means "before the first event"; the first event appended in an
    epoch gets offset 1.  Positions of different epochs are not comparable in
    meaning, although the ordering (by epoch, then offset) is defined for use as
    a sort key.

    Immutable: assigning to a field raises :class:`dataclasses.FrozenInstanceError`.
    A named tuple rather than a dataclass because one is built for every event
    stored and read, and a tuple is built in one C call; so it also compares
    equal to, and unpacks like, the tuple ``(epoch, offset)``.
    """

    __slots__ = ()

    def __new__(cls, epoch: str, offset: int) -> Position:
        if not isinstance(epoch, str) or _EPOCH_RE.fullmatch(epoch) is None:
            raise LocalProtocolError(f"invalid epoch {epoch!r}")
        if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
            raise LocalProtocolError(f"invalid offset {offset!r}")
        return _new_position(cls, (epoch, offset))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    @classmethod
    def parse(cls, text: str | bytes) -> Position:
        """Parse the wire form strictly.

        Raises :class:`~tidings.errors.InvalidCursor` for anything that is not exactly
        ``epoch "." offset`` within the length limits; bytes must be ASCII.
        """
        if isinstance(text, bytes):
            if len(text) > MAX_CURSOR_LENGTH:
                raise InvalidCursor("cursor too long")
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidCursor("cursor is not ASCII") from None
        elif not isinstance(text, str):
            raise InvalidCursor(f"cursor must be str, not {type(text).__name__}")
        if len(text) > MAX_CURSOR_LENGTH:
            raise InvalidCursor("cursor too long")
        match = _CURSOR_RE.fullmatch(text)
        if match is None:
            raise InvalidCursor("malformed cursor")
        offset = int(match.group(2))
        if offset > MAX_OFFSET:
            raise InvalidCursor("cursor offset out of range")
        return _new_position(Position, (match.group(1), offset))

    def format(self) -> str:
        """The wire form, ``epoch.offset``."""
        return f"{self[0]}.{self[1]}"

    __str__ = format

    def next(self) -> Position:
        """The position right after this one in the same epoch."""
        return Position(self[0], self[1] + 1)


# Builds a Position without the checks (one C call): tuple.__new__(Position, ...).
_new_position = cast(
    Callable[[type[Position], tuple[str, int]], Position],
    tuple.__new__,
)


def _trusted_position(epoch: str, offset: int) -> Position:
    """A :class:`Position` from parts already known valid, skipping the checks.

    For hot paths only (parsing, appending to a history whose epoch was checked once).
    """
    return _new_position(Position, (epoch, offset))


def new_epoch(rng: Random, length: int = 12) -> str:
    """A fresh random epoch of *length* base-36 characters drawn from *rng*.

    Pass ``random.SystemRandom()`` in production so that two server processes never
    share an epoch; pass a seeded ``random.Random`` in tests.
    """
    if not 1 <= length <= MAX_EPOCH_LENGTH:
        raise LocalProtocolError(f"epoch length must be 1..{MAX_EPOCH_LENGTH}")
    return "".join(_EPOCH_ALPHABET[int(rng.random() * 36) % 36] for _ in range(length))
