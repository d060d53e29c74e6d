"""Line coverage of ``tidings`` by a harness's corpus, with coverage.py.

libFuzzer counts edges; this says which lines of the targets a corpus reaches.
Run from the repository root (``pip install coverage`` first)::

    python fuzz/coverage_report.py fuzz_server_http1 fuzz/corpus/server_http1 \\
        [--include 'src/tidings/trio/*'] [--missing]

Every file of the given directories is fed once to the harness's
``test_one_input``; an input that fails is reported and the replay goes on.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("harness", help="module name in fuzz/, e.g. fuzz_server_h2")
    parser.add_argument("corpus", nargs="+", type=Path, help="corpus or seed directories")
    parser.add_argument(
        "--include", action="append", default=None, help="file patterns (comma-separated)"
    )
    parser.add_argument("--missing", action="store_true", help="list the lines not reached")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cov = coverage.Coverage(source=["tidings"])
    cov.start()
    module = importlib.import_module(args.harness)
    failed = 0
    for folder in args.corpus:
        for path in sorted(folder.iterdir()):
            try:
                module.test_one_input(path.read_bytes())
            except Exception as exc:
                failed += 1
                print(f"{path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    cov.stop()
    include = None if args.include is None else [p for i in args.include for p in i.split(",")]
    cov.report(include=include, show_missing=args.missing, skip_covered=False)
    if failed:
        sys.exit(f"{failed} input(s) failed")


if __name__ == "__main__":
    main()
