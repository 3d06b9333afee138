"""Code no CPU test executes (benchmarks/, the device scripts, GPU-only paths) must at least
define every name it uses: a GPU run lost a call to such a bug (a helper deleted in a
refactor), and dispatch_bench deleted a local its timed closure reads (harmless only while
nothing calls the closure after the ``del``). pyflakes reads the source; only
its undefined-name findings fail here (style findings are not this test's business)."""

from __future__ import annotations

from pathlib import Path

import pytest

pyflakes = pytest.importorskip("pyflakes", reason="pyflakes is in requirements-dev.txt")
from pyflakes import checker, messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("benchmarks", "scripts", "core/src", "plugins", "examples", "tests")
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


def python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_every_name_used_is_defined():
    import ast

    files = python_files()
    assert len(files) > 100 and any(p.parts[-2] == "benchmarks" for p in files)
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for m in checker.Checker(tree, filename=str(path)).messages:
            if isinstance(m, UNDEFINED):
                found.append(f"{path.relative_to(ROOT)}:{m.lineno}: {m.message % m.message_args}")
    assert not found, "names used but never defined:\n" + "\n".join(found)


def test_the_check_catches_a_deleted_helper():
    import ast

    tree = ast.parse("def main():\n    return make_weights(1)\n")
    assert [type(m) for m in checker.Checker(tree).messages] == [messages.UndefinedName]
