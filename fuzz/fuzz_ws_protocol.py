"""atheris harness: the ``tidings.v1`` WebSocket message parsers.

Each input is parsed by :func:`parse_client_message` or :func:`parse_server_message`,
as bytes and (when it is UTF-8) as text, with a fuzzer-chosen size limit.  The text
is either the raw input or, structure-aware, a JSON object built from the input: a
``type`` from the known ones and fields drawn from a dictionary of the protocol's
names with values of every JSON type, since plain bytes seldom make it past the
JSON decoder and the field checks.

Invariants, on every input:

- a message or :class:`~tidings.errors.RemoteProtocolError`, nothing else;
- bytes and the same text decoded give the same answer (both fail or both parse to
  equal messages);
- a parsed message encodes to text that parses back to an equal message, within the
  same size limit when the input's own encoding was within it.

Run: ``python fuzz/fuzz_ws_protocol.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.errors import RemoteProtocolError
    from tidings.ws.protocol import MessageTooBig, parse_client_message, parse_server_message

# Each type's fields, with values that are right for them (wrong ones come from
# _value, and from other fields).
_SCHEMAS: dict[str, dict[str, list[Any]]] = {
    "subscribe": {"topic": ["t", "a.b-c_d~9"], "cursor": [None, "e.1", "earliest", "x"]},
    "unsubscribe": {"topic": ["t", "news"]},
    "publish": {"topic": ["t"], "msg_id": ["m-1", "!~"], "data": ["", "d"], "event": [None, "e"]},
    "event": {"topic": ["t"], "id": ["e.1", "opaque"], "data": ["d"], "event": [None, "e"]},
    "reset": {"topic": ["t"], "cursor": ["e.0"], "reason": [None, "evicted"]},
    "subscribed": {"topic": ["t"], "cursor": ["e.3"]},
    "published": {"msg_id": ["m-1"], "id": ["e.2"]},
    "error": {"code": ["malformed"], "message": ["", "m"], "topic": [None, "t"], "msg_id": [None]},
}
_TYPES = [*_SCHEMAS, "", "Subscribe", "x" * 70]
_FIELDS = ["type", "topic", "cursor", "msg_id", "event", "data", "id", "reason", "code"]
_FIELDS += ["message", "extra", ""]
_STRINGS = ["t", "news", "a.b-c_d~9", "e.1", "abc.0", "earliest", "m-1", "", " ", "x" * 129]
_STRINGS += ["\ud800", "caf\u00e9", "a\nb", "a\x00", "..", "W/x", "1e5", "\u2028", "x" * 1025]


def _value(fdp: atheris.FuzzedDataProvider) -> Any:
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind <= 3:
        return fdp.PickValueInList(_STRINGS)
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 5:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8))
    if kind == 6:
        return None
    if kind == 7:
        return fdp.PickValueInList([0, -1, 1.5, True, False, 2**70])
    if kind == 8:
        return [fdp.PickValueInList(_STRINGS)]
    return {"topic": fdp.PickValueInList(_STRINGS)}


def _structured(fdp: atheris.FuzzedDataProvider) -> str:
    kind = fdp.PickValueInList(_TYPES)
    obj: dict[str, Any] = {"type": kind}
    for name, values in _SCHEMAS.get(kind, {}).items():
        if fdp.ConsumeIntInRange(0, 7):
            obj[name] = fdp.PickValueInList(values)
    for _ in range(fdp.ConsumeIntInRange(0, 3) // 2 * fdp.ConsumeIntInRange(0, 3)):
        obj[fdp.PickValueInList(_FIELDS)] = _value(fdp)
    text = json.dumps(obj, ensure_ascii=fdp.ConsumeBool())
    if fdp.ConsumeIntInRange(0, 7) == 0:
        # Now and then a duplicate key or trailing junk.
        text = text[:-1] + ', "type": "publish"}' if fdp.ConsumeBool() else text + " x"
    return text


def _parse(parser: Any, message: str | bytes, max_size: int) -> Any:
    try:
        return parser(message, max_size=max_size)
    except RemoteProtocolError as exc:
        return type(exc)


def test_one_input(data: bytes) -> None:
    # The first byte picks the parser, the limit and the mode; in raw mode the rest
    # is the message (so that a seed is that byte and a message from the tests).
    mode = data[0] if data else 0
    parser = parse_client_message if mode & 2 else parse_server_message
    max_size = [1 << 20, 16, 64, 256][(mode >> 2) & 3]
    if mode & 1:
        raw = _structured(atheris.FuzzedDataProvider(data[1:])).encode("utf-8", "surrogatepass")
    else:
        raw = data[1:]

    from_bytes = _parse(parser, raw, max_size)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if not isinstance(from_bytes, type):
            raise AssertionError(f"bytes that are not UTF-8 parsed: {raw!r}") from None
        return
    from_text = _parse(parser, text, max_size)
    if from_bytes != from_text and not (
        isinstance(from_bytes, type) and isinstance(from_text, type)
    ):
        raise AssertionError(f"bytes gave {from_bytes!r}, text gave {from_text!r}: {raw!r}")
    if from_bytes is MessageTooBig and len(raw) <= max_size:
        raise AssertionError(f"{len(raw)} bytes is not over {max_size}")
    if isinstance(from_bytes, type):
        return
    encoded = from_bytes.encode()
    again = _parse(parser, encoded, 1 << 30)
    if again != from_bytes:
        raise AssertionError(f"{from_bytes!r} encodes to {encoded!r}, which parses to {again!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
