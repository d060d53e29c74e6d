"""Turn the bytes of a ``text/event-stream`` body into events.

The rules are those of the WHATWG HTML Standard, section "Server-sent events",
subsections *Parsing an event stream* and *Interpreting an event stream*
(https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream),
followed exactly: UTF-8 with U+FFFD replacement, one leading BOM ignored, CR / LF /
CRLF line ends, comments, fields, dispatch on a blank line, and the incomplete event
discarded at end of file.  Two limits the standard does not have keep memory bounded
whatever the peer sends.

Why it looks the way it does: almost every stream is a run of events of one shape
(maybe an ``id`` line, maybe an ``event`` line, ``data`` lines, a blank line).  A
regular expression cuts every event of such a shape out of a chunk (a narrower one,
four events a match, once the chunks show that all events look alike), and when
those events follow each other with nothing in between they are built column by
column at C speed.  Chunks with CRLF line ends are searched as they are, with
expressions written for CRLF, rather than normalised first; matches start only at
blank lines, which keeps every search linear.  A chunk that holds just one event
takes a shorter way.  Chunks with lines of more than a kilobyte at either end are
read line by line, their line ends found with str.find (memchr: expressions,
str.split and str.count all look at one character at a time).  Everything else --
other fields, and any event whose meaning depends on lines around it -- goes
through a plain line-by-line rendering of the standard.  The property tests feed
the same bytes through every path, compare the results with a naive implementation
of the standard, and compare every call with a parser whose fast paths are off.
"""

from __future__ import annotations

import re
from codecs import utf_8_decode as _utf_8_decode
from collections.abc import Callable, Iterable
from dataclasses import FrozenInstanceError
from itertools import islice, repeat
from typing import Final, NamedTuple, cast

from tidings.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "EventStreamParser",
    "MessageEvent",
]

#: Default for ``max_line_length``: 1 MiB (characters in one line).
DEFAULT_MAX_LINE_LENGTH: Final = 1 << 20
#: Default for ``max_event_size``: 16 MiB (characters in one event's data buffer).
DEFAULT_MAX_EVENT_SIZE: Final = 16 << 20

# CPython refuses to turn longer digit strings into ints (a guard against quadratic
# conversion); a ``retry`` value with more significant digits is ignored.
_MAX_RETRY_DIGITS: Final = 4300


class MessageEvent(NamedTuple):
    """One dispatched event, as an ``EventSource`` would fire it.

    ``type`` is the event type (``"message"`` unless an ``event`` field said
    otherwise), ``data`` the data buffer without its final line feed, and
    ``last_event_id`` the last event ID string at the moment of dispatch.

    Immutable: assigning to a field raises
    :class:`dataclasses.FrozenInstanceError`.  It is a named tuple rather than a
    dataclass because a parser builds hundreds of them per chunk and a tuple is
    built in one C call (a slotted dataclass takes an allocation and a call per
    field); so it also compares equal to, and unpacks like, the tuple
    ``(type, data, last_event_id)``.
    """

    type: str
    data: str
    last_event_id: str

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


# The fast paths build events without the named tuple's ``__new__`` (a Python
# function): ``tuple.__new__(MessageEvent, (type, data, last_event_id))`` is the same
# object, and mapped over ``zip`` columns it builds a chunk's events at C speed.
_new_event = cast(Callable[[type[MessageEvent], tuple[str, str, str]], MessageEvent], tuple.__new__)

