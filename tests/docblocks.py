"""The python blocks of a Markdown file, run the way a reader runs them: in order, in one
namespace per file. Used by tests/test_docs.py; also the per-rank worker for blocks that
run on several processes (``python tests/docblocks.py DOC LINE`` under torch.distributed's
environment variables).

Markers, on the line before a ```python fence (blank lines between are allowed):

* ``<!-- no-test: REASON -->``: not run; the test run reports it as skipped with REASON.
* ``<!-- gloo-ranks: N -->``: run on N CPU processes (gloo), after the file's earlier
  blocks; the block initialises the process group itself (``init_process_group("gloo")``).
"""

from __future__ import annotations

import os
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!--\s*(no-test|gloo-ranks):(.*?)-->\s*$")


class DocFormatError(ValueError):
    """A marker without a reason, or one that does not precede a python block."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the first code line, 1-based
    code: str
    skip: str | None = None
    ranks: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def in_process(self) -> bool:
        return self.skip is None and self.ranks is None


def extract(path: Path, text: str | None = None) -> list[Block]:
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: tuple[str, str, int] | None = None  # (kind, argument, line)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line.strip())
        if m:
            kind, arg = m.group(1), m.group(2).strip()
            if not arg:
                raise DocFormatError(f"{path.name}:{i + 1}: a {kind} marker needs "
                                     f"{'a reason' if kind == 'no-test' else 'a rank count'}")
            pending = (kind, arg, i + 1)
        elif line.lstrip().startswith("```"):
            indent = line[:len(line) - len(line.lstrip())]
            lang = line.strip()[3:].strip()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise DocFormatError(f"{path.name}:{i + 1}: a code fence that never closes")
            if lang == "python":
                code = "\n".join(x[len(indent):] if x.startswith(indent) else x
                                 for x in lines[i + 1:end])
                skip = ranks = None
                if pending and pending[0] == "no-test":
                    skip = pending[1]
                elif pending:
                    ranks = int(pending[1])
                blocks.append(Block(path, i + 2, code, skip, ranks))
            elif pending:
                raise DocFormatError(f"{path.name}:{pending[2]}: the {pending[0]} marker precedes "
                                     f"a {lang or 'plain'} block, not a python one")
            pending = None
            i = end
        elif line.strip() and pending:
            raise DocFormatError(f"{path.name}:{pending[2]}: the {pending[0]} marker must directly "
                                 "precede a ```python block")
        i += 1
    if pending:
        raise DocFormatError(f"{path.name}:{pending[2]}: the {pending[0]} marker precedes nothing")
    return blocks


def module_for(path: Path) -> types.ModuleType:
    """A fresh module to run a file's blocks in (in sys.modules, so that code can
    register ``sys.modules[__name__]`` as a plugin, as a script run with python would)."""
    name = "docs_" + re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    return module


def run(block: Block, module: types.ModuleType) -> None:
    """Execute ``block`` in ``module``; tracebacks point at the Markdown file's lines."""
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    exec(code, module.__dict__)


def run_on_rank(path: Path, line: int) -> None:
    """The per-rank worker: the file's in-process blocks before ``line``, then that block."""
    blocks = extract(path)
    target = next(b for b in blocks if b.line == line)
    module = module_for(path)
    for b in blocks:
        if b.line < line and b.in_process:
            run(b, module)
    run(target, module)


if __name__ == "__main__":
    run_on_rank(Path(sys.argv[1]), int(sys.argv[2]))
    # The block ran to its end (an error would have raised above). Skip the interpreter's
    # teardown: gloo's threads can abort it ("terminate called without an active
    # exception", seen once in a full run here; pytorch/pytorch#179291 describes the race).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
