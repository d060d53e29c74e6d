"""Mutation testing of tidings with mutmut, one module at a time.

    python .ci/mutate.py                 # every module of [tool.tidings.mutation]
    python .ci/mutate.py follow hub      # some of them
    python .ci/mutate.py --ci            # the modules marked ci = true, checked
                                         # against their recorded min_score

Each module is mutated in a scratch copy of the tree (``.mutation/<name>/``, ignored
by git) with its own mutmut configuration: only that file is mutated, and only its
fast tests (the ``tests`` of its entry in ``pyproject.toml``) are run, so a run is
bounded.  mutmut then runs, for each mutant, only the tests that reach the mutated
function.  The result per module (killed, survived, timeouts, score) is printed and
saved as ``.mutation/<name>/result.json``; ``--ci`` exits non-zero when a module's
score falls below its ``min_score``.  ``mutmut results`` / ``mutmut show NAME`` in
the scratch directory list and show what survived.

The recorded scores, and why what survives survives, are in ``tests/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"
#: Statements whose mutants would only change wording: the message of an exception
#: (its type is the contract, and tests check it), a log line, a repr.  mutmut makes
#: no mutants of them (regular expressions, matched against the statement's first
#: line).
UNJUDGED = [
    r"^\s*raise \w+(\.\w+)*\(",
    r"^\s*def __repr__\(",
    r"^\s*log\.(debug|info|warning|error|exception)\(",
]


def load_modules() -> dict[str, dict[str, object]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    modules: dict[str, dict[str, object]] = data["tool"]["tidings"]["mutation"]["modules"]
    return modules


def mutmut_config(path: str, tests: list[str]) -> str:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(item) for item in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {toml_list([path])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        # no cache between mutants; hypothesis keeps no example database either, so a
        # mutant is judged by the same examples every time
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly"]\n'
        "use_git_change_detection = false\n"
        f"do_not_mutate_patterns = {toml_list(UNJUDGED)}\n"
    )


def prepare(name: str, entry: dict[str, object]) -> Path:
    """A fresh scratch tree for *name*: src, tests and a pyproject with its config."""
    work = SCRATCH / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", ".hypothesis")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    path = str(entry["path"])
    tests = [str(t) for t in entry["tests"]]  # type: ignore[attr-defined]
    (work / "pyproject.toml").write_text(pyproject + mutmut_config(path, tests), "utf-8")
    return work


def run(name: str, entry: dict[str, object], children: int) -> dict[str, object]:
    work = prepare(name, entry)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HYPOTHESIS_PROFILE"] = "mutation"
    mutmut = [sys.executable, "-m", "mutmut"]
    started = time.monotonic()
    log = (work / "mutmut.log").open("w")
    process = subprocess.run(
        [*mutmut, "run", "--max-children", str(children)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        print(f"{name}: mutmut failed ({process.returncode}); see {work / 'mutmut.log'}")
        return {"module": name, "error": process.returncode}
    subprocess.run(
        [*mutmut, "export-cicd-stats"], cwd=work, env=env, check=True, capture_output=True
    )
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = subprocess.run(
        [*mutmut, "results"], cwd=work, env=env, check=True, capture_output=True, text=True
    ).stdout
    judged = stats["killed"] + stats["survived"] + stats["timeout"] + stats["suspicious"]
    # A timeout or a suspicious mutant changed the behaviour enough to be noticed.
    caught = stats["killed"] + stats["timeout"] + stats["suspicious"]
    result: dict[str, object] = {
        "module": name,
        "path": entry["path"],
        "mutants": stats["total"],
        "killed": stats["killed"],
        "timeout": stats["timeout"],
        "suspicious": stats["suspicious"],
        "survived": stats["survived"],
        "no_tests": stats["no_tests"],
        "score": round(caught / judged, 4) if judged else 1.0,
        "seconds": round(elapsed),
        "survivors": [
            line.strip().split(":")[0] for line in survivors.splitlines() if "survived" in line
        ],
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(
        f"{name}: {result['mutants']} mutants, {caught} killed "
        f"({stats['timeout']} by timeout), {stats['survived']} survived, "
        f"{stats['no_tests']} not reached; score {result['score']:.1%} in {elapsed:.0f} s",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="entries of [tool.tidings.mutation.modules]")
    parser.add_argument("--ci", action="store_true", help="the ci = true modules, checked")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    modules = load_modules()
    if args.ci:
        names = [name for name, entry in modules.items() if entry.get("ci")]
    else:
        names = args.modules or list(modules)
    unknown = [name for name in names if name not in modules]
    if unknown:
        parser.error(f"unknown modules: {', '.join(unknown)}; known: {', '.join(modules)}")
    failed = False
    for name in names:
        entry = modules[name]
        result = run(name, entry, args.max_children)
        if "error" in result:
            failed = True
            continue
        floor = float(entry.get("min_score", 0.0))  # type: ignore[arg-type]
        if args.ci and float(result["score"]) < floor:  # type: ignore[arg-type]
            print(f"{name}: score {result['score']:.1%} is below its recorded {floor:.1%}")
            for survivor in result["survivors"]:  # type: ignore[attr-defined]
                print(f"    survived: {survivor}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