# Event shapes the fast path recognises.  A match starts with the line end of a
# blank line (the line before the event: the lookbehind sees the line end before
# that one), covers the field lines, and stops before the line end of the blank
# line that dispatches the event; that line end starts the next match when events
# follow each other directly.  The text searched is the chunk with two line ends put
# in front (a blank line, as far as the expressions can tell: whether an event is
# really under way is the interpreter's business).  Starting only at blank lines is
# what keeps the search linear: a search that may start at any line retries at
# every line of a long run of data lines that does not end as a shape does (an
# event still arriving, or one with an id after its data), and each attempt runs to
# the end of the run.  ``re.split`` yields the gap before each match followed by its
# groups (None for an absent field), and at the end the gap after the last match.
# The narrow shapes are only faster, never more correct: what a shape does not cover
# lands in the gaps.
#
# There are two sets: one for text with LF line ends (CR-free, or normalised), and
# one for text whose line ends are CRLF, searched as it is, because normalising
# costs two more passes over the text than finding the events does.  With LF,
# quantifiers are possessive: a failed attempt costs one pass over the lines it
# covers.  With CRLF, a data value is ``.*`` that gives back the CR before its LF
# (a character class excluding CR would be slower on long values), so a value can
# hold a lone CR -- a line end the expression did not see -- and the interpreter
# checks the values of every chunk for CR before using them.  The gaps may hold any
# line ends; they are normalised before being read line by line.
#
# An ``id`` holding NUL is ignored by the standard.  With CRLF the id's character
# class excludes NUL as well as CR, so such a line is left to the gaps; with LF the
# id is ``.*+`` (a class costs some 12 ns more per event), and a chunk that holds a
# NUL has its ids checked before they are used.

_ANY: Final = 0  # id?, event?, data, more data lines: [gap, id, type, data, rest]
_ID_DATA: Final = 1  # runs of: id and one data line: [gap, (id, data) * _PER_MATCH]
_DATA: Final = 2  # runs of: one data line: [gap, data * _PER_MATCH]
# How many events a match of a narrow shape covers at most.  Besides the characters
# it looks at, re.split costs some 120 ns a match (the search, its bookkeeping, one
# more list item), more than building an event does; four events a match take a
# quarter of it, and more gain little.  The events after the first are optional and
# nested; a match holds fewer than four only where something else follows, or the
# text ends.
_PER_MATCH: Final = 4


class _Shapes:
    """The fast path's expressions for one kind of line end, and what goes with them.

    A slotted class rather than a named tuple: CPython 3.11 specialises reading a
    slot, not a named tuple's field, and the one-event path reads several per call.
    """

    __slots__ = ("end", "front", "more", "patterns")

    def __init__(
        self,
        end: str,
        more: str,
        patterns: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]],
    ) -> None:
        #: The line end the expressions are written for.
        self.end = end
        #: What the text searched starts with (see above): no match can start before
        #: its second line end, so the first gap always holds at least the first.
        self.front = end * 2
        #: Where a further data line starts in the raw "rest" group of the _ANY
        #: shape: there, and only there, the text holds this (a value holds no LF).
        #: Further data lines must have the space after the colon (as encoders
        #: write them), so that a plain str.replace strips their names.
        self.more = more
        #: The expressions, indexed by _ANY, _ID_DATA and _DATA.
        self.patterns = patterns


def _compile_shapes(end: str, end_re: str, id_: str, type_: str, value: str, rest: str) -> _Shapes:
    start = rf"{end_re}(?<={end_re}{end_re})"
    first_data = rf"data: ?+{value}"

    def runs(event: str) -> re.Pattern[str]:
        """Up to _PER_MATCH events of one shape, each followed by a blank line."""
        later = ""
        for _ in range(_PER_MATCH - 1):
            later = rf"(?:{end_re}{event}{end_re}{later})?"
        return re.compile(rf"{start}{event}{end_re}{later}(?={end_re})")

    return _Shapes(
        end=end,
        more=f"{end}data: ",
        patterns=(
            re.compile(rf"{start}(?:{id_})?(?:{type_})?{first_data}({rest}){end_re}(?={end_re})"),
            runs(rf"{id_}{first_data}"),
            runs(first_data),
        ),
    )


