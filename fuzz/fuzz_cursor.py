"""atheris harness: cursor parsing and history reads on arbitrary input.

Invariant: ``Position.parse`` returns a position whose wire form is exactly the
input, or raises :class:`~tidings.errors.InvalidCursor`; ``MemoryHistory.read`` with
any string answers with a :class:`Replay` or a :class:`Reset`, never an exception.

Run: ``python fuzz/fuzz_cursor.py -max_total_time=60`` (see fuzz/README.md).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.cursor import Position
    from tidings.errors import InvalidCursor
    from tidings.history import MemoryHistory, Replay, Reset

_HISTORY = MemoryHistory("fuzz", max_events=4, max_topics=2)
for _i in range(6):
    _HISTORY.append("t", str(_i))


def test_one_input(data: bytes) -> None:
    try:
        position = Position.parse(data)
    except InvalidCursor:
        pass
    else:
        if position.format().encode() != data:
            raise AssertionError(f"{data!r} parsed to {position!r}")
    text = data.decode("utf-8", "replace")
    result = _HISTORY.read("t", text, limit=3)
    if not isinstance(result, (Replay, Reset)):
        raise AssertionError(f"unexpected read result {result!r}")
    if isinstance(result, Replay) and len(result.events) > 3:
        raise AssertionError("limit not honoured")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
