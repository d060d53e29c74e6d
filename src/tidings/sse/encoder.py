"""Turn events into ``text/event-stream`` bytes that parse back to exactly them.

Anything that cannot be written faithfully is refused with
:class:`~tidings.errors.LocalProtocolError` rather than "cleaned up": an ``id`` or
``event`` with a line break would let whoever controls it inject fields or whole
events into the stream, and an ``id`` with NUL would be ignored by every client.

The output uses LF line ends and the ``field: value`` form (one space after the
colon, which the parser strips, so values that start with a space survive).
Lines come in this order: comments, ``retry``, ``id``, ``event``, ``data``, then
the blank line that dispatches the event.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import NoReturn

from tidings.errors import LocalProtocolError

__all__ = ["ServerSentEvent", "encode_comment", "encode_event"]


def _split_lines(text: str) -> list[str]:
    # CRLF, CR and LF all end a line on the parsing side; split on each of them.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _exact_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{name} must be a str, not {type(value).__name__}")
    # A str subclass may format differently from what was checked: keep its content.
    return str.__str__(value)


def _checked_id(id: object) -> str:
    id = _exact_str("id", id)
    if "\n" in id or "\r" in id or "\x00" in id:
        raise LocalProtocolError(f"event id must not contain CR, LF or NUL: {id!r}")
    return id


def _checked_event(event: object) -> str:
    event = _exact_str("event", event)
    if "\n" in event or "\r" in event:
        raise LocalProtocolError(f"event type must not contain CR or LF: {event!r}")
    return event


def _checked_retry(retry: object) -> int:
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise LocalProtocolError(f"retry must be an int, not {type(retry).__name__}")
    retry = int.__int__(retry)  # an int subclass (an IntEnum, say) as a plain int
    if retry < 0:
        raise LocalProtocolError(f"retry must not be negative: {retry}")
    return retry


def _data_lines(data: str) -> str:
    if "\n" in data or "\r" in data:
        return "data: " + "\ndata: ".join(_split_lines(data)) + "\n"
    return "data: " + data + "\n"


def _comment_lines(text: str) -> str:
    return "".join(": " + line + "\n" if line else ":\n" for line in _split_lines(text))


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be sent as UTF-8
        raise LocalProtocolError(f"event text is not encodable as UTF-8: {exc}") from None


class ServerSentEvent:
    """One event to send; :meth:`encode` gives its bytes.

    ``data`` is split on CRLF, CR and LF into one ``data:`` line each (``""`` gives
    one empty ``data:`` line, ``None`` none at all, so the event only updates the
    ID or the reconnection time).  ``id`` must not contain CR, LF or NUL, ``event``
    not CR or LF, and ``retry`` (milliseconds) must be a non-negative int; anything
    else raises :class:`~tidings.errors.LocalProtocolError` at construction.
    ``comment`` becomes one comment line per line of text, which clients ignore
    (useful as a keep-alive).

    Immutable (assigning to a field raises
    :class:`dataclasses.FrozenInstanceError`), compared and hashed by its fields,
    like a frozen dataclass.  It is written out rather than generated because
    servers build one per event sent: the values live in private slots that
    ``__init__`` fills with plain attribute stores, where a frozen dataclass has to
    go through a descriptor call per field.
    """

    __slots__ = ("_comment", "_data", "_event", "_id", "_retry")
    __match_args__ = ("data", "event", "id", "retry", "comment")

    def __init__(
        self,
        data: str | None = None,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        # Refuse a bad event as soon as it exists; encode() then only has to write.
        # Plain values pass the inline tests; anything else gets the full check.
        if data is not None and type(data) is not str:
            data = _exact_str("data", data)
        if event is not None and (type(event) is not str or "\n" in event or "\r" in event):
            event = _checked_event(event)
        if id is not None and (type(id) is not str or "\n" in id or "\r" in id or "\x00" in id):
            id = _checked_id(id)
        if retry is not None and (type(retry) is not int or retry < 0):
            retry = _checked_retry(retry)
        if comment is not None and type(comment) is not str:
            comment = _exact_str("comment", comment)
        self._data = data
        self._event = event
        self._id = id
        self._retry = retry
        self._comment = comment

    @property
    def data(self) -> str | None:
        """The data, or ``None`` for no ``data:`` line at all."""
        return self._data

    @data.setter
    def data(self, value: NoReturn) -> NoReturn:
        _refuse("data")

    @property
    def event(self) -> str | None:
        """The event type, or ``None`` for no ``event:`` line."""
        return self._event

    @event.setter
    def event(self, value: NoReturn) -> NoReturn:
        _refuse("event")

    @property
    def id(self) -> str | None:
        """The event ID, or ``None`` for no ``id:`` line."""
        return self._id

    @id.setter
    def id(self, value: NoReturn) -> NoReturn:
        _refuse("id")

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds, or ``None`` for no ``retry:`` line."""
        return self._retry

    @retry.setter
    def retry(self, value: NoReturn) -> NoReturn:
        _refuse("retry")

    @property
    def comment(self) -> str | None:
        """The comment text, or ``None`` for no comment lines."""
        return self._comment

    @comment.setter
    def comment(self, value: NoReturn) -> NoReturn:
        _refuse("comment")

    def _fields(self) -> tuple[str | None, str | None, str | None, int | None, str | None]:
        return (self._data, self._event, self._id, self._retry, self._comment)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerSentEvent) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(data={self._data!r}, event={self._event!r},"
            f" id={self._id!r}, retry={self._retry!r}, comment={self._comment!r})"
        )

    def __reduce__(self) -> tuple[type[ServerSentEvent], tuple[object, ...]]:
        return (self.__class__, self._fields())

    def encode(self) -> bytes:
        """Return the event as UTF-8 bytes, ending with the blank line that dispatches it."""
        data = self._data
        if data is None:
            text = "\n"
        elif "\n" in data or "\r" in data:
            text = _data_lines(data) + "\n"
        elif self._event is None and self._retry is None and self._comment is None:
            # The usual event -- data, maybe an id -- in one piece.
            id = self._id
            text = f"data: {data}\n\n" if id is None else f"id: {id}\ndata: {data}\n\n"
            try:
                return text.encode()
            except UnicodeEncodeError as exc:
                raise LocalProtocolError(f"event text is not encodable as UTF-8: {exc}") from None
        else:
            text = f"data: {data}\n\n"
        if self._event is not None:
            text = f"event: {self._event}\n{text}"
        if self._id is not None:
            text = f"id: {self._id}\n{text}"
        if self._retry is not None:
            text = f"retry: {self._retry}\n{text}"
        if self._comment is not None:
            text = _comment_lines(self._comment) + text
        try:
            return text.encode()
        except UnicodeEncodeError as exc:  # lone surrogates cannot be sent as UTF-8
            raise LocalProtocolError(f"event text is not encodable as UTF-8: {exc}") from None


def _refuse(name: str) -> NoReturn:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one event straight to bytes: the server's hot path.

    Same output and same checks as ``ServerSentEvent(data, event, id).encode()``,
    without building an object first.
    """
    if type(data) is not str:
        data = _exact_str("data", data)
    if "\n" in data or "\r" in data:
        text = _data_lines(data) + "\n"
    else:
        text = f"data: {data}\n\n"
    if event is not None:
        if type(event) is not str or "\n" in event or "\r" in event:
            event = _checked_event(event)
        text = f"event: {event}\n{text}"
    if id is not None:
        if type(id) is not str or "\n" in id or "\r" in id or "\x00" in id:
            id = _checked_id(id)
        text = f"id: {id}\n{text}"
    return _to_bytes(text)


def encode_comment(text: str = "") -> bytes:
    """Encode comment lines (no blank line after them), e.g. a heartbeat.

    Clients ignore comments, so this can be sent between events at any time;
    multi-line text becomes several comment lines.
    """
    return _to_bytes(_comment_lines(_exact_str("comment", text)))
