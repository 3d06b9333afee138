"""The documentation's python blocks run in CI, so they cannot rot: the README's and the
backend guide's, in order per file, in one namespace per file (see docblocks.py for the
markers). A block that is not run is reported as skipped, with its reason."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from docblocks import Block, DocFormatError, extract, module_for, run

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "writing-a-backend.md"]
#: README.md carries no markers (other changes edit it concurrently); its blocks that cannot
#: run on a CI machine are named here by a line they contain, with the reason.
README_SKIPS = {
    'dist.init_process_group("nccl")': "needs an NCCL process group of ep_size GPU ranks",
    'from_pretrained(name, dtype=torch.bfloat16, experts_implementation="moe_core"':
        "needs a transformers checkpoint `name` (tests/test_transformers_integration.py loads a "
        "saved tiny one the same way; tests/test_transformers_distributed.py shards it on gloo)",
    "step = layer.graphed(": "needs a CUDA device and a graph-safe runner (tests/test_graphs.py "
                             "captures and replays one on the GPU, and checks the refusals on CPU)",
    "rep = apply(model)": "needs a loaded transformers model (`moe hf` and "
                          "tests/test_transformers_integration.py run it)",
}


def _blocks(path: Path) -> list[Block]:
    blocks = extract(path)
    if path.name != "README.md":
        return blocks
    out = []
    for b in blocks:
        reason = next((why for line, why in README_SKIPS.items() if line in b.code), None)
        out.append(Block(b.path, b.line, b.code, reason or b.skip, b.ranks))
    return out


def _skipped():
    return [b for path in DOCS for b in _blocks(path) if b.skip]


def _ranked():
    return [b for path in DOCS for b in _blocks(path) if b.ranks]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run_in_order(path, tmp_path, monkeypatch):
    blocks = [b for b in _blocks(path) if b.in_process]
    assert len(blocks) >= (2 if path.name == "README.md" else 12), \
        f"{path.name}: only {len(blocks)} python blocks found to run"
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    module = module_for(path)
    try:
        for block in blocks:
            run(block, module)
    finally:
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("block", _skipped(), ids=lambda b: b.where)
def test_blocks_not_run_say_why(block):
    pytest.skip(f"{block.where} not run: {block.skip}")


def test_every_readme_skip_still_names_a_block():
    code = [b.code for b in extract(DOCS[0])]
    stale = [line for line in README_SKIPS if not any(line in c for c in code)]
    assert not stale, f"README_SKIPS names lines no README python block has any more: {stale}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("block", _ranked(), ids=lambda b: b.where)
def test_distributed_blocks_run_on_gloo_ranks(block, tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(block.ranks), "PYTHONPATH": str(Path(__file__).parent)}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("docblocks.py")),
                               str(block.path), str(block.line)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(block.ranks)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    failed = [(r, o) for r, (p, o) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(f"rank {r}:\n{o[-3000:]}" for r, o in failed)


# -- the extractor itself ------------------------------------------------------------------
DOC = """# t
```python
a = 1
```
<!-- no-test: needs a GPU -->

```python
raise SystemExit("never run")
```
```bash
echo not python
```
<!-- gloo-ranks: 2 -->
```python
b = a + 1
```
"""


def test_extract_reads_markers_and_lines():
    a, gpu, ranked = extract(Path("t.md"), DOC)
    assert (a.line, a.code, a.in_process) == (3, "a = 1", True)
    assert (gpu.skip, gpu.line, gpu.in_process) == ("needs a GPU", 8, False)
    assert (ranked.ranks, ranked.code, ranked.in_process) == (2, "b = a + 1", False)


@pytest.mark.parametrize("doc, message", [
    ("<!-- no-test: -->\n```python\nx\n```\n", "needs a reason"),
    ("<!-- no-test: gpu -->\ntext\n```python\nx\n```\n", "must directly precede"),
    ("<!-- no-test: gpu -->\n```bash\nx\n```\n", "precedes a bash block"),
    ("<!-- no-test: gpu -->\n", "precedes nothing"),
    ("```python\nx\n", "never closes"),
])
def test_extract_rejects_a_misplaced_marker(doc, message):
    with pytest.raises(DocFormatError, match=message):
        extract(Path("t.md"), doc)


def test_a_failing_block_names_its_line_in_the_file(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("intro\n\n```python\nx = 1\ny = undefined_name\n```\n")
    (block,) = extract(doc)
    with pytest.raises(NameError) as e:
        run(block, module_for(doc))
    assert e.traceback[-1].lineno + 1 == 5 and str(e.traceback[-1].path) == str(doc)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_resolve(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        if file and not (path.parent / file).exists():
            broken.append(target)
        elif not file and anchor not in anchors:
            broken.append(target)
    assert not broken, f"{path.name}: links to nothing: {broken}"
