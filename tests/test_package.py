"""The package's own rules: public names exported and documented, sans-IO imports nothing of I/O."""

import ast
import importlib
import inspect
import pathlib

import pytest

import tidings

SRC = pathlib.Path(tidings.__file__).parent
FORBIDDEN = {"trio", "socket", "ssl", "time", "random", "asyncio", "threading", "selectors"}
SANS_IO = sorted(
    path
    for path in SRC.rglob("*.py")
    # tidings.trio and tidings.redis are I/O layers and __main__ the command line:
    # they may do I/O.
    if not {"trio", "redis"} & set(path.relative_to(SRC).parts[:-1]) and path.name != "__main__.py"
)


def test_sans_io_modules_were_found() -> None:
    names = {p.relative_to(SRC).as_posix() for p in SANS_IO}
    assert {"cursor.py", "history.py", "backoff.py", "sse/parser.py"} <= names
    assert not any(name.startswith(("trio/", "redis/")) for name in names)


@pytest.mark.parametrize("path", SANS_IO, ids=lambda p: p.relative_to(SRC).as_posix())
def test_sans_io_module_imports_no_io(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("tidings.trio"):
                imported.add("tidings.trio")
    assert not imported & (FORBIDDEN | {"tidings.trio"})


@pytest.mark.parametrize("name", tidings.__all__)
def test_public_name_is_exported_and_documented(name: str) -> None:
    value = getattr(tidings, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert inspect.getdoc(value), f"{name} has no docstring"


@pytest.mark.parametrize(
    "module", ["tidings.sse", "tidings.longpoll", "tidings.ws", "tidings.redis"]
)
def test_subpackage_all_is_importable(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} missing"
