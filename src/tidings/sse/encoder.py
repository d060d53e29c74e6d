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

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

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


@dataclass(frozen=True, slots=True, init=False)
class ServerSentEvent:
    """One event to send; :meth:`encode` gives its bytes.

    ``data`` is split on CRLF, CR and LF into one ``data:`` line each (``""`` gives
    one empty ``data:`` line, ``None`` none at all, so the event only updates the
    ID or the reconnection time).  ``id`` must not contain CR, LF or NUL, ``event``
    not CR or LF, and ``retry`` (milliseconds) must be a non-negative int; anything
    else raises :class:`~tidings.errors.LocalProtocolError` at construction.
    ``comment`` becomes one comment line per line of text, which clients ignore
    (useful as a keep-alive).
    """

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    # Written out rather than generated: a frozen dataclass's own __init__ sets each
    # field through object.__setattr__ and then calls __post_init__, which costs more
    # than encoding the event; servers build one per event sent.
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
        _set_data(self, data)
        _set_event(self, event)
        _set_id(self, id)
        _set_retry(self, retry)
        _set_comment(self, comment)

    def encode(self) -> bytes:
        """Return the event as UTF-8 bytes, ending with the blank line that dispatches it."""
        data = self.data
        if data is None:
            text = "\n"
        elif "\n" in data or "\r" in data:
            text = _data_lines(data) + "\n"
        else:
            text = f"data: {data}\n\n"
        if self.event is not None:
            text = f"event: {self.event}\n{text}"
        if self.id is not None:
            text = f"id: {self.id}\n{text}"
        if self.retry is not None:
            text = f"retry: {self.retry}\n{text}"
        if self.comment is not None:
            text = _comment_lines(self.comment) + text
        try:
            return text.encode()
        except UnicodeEncodeError as exc:  # lone surrogates cannot be sent as UTF-8
            raise LocalProtocolError(f"event text is not encodable as UTF-8: {exc}") from None


def _slot_setter(name: str) -> Callable[[ServerSentEvent, object], None]:
    return cast(Callable[[ServerSentEvent, object], None], vars(ServerSentEvent)[name].__set__)


_set_data = _slot_setter("data")
_set_event = _slot_setter("event")
_set_id = _slot_setter("id")
_set_retry = _slot_setter("retry")
_set_comment = _slot_setter("comment")


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