_LF: Final = _compile_shapes(
    "\n",
    r"\n",
    id_=r"id: ?+(.*+)\n",
    type_=r"event: ?+(.*+)\n",
    value=r"(.*+)",
    rest=r"(?:\ndata: .*+)*+",
)
_CRLF: Final = _compile_shapes(
    "\r\n",
    r"\r\n",
    id_=r"id: ?+([^\r\n\x00]*+)\r\n",
    type_=r"event: ?+([^\r\n]*+)\r\n",
    value=r"(.*)",
    rest=r"(?:\r\ndata: .*)*",
)

# Chunks with lines longer than this at either end go line by line: an expression
# would crawl through them a character at a time (as would str.split or str.count,
# some 0.6 ns a character), while str.find of one character is memchr.  Reading a
# line in Python costs about what crawling through a thousand characters does, so
# events of up to a kilobyte or so are better cut by the expressions.  (Measured
# against httpx-sse on id+data events of 500 bytes / 1 KB / 4 KB in 64 KiB chunks:
# 1.2x / 1.3x / 1.6x with 256 here, 3.1x / 2.6x / 2.0x with 1024; 2048 and 4096
# each lose elsewhere.)
_LONG_CHUNK: Final = 1024
# Lines shorter than this are read with one str.partition (see _lines), short lines
# between long ones are cut with one str.split (see _long), and an unfinished data
# line longer than this is kept apart from its name (see _DATA_NAME).
_LONG_LINE: Final = 256
# The pieces of an unfinished line stop merging at this size: merging only bounds
# how many pieces tiny chunks leave, and copying big ones again would be waste.
_PIECE: Final = 16384
# A long unfinished data line is kept as this piece followed by its value (cut out
# of the chunk at once), so that the value is complete after a single join.  The
# test is on content: whatever made partial[1] exactly this, it is the line's start.
_DATA_NAME: Final = "data: "
# Below this many characters a chunk is first tried as exactly one event.
_SMALL: Final = 2048

_OPEN: Final = 0
_CLOSED: Final = 1
_BROKEN: Final = 2


