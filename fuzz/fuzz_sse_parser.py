"""atheris harness: the SSE parser on arbitrary bytes, whole and in chunks.

Invariants, checked on every input:

- feeding the body yields events or a :class:`~tidings.errors.RemoteProtocolError`,
  never any other exception;
- fed whole and fed in chunks cut at fuzzer-chosen points, the body gives the same
  events, ``last_event_id`` and ``retry``, or fails both ways; when it fails, the
  events delivered before the failure are a prefix of what a parser without
  effective limits delivers;
- what the parser holds stays within its (small) limits after every chunk.

Run: ``python fuzz/fuzz_sse_parser.py -max_total_time=60`` (see fuzz/README.md).
"""

from __future__ import annotations

import sys
from itertools import pairwise

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.errors import RemoteProtocolError
    from tidings.sse.parser import EventStreamParser, MessageEvent

_MAX_LINE = 512
_MAX_EVENT = 2048
_UNLIMITED = 1 << 30

Result = tuple[str, list[MessageEvent], str, int | None]


def _feed(chunks: list[bytes], max_line_length: int, max_event_size: int) -> Result:
    parser = EventStreamParser(max_line_length=max_line_length, max_event_size=max_event_size)
    events: list[MessageEvent] = []
    try:
        for chunk in chunks:
            events += parser.receive_data(chunk)
            # Private attributes: the harness checks memory stays bounded.
            if parser._partial_len > max_line_length:
                raise AssertionError("unfinished line held beyond max_line_length")
            if parser._data_size > max_event_size:
                raise AssertionError("data buffer held beyond max_event_size")
            if parser._partial_len != sum(map(len, parser._partial)) - 1:
                raise AssertionError("unfinished line miscounted")
            if parser._data_size != sum(len(value) + 1 for value in parser._data):
                raise AssertionError("data buffer miscounted")
        events += parser.receive_eof()
    except RemoteProtocolError:
        return "failed", events, parser.last_event_id, parser.retry
    return "ok", events, parser.last_event_id, parser.retry


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_line = fdp.ConsumeIntInRange(1, _MAX_LINE)
    max_event = fdp.ConsumeIntInRange(1, _MAX_EVENT)
    cuts = sorted({fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 16))})
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    bounds = [0, *(cut for cut in cuts if cut < len(body)), len(body)]
    chunks = [body[a:b] for a, b in pairwise(bounds)]

    whole = _feed([body], max_line, max_event)
    split = _feed(chunks, max_line, max_event)
    if whole[0] != split[0]:
        raise AssertionError(f"whole {whole[0]}, split {split[0]} for {body!r} cut at {cuts}")
    if whole[0] == "ok":
        if whole != split:
            raise AssertionError(f"whole and split differ for {body!r} cut at {cuts}")
        return
    if whole[1]:
        raise AssertionError("events returned from a call that failed")
    reference = _feed([body], _UNLIMITED, _UNLIMITED)
    if split[1] != reference[1][: len(split[1])]:
        raise AssertionError(f"events before the failure are not a prefix for {body!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
