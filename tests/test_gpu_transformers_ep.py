"""transformers' own sharding on two GPUs with ``experts_implementation="moe_core"``: TP=2 and
EP=2 (moe-core's token exchange, transformers' all_to_all and auto) at real layer dims, NCCL,
the GPU runners and DeepEP where built (scripts/gpu_session.sh on nvidia-h200-x2;
results in docs/results.md). Runs tests/hf_dist_worker.py under torchrun; its JSON goes to
``$OUT/hf_dist_ep2.json`` when ``OUT`` is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the transformers extra is not installed")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason="needs 2 CUDA GPUs: run scripts/gpu_session.sh on the "
                              "nvidia-h200-x2 machine (recorded in docs/results.md)"),
]
TOLERANCE = 2e-2
FAMILIES = "qwen3_moe,deepseek_v3,gpt_oss"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = Path(os.environ.get("OUT") or tmp_path_factory.mktemp("ep2")) / "hf_dist_ep2.json"
    worker = Path(__file__).with_name("hf_dist_worker.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(worker), "--families", FAMILIES, "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stderr[-5000:]
    return json.loads(out.read_text())


def test_every_case_ran_on_both_ranks(records):
    from hf_dist_worker import CASES

    got = {(r["family"], r["case"], r["rank"]) for r in records}
    assert got == {(f, c, k) for f in FAMILIES.split(",") for c in CASES for k in (0, 1)}


def test_sharded_logits_match_the_single_process_model(records):
    bad = [r for r in records if not (0 < r["error"] < TOLERANCE and r["error_one"] < TOLERANCE)]
    assert not bad, bad


def test_the_report_names_every_layers_backend_and_dispatcher(records):
    for r in records:
        for layer in r["layers"]:
            assert layer["implementation"] == "moe_core" and layer["loaded"], layer
            assert all(layer["backend"].values()), layer
            if r["case"] != "tp2":
                assert all(layer["dispatcher"].values()), layer
    moe_core = sorted({f"{g}: {d}" for r in records if r["case"] == "ep2-moe_core"
                       for layer in r["layers"] for g, d in layer["dispatcher"].items()})
    backends = sorted({b for r in records for layer in r["layers"] for b in layer["backend"].values()})
    print(f"\nmoe_core exchange: {moe_core}\nrunners: {backends}")