def _normalise(text: str) -> str:
    """Turn CRLF and CR line ends into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _merge_rest(datas: list[str], rests: list[str], shapes: _Shapes) -> list[str] | None:
    """Append each event's further data lines (raw, as matched) to its first one.

    Returns None if, with CRLF line ends, a value holds a CR.
    """
    # CR separates the rests.  Once the further lines' starts are replaced, a CR can
    # only be a separator -- unless, with CRLF, a value holds a lone one.
    joined = "\r".join(rests).replace(shapes.more, "\n")
    if shapes is _CRLF and joined.count("\r") != len(rests) - 1:
        return None
    return list(map(str.__add__, datas, joined.split("\r")))


def _column(parts: list[str | None], first: int, step: int) -> list[str]:
    """One field of every event that the matches of a narrow shape hold, in order.

    ``parts`` is what re.split returned: for each match its gap and _PER_MATCH
    events' fields, ``step`` fields an event; the field wanted is at ``first``.  An
    event a match did not hold has its fields None, and only the last match can
    hold fewer events than the others.
    """
    stride = 1 + _PER_MATCH * step
    column: list[str | None] = [None] * (len(parts) // stride * _PER_MATCH)
    for i in range(_PER_MATCH):
        column[i::_PER_MATCH] = parts[first + i * step :: stride]
    while column and column[-1] is None:
        column.pop()
    return cast(list[str], column)


def _at(column: list[str | None] | None, i: int) -> str | None:
    return None if column is None else column[i]


def _from(column: list[str | None] | None, i: int) -> list[str | None] | None:
    return None if column is None else column[i:]


class EventStreamParser:
    """A sans-IO parser for one ``text/event-stream`` response body.

    Feed it the body with :meth:`receive_data` as it arrives, in chunks of any size
    split anywhere, and call :meth:`receive_eof` when the body ends; both return the
    :class:`MessageEvent` objects that input dispatches.

    ``last_event_id`` starts the last event ID buffer (what the previous connection
    ended with).  ``max_line_length`` bounds one line and ``max_event_size`` one
    event's data buffer, both counted in characters after decoding (a line without
    its line end; the data buffer as the standard builds it, each ``data`` value
    plus one LF).  A peer that goes beyond either gets a
    :class:`~tidings.errors.RemoteProtocolError`, so the parser never holds much
    more than one line, one event and the chunk being parsed.
    """

    __slots__ = (
        "_after_cr",
        "_check_size",
        "_data",
        "_data_size",
        "_id_buffer",
        "_last_event_id",
        "_max_event_size",
        "_max_line_length",
        "_partial",
        "_partial_len",
        "_retry",
        "_shape",
        "_started",
        "_state",
        "_type",
        "_undecoded",
    )

    def __init__(
        self,
        *,
        last_event_id: str = "",
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        if not isinstance(last_event_id, str):
            raise LocalProtocolError("last_event_id must be a str")
        if "\x00" in last_event_id or "\r" in last_event_id or "\n" in last_event_id:
            # No event stream can produce such an ID, and it ends up in a header.
            raise LocalProtocolError("last_event_id must not contain NUL, CR or LF")
        for name, limit in (
            ("max_line_length", max_line_length),
            ("max_event_size", max_event_size),
        ):
            if type(limit) is not int or limit < 1:
                raise LocalProtocolError(f"{name} must be a positive int, not {limit!r}")
        self._undecoded = b""  # the start of a UTF-8 sequence the next chunk completes
        self._started = False  # the leading BOM has been looked for
        self._after_cr = False  # the text so far ends with CR: an LF next belongs to it
        # The unfinished last line, in pieces, after an LF that stands for the line
        # end before it (the fast path's expression wants an LF in front).
        self._partial = ["\n"]
        self._partial_len = 0
        self._data: list[str] = []  # the data buffer, one value per data line
        self._data_size = 0
        self._type = ""  # the event type buffer
        self._id_buffer = last_event_id  # the last event ID buffer
        self._last_event_id = last_event_id  # the last event ID string (committed)
        self._retry: int | None = None
        self._max_line_length = max_line_length
        self._max_event_size = max_event_size
        self._shape = _ANY  # the shape the next chunk tries first
        self._check_size = False  # whether the chunk at hand could hold too big an event
        self._state = _OPEN

    @property
    def last_event_id(self) -> str:
        """The last event ID string: what a reconnection sends as ``Last-Event-ID``.

        It changes only when a blank line dispatches (even one without data), never
        half-way through an event; after a :class:`RemoteProtocolError` it is the
        value that went with the last events returned.
        """
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds from the last valid ``retry`` field."""
        return self._retry

    def receive_data(self, data: bytes) -> list[MessageEvent]:
        """Parse the next chunk of the body and return the events it completes.

        Raises :class:`RemoteProtocolError` when a limit is exceeded (the events of
        this call are dropped, :attr:`last_event_id` and :attr:`retry` keep the
        values they had before it, and every later call raises again), and
        :class:`LocalProtocolError` after :meth:`receive_eof`.
        """
        if self._state:  # not _OPEN
            self._raise_state()
        if self._undecoded:
            data = self._undecoded + data
            self._undecoded = b""
        # A CR byte is a CR character (and neither the held bytes, a BOM nor an LF
        # dropped below is one).  Looked for before decoding, the chunk is read from
        # memory once, by memchr; the decoder then finds it in the cache.  (Only in
        # bytes: `in` means something else for other buffers.)
        has_cr = b"\r" in data if type(data) is bytes else None
        # What codecs' incremental decoder does, minus a layer of Python calls: an
        # incomplete sequence at the end waits for the next chunk.
        text, used = _utf_8_decode(data, "replace", False)
        if used != len(data):
            self._undecoded = bytes(data[used:])
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        shapes = _LF
        last = text.rfind("\n")
        if has_cr or (has_cr is None and "\r" in text):
            # A CR at the very end is a line end already (so CR CR dispatches now),
            # and an LF at the start of the next chunk is then dropped as the second
            # half of a CRLF.
            self._after_cr = text[-1] == "\r"
            cr = text.find("\r")
            if text.startswith("\n", cr + 1):
                # The first line end is a CRLF: expect the others to be, and keep
                # them (every path copes with a lone CR or LF among them).
                shapes = _CRLF
                last = max(last, text.rfind("\r"))
            else:
                text = _normalise(text)
                last = text.rfind("\n")
        partial = self._partial
        tail_len = len(text) - last - 1
        if last < 0:  # still no line end
            partial.append(text)
            # Merge pieces of similar size (a rope's binary counter) up to _PIECE: a
            # line that trickles in tiny chunks then costs O(log n) strings plus one
            # per _PIECE characters, not one per chunk, and each character is copied
            # O(log _PIECE) times.  partial[0] is a sentinel.
            while (
                len(partial) > 2
                and len(partial[-1]) < _PIECE
                and len(partial[-2]) <= 2 * len(partial[-1])
            ):
                piece = partial.pop()
                partial[-1] += piece
            self._partial_len += tail_len
            if self._partial_len > self._max_line_length:
                self._fail("line longer than max_line_length")
            return []
        if (
            not tail_len
            and len(partial) == 1
            and len(text) < _SMALL
            and len(text) < self._max_line_length
            and not self._data
            and not self._type
        ):
            # Live streams mostly deliver one event per chunk, nothing before it:
            # none of what follows applies (the chunk's lines are short enough, and
            # _single changes nothing before it can no longer fail).
            event = self._single(shapes.front + text, shapes)
            if event is not None:
                return [event]
        events: list[MessageEvent] = []
        committed, retry = self._last_event_id, self._retry
        try:
            if (
                tail_len > _LONG_CHUNK
                or self._partial_len > _LONG_CHUNK
                or text.find("\n", 0, _LONG_CHUNK) < 0
            ):
                partial = self._long(text, last, shapes is _CRLF, events)
            else:
                partial[0] = shapes.front
                partial.append(text)
                text = "".join(partial)
                if len(text) > self._max_line_length:
                    lines = _normalise(text) if shapes is _CRLF else text
                    if max(map(len, lines.split("\n"))) > self._max_line_length:
                        self._fail("line longer than max_line_length")
                if not tail_len and len(text) < _SMALL and not self._data and not self._type:
                    # One event after the end of a line begun in an earlier chunk.
                    event = self._single(text, shapes)
                    if event is not None:
                        self._partial = ["\n"]
                        self._partial_len = 0
                        return [event]
                # No event can be larger than the text it comes from.
                self._check_size = len(text) > self._max_event_size
                tail = self._interpret(text, shapes, events)
                partial = ["\n", tail] if tail else ["\n"]
        except RemoteProtocolError:
            self._last_event_id, self._retry = committed, retry
            self._state = _BROKEN
            raise
        self._partial = partial
        self._partial_len = tail_len
        return events

    def receive_eof(self) -> list[MessageEvent]:
        """Note the end of the body; the incomplete event, if any, is discarded.

        Returns the events the end dispatches, which by the standard is none (and
        an ``id`` in the discarded event does not count either).  Calling it again
        is harmless; :meth:`receive_data` afterwards is a :class:`LocalProtocolError`.
        """
        if self._state == _BROKEN:
            self._raise_state()
        self._state = _CLOSED
        self._undecoded = b""
        self._partial = ["\n"]
        self._partial_len = 0
        self._data = []
        self._data_size = 0
        self._type = ""
        self._id_buffer = self._last_event_id
        return []

    # -- internals ---------------------------------------------------------------------

    def _raise_state(self) -> None:
        if self._state == _BROKEN:
            raise RemoteProtocolError("the event stream parser already failed")
        raise LocalProtocolError("receive_data() after receive_eof()")

    def _fail(self, msg: str) -> None:
        self._state = _BROKEN
        raise RemoteProtocolError(msg)

    def _long(self, text: str, last: int, crlf: bool, events: list[MessageEvent]) -> list[str]:
        """Interpret a chunk with a long line at either end, line by line.

        The last line end of ``text`` is at ``last``; ``crlf`` says whether the text
        holds CRs (else its line ends are LFs).  Line ends are found one by one with
        str.find (memchr), so a 64 KiB line costs microseconds; the unfinished line
        before the chunk joins the first line once.  Returns the new unfinished
        line's pieces.
        """
        start = 0
        if not crlf:
            end = text.find("\n")
            lines = [text[:end]]
            if end < last:
                if last - end < _LONG_LINE:
                    # A few short lines between the long ones (an id, a blank line):
                    # one split costs less than a find per line.
                    lines += text[end + 1 : last].split("\n")
                else:
                    while end < last:
                        start = end + 1
                        end = text.find("\n", start)
                        lines.append(text[start:end])
            start = last + 1
        else:
            lines = []
            # The next LF and the next CR, each looked for again once passed.
            lf = text.find("\n", 0, last + 1)
            cr = text.find("\r", 0, last + 1)
            while start <= last:
                if cr < 0 or 0 <= lf < cr:
                    lines.append(text[start:lf])
                    start = lf + 1
                    lf = text.find("\n", start, last + 1)
                else:
                    lines.append(text[start:cr])
                    start = cr + 1
                    if lf == start:  # CRLF
                        start += 1
                        lf = text.find("\n", start, last + 1)
                    cr = text.find("\r", start, last + 1)
        tail_len = len(text) - start
        max_line = self._max_line_length
        if (
            tail_len > max_line
            or self._partial_len + len(lines[0]) > max_line
            or max(map(len, lines)) > max_line
        ):
            self._fail("line longer than max_line_length")
        first = 0
        partial = self._partial
        if len(partial) > 1:
            partial[0] = ""
            partial.append(lines[0])
            if partial[1] == _DATA_NAME:
                # A data line whose value began in an earlier chunk: join the value
                # alone, rather than the line and then its value out of it.
                partial[1] = ""
                value = "".join(partial)
                size = self._data_size + len(value) + 1
                if size > self._max_event_size:
                    self._fail("event larger than max_event_size")
                self._data_size = size
                self._data.append(value)
                first = 1
            else:
                lines[0] = "".join(partial)
        self._lines(lines, first, events)
        if tail_len > _LONG_LINE and text.startswith(_DATA_NAME, start):
            return ["\n", _DATA_NAME, text[start + len(_DATA_NAME) :]]
        return ["\n", text[start:]] if tail_len else ["\n"]

    def _single(self, text: str, shapes: _Shapes) -> MessageEvent | None:
        """Build the event ``text`` holds if it is exactly one (its buffers start empty).

        ``text`` is ``shapes.front``, the event, its blank line; returns None if it
        is not one event of the _ANY shape.
        """
        match = shapes.patterns[_ANY].match(text, len(shapes.end))
        if match is None or match.end() != len(text) - len(shapes.end):
            return None
        id_, type_, data, rest = match.groups()
        if rest:
            data += rest.replace(shapes.more, "\n")
        if shapes is _CRLF and "\r" in data:
            return None  # a lone CR in a value: the line-by-line path reads it
        if id_ is not None and "\x00" in id_:
            return None  # an id to ignore: the same
        if len(data) >= self._max_event_size:
            self._fail("event larger than max_event_size")
        if id_ is not None:
            self._id_buffer = id_
        self._last_event_id = last_event_id = self._id_buffer
        return _new_event(MessageEvent, (type_ or "message", data, last_event_id))

    def _interpret(self, text: str, shapes: _Shapes, events: list[MessageEvent]) -> str:
        """Interpret the whole lines of ``text`` (``shapes.front``, lines, unfinished line).

        Returns the unfinished line.
        """
        shape = self._shape
        parts = shapes.patterns[shape].split(text)
        # Between and around the matches lie the gaps.  The first is the first line
        # end of the front alone, or the whole front followed by lines, the last of
        # which the first match's line end ends.  Each other gap but the last is
        # empty, or a line end (ending the blank line that dispatched the previous
        # event) and lines the same way.  The last gap is such a line end (or the
        # front if nothing matched), whole lines, and the unfinished line.  Absent
        # id and event fields are None.
        ids: list[str | None] | None = None
        types: list[str | None] | None = None
        multiline = False
        if shape == _ANY:
            gaps = parts[0::5]
            last = gaps.pop()
            ids = parts[1::5]
            types = parts[2::5]
            datas = parts[3::5]
            rests = parts[4::5]
            if any(rests):
                multiline = True
                merged = _merge_rest(datas, rests, shapes)
                if merged is None:
                    return self._slow(text, events)
                datas = merged
        else:
            # Runs of alike events, several a match (see _PER_MATCH).
            step = 2 if shape == _ID_DATA else 1
            gaps = parts[0 :: 1 + _PER_MATCH * step]
            last = gaps.pop()
            if any(gaps[1:]):
                # Other lines come between the runs: read them the general way.
                self._shape = _ANY
                return self._interpret(text, shapes, events)
            datas = _column(parts, step, step)
            if step == 2:
                ids = cast(list[str | None], _column(parts, 1, 2))
            if datas:
                gaps = [gaps[0]] + [""] * (len(datas) - 1)
        crlf = shapes is _CRLF
        if datas:
            if crlf and "\r" in "".join(datas):
                return self._slow(text, events)  # a lone CR in a value
            if ids is not None and "\x00" in text and "\x00" in "".join(filter(None, ids)):
                return self._slow(text, events)  # an id to ignore
            if self._events(gaps, ids, types, datas, crlf, events):
                if shape == _ANY and not multiline:
                    self._narrow_shape(ids, types)
            else:
                # Other lines come between events: let the next chunk try every shape.
                self._shape = _ANY
        elif shape != _ANY:
            self._shape = _ANY  # maybe the events have another shape
        if crlf:
            last = _normalise(last)
        front = 1 if datas else 2
        if last.find("\n", front) < 0:
            return last[front:]
        pieces = last.split("\n")
        tail = pieces.pop()
        self._lines(pieces, front, events)
        return tail

    def _slow(self, text: str, events: list[MessageEvent]) -> str:
        """Interpret ``text`` (front, lines, unfinished line) line by line."""
        pieces = _normalise(text).split("\n")
        tail = pieces.pop()
        self._lines(pieces, 2, events)
        return tail

    def _gap(self, gap: str, skip: int, crlf: bool, events: list[MessageEvent]) -> None:
        """Interpret the lines of a gap but its first ``skip`` (line ends of it)."""
        self._lines((_normalise(gap) if crlf else gap).split("\n"), skip, events)

    def _narrow_shape(self, ids: list[str | None] | None, types: list[str | None] | None) -> None:
        """After a chunk of alike events, let the next one try a narrower shape."""
        if types is not None and types.count(None) != len(types):
            return
        if ids is not None and None not in ids:
            self._shape = _ID_DATA
        elif ids is None or ids.count(None) == len(ids):
            self._shape = _DATA

    def _events(
        self,
        gaps: list[str],
        ids: list[str | None] | None,
        types: list[str | None] | None,
        datas: list[str],
        crlf: bool,
        events: list[MessageEvent],
    ) -> bool:
        """Interpret the matched events and the gap before each.

        Returns whether the events followed each other with nothing in between.
        """
        count = len(datas)
        if len(gaps[0]) > (2 if crlf else 1):
            self._gap(gaps[0], 2, crlf, events)
        first = 0
        if self._data or self._type:
            # The first event continues one already begun: take it field by field.
            self._apply(_at(ids, 0), _at(types, 0), datas[0], events)
            first = 1
        if not any(gaps[1:count]):
            if first < count:
                self._bulk(_from(ids, first), _from(types, first), datas[first:], events)
            return True
        for i in range(first, count):
            if i and gaps[i]:
                self._gap(gaps[i], 1, crlf, events)
            self._apply(_at(ids, i), _at(types, i), datas[i], events)
        return False

    def _bulk(
        self,
        ids: list[str | None] | None,
        types: list[str | None] | None,
        datas: list[str],
        events: list[MessageEvent],
    ) -> None:
        """Build consecutive matched events that start with empty buffers.

        ``self._shape`` is still the shape that found them.
        """
        count = len(datas)
        if self._check_size and max(map(len, datas)) >= self._max_event_size:
            self._fail("event larger than max_event_size")
        id_column: Iterable[str]
        if ids is None or (self._shape != _ID_DATA and ids.count(None) == count):
            id_column = repeat(self._id_buffer, count)
        elif self._shape == _ID_DATA or None not in ids:
            id_column = cast(list[str], ids)
            self._id_buffer = id_column[-1]
        else:
            filled = []
            current = self._id_buffer
            for value in ids:
                if value is not None:
                    current = value
                filled.append(current)
            id_column = filled
            self._id_buffer = current
        self._last_event_id = self._id_buffer
        type_column: Iterable[str]
        if types is None or types.count(None) == count:
            type_column = repeat("message", count)
        else:
            type_column = [value or "message" for value in types]
        events += map(
            _new_event, repeat(MessageEvent, count), zip(type_column, datas, id_column, strict=True)
        )

    def _apply(
        self, id_: str | None, type_: str | None, data: str, events: list[MessageEvent]
    ) -> None:
        """Interpret one matched event field by field (the buffers may be in use)."""
        if id_ is not None:
            self._id_buffer = id_
        if type_ is not None:
            self._type = type_
        self._data_size += len(data) + 1
        if self._data_size > self._max_event_size:
            self._fail("event larger than max_event_size")
        self._data.append(data)
        self._last_event_id = self._id_buffer
        events.append(
            _new_event(
                MessageEvent, (self._type or "message", "\n".join(self._data), self._id_buffer)
            )
        )
        self._data = []
        self._data_size = 0
        self._type = ""

    def _lines(self, pieces: list[str], start: int, events: list[MessageEvent]) -> None:
        """The standard's line-by-line interpretation of ``pieces[start:]``."""
        data = self._data
        size = self._data_size
        type_ = self._type
        id_buffer = self._id_buffer
        committed = self._last_event_id
        max_size = self._max_event_size
        for line in islice(pieces, start, None):
            if not line:  # a blank line: dispatch the event
                committed = id_buffer
                if data:
                    events.append(
                        _new_event(MessageEvent, (type_ or "message", "\n".join(data), id_buffer))
                    )
                    data = []
                    size = 0
                type_ = ""
                continue
            if len(line) < _LONG_LINE:
                # partition is one quick call (find, startswith and two slices are
                # four, three of them parsing their arguments the slow way) ...
                name, _, value = line.partition(":")
                if not name:
                    continue  # a comment
                if value and value[0] == " ":
                    value = value[1:]
            else:
                # ... but would copy a long value twice when it starts with a space.
                colon = line.find(":")
                if colon == 0:
                    continue  # a comment
                if colon < 0:
                    name = line
                    value = ""
                else:
                    name = line[:colon]
                    colon += 1
                    if line.startswith(" ", colon):
                        colon += 1
                    value = line[colon:]
            if name == "data":
                size += len(value) + 1
                if size > max_size:
                    self._fail("event larger than max_event_size")
                data.append(value)
            elif name == "id":
                if "\x00" not in value:
                    id_buffer = value
            elif name == "event":
                type_ = value
            elif name == "retry" and value.isascii() and value.isdigit():
                digits = value.lstrip("0")
                if len(digits) <= _MAX_RETRY_DIGITS:
                    self._retry = int(digits) if digits else 0
            # any other field name is ignored
        self._data = data
        self._data_size = size
        self._type = type_
        self._id_buffer = id_buffer
        self._last_event_id = committed
