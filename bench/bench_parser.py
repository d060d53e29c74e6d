"""Throughput of the tidings SSE codec against the parsers and encoders people use.

Parsers, each fed the same byte streams in the same chunks:

- tidings: ``EventStreamParser.receive_data`` per chunk;
- httpx-sse: httpx's incremental UTF-8 ``TextDecoder``, then ``SSELineDecoder`` and
  ``SSEDecoder``, driven the way ``EventSource.iter_sse`` drives them;
- sseclient-py: ``SSEClient(chunks).events()``;
- the floor: the cheapest Python that only cuts the stream into events, with no
  WHATWG semantics at all (it is told whether lines end with LF or CRLF), so that
  the table shows how close a parser is to what the interpreter allows, not only
  to its peers.  It is the faster of two loops, both decoding incrementally: one
  ``str.split`` at blank lines per chunk (the unfinished event carried over), and
  one ``str.find`` (memchr) per line end, cutting each line out and counting blank
  lines (the way to go when lines are long: ``str.split`` and ``str.count`` look at
  one character at a time, ``str.find`` of one character does not).  The
  ``of floor`` column is each parser's speed as a share of the floor's.

Streams (about ``--size-mb`` each): small JSON events with ids, multi-line data,
the small events with CRLF line ends, and 64 KiB events, each cut into chunks of
every ``--chunk-size`` (16 KiB is what TLS records and HTTP/2 DATA frames carry at
most, 64 KiB what a plain socket read returns at most); then the small events one
per chunk, as a live stream delivers them.  Every consumer iterates over the events
it gets.  Times are process CPU time, best of ``--repeat`` runs.

Then the encoder: tidings ``ServerSentEvent(...).encode()`` and ``encode_event()``
against sse-starlette's ``ServerSentEvent(...).encode()``, on the same small events
(all three must produce identical bytes).

    python bench/bench_parser.py                          # 50 MB per stream
    python bench/bench_parser.py --size-mb 5 --repeat 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from codecs import utf_8_decode
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from httpx._decoders import TextDecoder  # what httpx's Response.iter_text() decodes with
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from sse_starlette.event import ServerSentEvent as StarletteEvent
from sseclient import SSEClient

from tidings.sse.encoder import ServerSentEvent, encode_event
from tidings.sse.parser import EventStreamParser

# -- streams ---------------------------------------------------------------------------


def _payload(i: int) -> str:
    return json.dumps({"seq": i, "user": "alice", "text": "hello world", "ok": True})


def _build(size: int, make: Callable[[int], bytes]) -> list[bytes]:
    blocks: list[bytes] = []
    total = 0
    while total < size:
        blocks.append(make(len(blocks)))
        total += len(blocks[-1])
    return blocks


def small_events(size: int) -> list[bytes]:
    return _build(size, lambda i: f"id: {i}\ndata: {_payload(i)}\n\n".encode())


def multiline_events(size: int) -> list[bytes]:
    def make(i: int) -> bytes:
        lines = "".join(f"data: line {j} of event {i}: {'x' * 20}\n" for j in range(5))
        return f"id: {i}\n{lines}\n".encode()

    return _build(size, make)


def crlf_events(size: int) -> list[bytes]:
    return _build(size, lambda i: f"id: {i}\r\ndata: {_payload(i)}\r\n\r\n".encode())


def big_events(size: int) -> list[bytes]:
    body = "y" * (64 * 1024)
    return _build(size, lambda i: f"id: {i}\ndata: {body}\n\n".encode())


# Each stream with the line end it uses (only the floor is told).
STREAMS: dict[str, tuple[Callable[[int], list[bytes]], str]] = {
    "small JSON events + id": (small_events, "\n"),
    "multi-line data (5 lines)": (multiline_events, "\n"),
    "small events, CRLF": (crlf_events, "\r\n"),
    "64 KiB events": (big_events, "\n"),
}


def chunked(buf: bytes, size: int) -> list[bytes]:
    return [buf[i : i + size] for i in range(0, len(buf), size)]


# -- parsers ---------------------------------------------------------------------------


def run_tidings(chunks: list[bytes]) -> int:
    parser = EventStreamParser()
    count = 0
    for chunk in chunks:
        for _event in parser.receive_data(chunk):
            count += 1
    parser.receive_eof()
    return count


def run_httpx_sse(chunks: list[bytes]) -> int:
    # httpx's Response.iter_text() is an incremental UTF-8 decoder over the body
    # chunks; httpx_sse._iter_sse_lines and EventSource.iter_sse are reproduced here
    # without the network around them.
    def iter_text() -> Iterator[str]:
        decoder = TextDecoder(encoding="utf-8")
        for chunk in chunks:
            text = decoder.decode(chunk)
            if text:
                yield text
        text = decoder.flush()
        if text:
            yield text

    def iter_sse_lines() -> Iterator[str]:
        decoder = SSELineDecoder()
        for text in iter_text():
            yield from decoder.decode(text)
        yield from decoder.flush()

    def iter_sse() -> Iterator[Any]:
        decoder = SSEDecoder()
        for line in iter_sse_lines():
            line = line.rstrip("\n")
            sse = decoder.decode(line)
            if sse is not None:
                yield sse

    count = 0
    for _event in iter_sse():
        count += 1
    return count


def run_sseclient(chunks: list[bytes]) -> int:
    count = 0
    for _event in SSEClient(iter(chunks)).events():
        count += 1
    return count


PARSERS: dict[str, Callable[[list[bytes]], int]] = {
    "tidings": run_tidings,
    "httpx-sse": run_httpx_sse,
    "sseclient-py": run_sseclient,
}


# -- the floor -------------------------------------------------------------------------


def floor_split(chunks: list[bytes], line_end: str) -> int:
    """Cut each chunk at blank lines with one ``str.split``; count the blocks."""
    blank = line_end * 2
    undecoded = b""
    rest = ""
    count = 0
    for chunk in chunks:
        if undecoded:
            chunk = undecoded + chunk
        text, used = utf_8_decode(chunk, "replace", False)
        undecoded = chunk[used:] if used != len(chunk) else b""
        blocks = (rest + text).split(blank) if rest else text.split(blank)
        rest = blocks.pop()
        for _block in blocks:
            count += 1
    return count


def floor_find(chunks: list[bytes], line_end: str) -> int:
    """Find every LF with ``str.find``, cut the line out, count the blank ones."""
    blank = line_end[:-1]  # what is left of a blank line once its LF is cut off
    undecoded = b""
    pending: list[str] = []  # the pieces of a line that began in an earlier chunk
    count = 0
    for chunk in chunks:
        if undecoded:
            chunk = undecoded + chunk
        text, used = utf_8_decode(chunk, "replace", False)
        undecoded = chunk[used:] if used != len(chunk) else b""
        start = 0
        end = text.find("\n")
        while end >= 0:
            if pending:
                pending.append(text[:end])
                line = "".join(pending)
                pending = []
            else:
                line = text[start:end]
            if line == blank:
                count += 1
            start = end + 1
            end = text.find("\n", start)
        if start < len(text):
            pending.append(text[start:])
    return count


FLOORS: dict[str, Callable[[list[bytes], str], int]] = {
    "floor (split)": floor_split,
    "floor (find)": floor_find,
}


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def _runs(size: int, chunk_sizes: list[int]) -> Iterator[tuple[str, str, list[bytes], int, str]]:
    # Each stream is built just before its runs and dropped after them: holding
    # every stream at once (one of them as a list of 600 000 chunks) would make each
    # full garbage collection in the process walk all of it, skewing the numbers.
    for stream_name, (make, line_end) in STREAMS.items():
        blocks = make(size)
        expected = len(blocks)
        buf = b"".join(blocks)
        del blocks
        for chunk_size in chunk_sizes:
            label = f"{chunk_size // 1024} KiB" if chunk_size % 1024 == 0 else str(chunk_size)
            yield stream_name, label, chunked(buf, chunk_size), expected, line_end
        del buf
    live = small_events(size)
    yield "small events, live", "1 event", live, len(live), "\n"


def bench_parsers(size: int, chunk_sizes: list[int], repeat: int, only: set[str]) -> None:
    print(f"parsers: ~{size / 1e6:.0f} MB per stream, CPU time, best of {repeat}")
    header = (
        f"{'stream':28} {'chunks':>7} {'parser':13} {'events/s':>12} {'MB/s':>8}"
        f" {'vs httpx-sse':>13} {'of floor':>9}"
    )
    print(header)
    print("-" * len(header))
    for stream_name, label, chunks, expected, line_end in _runs(size, chunk_sizes):
        nbytes = sum(map(len, chunks))
        timings: dict[str, float] = {}
        runs: dict[str, Callable[[], int]] = {
            name: partial(run, chunks) for name, run in PARSERS.items() if not only or name in only
        }
        for name, floor in FLOORS.items():
            runs[name] = partial(floor, chunks, line_end)
        for name, run in runs.items():
            elapsed, count = best_time(run, repeat)
            if count != expected:
                sys.exit(f"{name} found {count} events in {stream_name!r}, expected {expected}")
            timings[name] = elapsed
        # The floor is the faster of its two loops; only that one is shown.
        floor_name = min(FLOORS, key=timings.__getitem__)
        for name in FLOORS:
            if name != floor_name:
                del timings[name]
        base = timings.get("httpx-sse")
        floor_time = timings[floor_name]
        for name, elapsed in timings.items():
            ratio = f"{base / elapsed:12.2f}x" if base else f"{'n/a':>13}"
            print(
                f"{stream_name:28} {label:>7} {name:13} {expected / elapsed:12,.0f} "
                f"{nbytes / elapsed / 1e6:8.1f} {ratio} {floor_time / elapsed:8.0%}"
            )
        print()


# -- encoders --------------------------------------------------------------------------


def bench_encoders(count: int, repeat: int) -> None:
    payloads = [(_payload(i), str(i)) for i in range(count)]

    def tidings_class() -> list[bytes]:
        return [ServerSentEvent(data=data, id=id_).encode() for data, id_ in payloads]

    def tidings_function() -> list[bytes]:
        return [encode_event(data, id=id_) for data, id_ in payloads]

    def starlette() -> list[bytes]:
        return [StarletteEvent(data, id=id_, sep="\n").encode() for data, id_ in payloads]

    runs: dict[str, Callable[[], list[bytes]]] = {
        "tidings ServerSentEvent": tidings_class,
        "tidings encode_event": tidings_function,
        "sse-starlette": starlette,
    }
    print(f"encoder: {count:,} small JSON events with ids, best of {repeat}")
    header = f"{'encoder':26} {'events/s':>12} {'vs sse-starlette':>17}"
    print(header)
    print("-" * len(header))
    timings: dict[str, float] = {}
    outputs: dict[str, list[bytes]] = {}
    for name, run in runs.items():
        timings[name], outputs[name] = best_time(run, repeat)
    reference = outputs.get("sse-starlette")
    for name, out in outputs.items():
        if reference is not None and out != reference:
            sys.exit(f"{name} does not produce the same bytes as sse-starlette")
    base = timings.get("sse-starlette")
    for name, elapsed in timings.items():
        ratio = f"{base / elapsed:16.2f}x" if base else f"{'n/a':>17}"
        print(f"{name:26} {count / elapsed:12,.0f} {ratio}")


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="bytes per stream (MB)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        action="append",
        help="bytes per chunk; repeat for several (default: 16384 and 65536)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--encode-events", type=int, default=200_000)
    parser.add_argument(
        "--parser", action="append", default=[], choices=sorted(PARSERS), help="only these"
    )
    parser.add_argument("--skip-encoder", action="store_true")
    args = parser.parse_args(None if argv is None else list(argv))
    chunk_sizes = args.chunk_size or [16 * 1024, 64 * 1024]
    bench_parsers(int(args.size_mb * 1e6), chunk_sizes, args.repeat, set(args.parser))
    if not args.skip_encoder:
        bench_encoders(args.encode_events, args.repeat)


if __name__ == "__main__":
    main()
