"""`moe matrix`: every cell is a backend, "no backend" with reasons, or an invalid layout."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from conftest import host_with, make_plugin, one
from moe_core import Reason, Verdict, bundled_models
from moe_core.cli import main
from moe_core.matrix import CHOSEN, ERROR, INVALID, NONE, layouts, run_matrix, summarize, to_html


def test_full_matrix_has_no_unexpected_exception_and_covers_every_combination():
    cells = run_matrix()
    assert len(cells) == len(list(layouts(bundled_models().values())))
    assert {c.status for c in cells} <= {CHOSEN, NONE, INVALID}
    assert all(c.backend for c in cells if c.status == CHOSEN)
    # the layouts that are invalid are so for the documented reasons only
    assert {c.reason.split(":")[0] for c in cells if c.status == INVALID} <= {"ep_size", "a2a", "tp_size"}
    assert any(c.status == CHOSEN for c in cells if c.ep == 8 and c.a2a == "deepep_ll")


def test_no_backend_cells_keep_every_reason():
    host = host_with(("picky", make_plugin(one("k"), lambda s: [
        Verdict.no("k", Reason.SHAPE_UNALIGNED, "needs hidden % 4096")])), reference=False)
    cells = run_matrix(host, models=[bundled_models()["Qwen/Qwen3-30B-A3B"]], archs=("sm90",))
    none = [c for c in cells if c.status == NONE]
    assert none and all(("picky:k", "shape_unaligned", "needs hidden % 4096") in c.others for c in none)
    counts = summarize(cells)["sm90"]["declined_by_code"]
    assert counts["shape_unaligned"] == len([c for c in cells if c.status != INVALID])


def test_summary_explains_reference_fallbacks():
    def s2(spec):  # the S2 rule: intermediate per partition must be a multiple of 16
        ok = spec.intermediate_per_partition % 16 == 0
        return [Verdict.yes("k") if ok else
                Verdict.no("k", Reason.SHAPE_UNALIGNED,
                           f"intermediate per partition {spec.intermediate_per_partition} is not a multiple of 16")]
    host = host_with(("cutlass", make_plugin(one("k", 20), s2)))
    nano = bundled_models()["nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"]  # 1856 / 8 = 232
    summary = summarize(run_matrix(host, models=[nano], archs=("sm90",)))["sm90"]
    assert summary["by_backend"]["cutlass:k"] > 0
    reasons = {r["reason"] for r in summary["reference_because"]}
    assert "intermediate per partition 232 is not a multiple of 16" in reasons


def test_a_crash_in_resolution_is_an_error_cell_and_the_cli_fails(monkeypatch):
    import moe_core.cli.matrix_cmd as cmd
    from moe_core.host import Host

    def boom(self, spec, **kw):
        raise RuntimeError("bug")
    monkeypatch.setattr(Host, "explain", boom)
    monkeypatch.setattr(cmd, "default_host", lambda: Host())
    r = CliRunner().invoke(main, ["matrix"])
    assert r.exit_code == 1 and "unexpected exception" in r.output


def test_html_page_is_self_contained_with_reasons(tmp_path):
    page = tmp_path / "m.html"
    r = CliRunner().invoke(main, ["matrix", "--html", str(page)])
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert not re.search(r"https?://|<script|<link", html)
    assert html.count("<table>") == 2 and "<h2>sm90</h2>" in html and "<h2>sm100</h2>" in html
    assert "deepgemm:contiguous_fused: (shape_unaligned) fused activation needs G % 4 == 0" in html
    assert "&#39;deep_gemm&#39;" in html or "&#x27;deep_gemm&#x27;" in html  # escaped, not raw markup


def test_json_output():
    r = CliRunner().invoke(main, ["matrix", "--json"])
    d = json.loads(r.output)
    assert set(d) == {"seconds", "summary", "cells"} and set(d["summary"]) == {"sm90", "sm100"}
    assert d["seconds"] < 30


def test_html_marks_invalid_cells_grey_and_colors_backends():
    # 32 experts split 8 ways, 60 do not: the ep8 columns are grey for Qwen1.5-MoE only
    models = [bundled_models()[n] for n in ("openai/gpt-oss-20b", "Qwen/Qwen1.5-MoE-A2.7B")]
    html = to_html(run_matrix(models=models, archs=("sm90",)), 0.1)
    assert 'class="cell invalid"' in html and "background: #" in html
