"""The plugin's kernels in Triton's CPU interpreter on tiny shapes, against a float64
computation; run by test_triton_interpreter.py in its own process (``TRITON_INTERPRET=1``
must be set before any kernel is defined, and must not leak into GPU tests of the same run).
Prints one JSON object: case -> {"error": ..., "tolerance": ...} or {"failed": ...}.
"""

from __future__ import annotations

import json
import sys
import traceback

from moe_core.kernels import enable_interpreter  # noqa: E402

enable_interpreter()

import torch  # noqa: E402

from moe_core import Host, MoESpec  # noqa: E402
from moe_core.quant import tolerance  # noqa: E402
from moe_core.reference.oracle import float64_layer, relative_error  # noqa: E402
from moe_core.runner import contiguous_layout  # noqa: E402
from moe_core.synthetic import random_inputs, random_weights  # noqa: E402
from moe_plugin_triton import kernels  # noqa: E402  (after the variable: kernels run interpreted)
from moe_plugin_triton.runner import TritonMoeRunner  # noqa: E402
from moe_plugin_triton.weights import prepare  # noqa: E402

BASE = dict(num_experts=4, top_k=2, hidden_size=64, intermediate_size=48, arch="sm90", max_tokens=16)
FP8 = dict(quant="fp8_block128", hidden_size=128, intermediate_size=160)  # ragged last group
CASES = {  # name: (spec fields, tokens)
    "bf16-silu": (BASE, 5),
    "bf16-ragged-sizes": ({**BASE, "hidden_size": 40, "intermediate_size": 24}, 6),
    "bf16-one-token": (BASE, 1),
    "bf16-zero-tokens": (BASE, 0),
    "bf16-relu2": ({**BASE, "activation": "relu2"}, 4),
    "bf16-gelu": ({**BASE, "activation": "gelu_gated"}, 4),
    "bf16-gpt-oss-clamp-bias": ({**BASE, "activation": "swiglu_limit", "swiglu_limit": 1.0,
                                 "swiglu_alpha": 1.702, "has_bias": True}, 5),
    "bf16-ep-slice": ({**BASE, "tp_size": 2, "ep_size": 2, "rank": 1}, 6),
    "bf16-tp-rank1-bias": ({**BASE, "tp_size": 2, "rank": 1, "has_bias": True,
                            "activation": "swiglu_limit", "swiglu_limit": 1.0}, 4),
    "fp8-silu": ({**BASE, **FP8}, 5),
    "fp8-clamp-ep-slice": ({**BASE, **FP8, "activation": "swiglu_limit", "swiglu_limit": 1.0,
                            "num_experts": 8, "tp_size": 2, "ep_size": 2, "rank": 0}, 4),
    "fp8-relu2": ({**BASE, **FP8, "activation": "relu2"}, 3),
}


def _runner(host, spec, weights):
    plan = host.resolve(spec, force="triton")
    return TritonMoeRunner(plan, prepare(plan, weights))


def standard(host, fields, tokens):
    spec = MoESpec(**fields)
    w = random_weights(spec, device="cpu")
    x, tw, ti = random_inputs(spec, tokens, device="cpu")
    out = _runner(host, spec, w)(x, tw, ti)
    assert out.shape == (tokens, spec.hidden_size) and out.dtype == torch.bfloat16, (out.shape, out.dtype)
    if tokens == 0:
        return 0.0, tolerance(spec.quant)
    return relative_error(out, float64_layer(spec, w, x, tw, ti)), tolerance(spec.quant)


def empty_experts(host):
    """Experts 1 and 3 get no token; expert 0 gets a ragged run longer than a block."""
    spec = MoESpec(**{**BASE, "max_tokens": 32})
    w = random_weights(spec, device="cpu")
    x, tw, _ = random_inputs(spec, 20, device="cpu")
    ids = torch.tensor([[0, 2]] * 19 + [[2, 0]])
    out = _runner(host, spec, w)(x, tw, ids)
    return relative_error(out, float64_layer(spec, w, x, tw, ids)), tolerance(spec.quant)


def contiguous(host, fields):
    spec = MoESpec(**fields)
    w = random_weights(spec, device="cpu")
    x, _, ti = random_inputs(spec, 7, device="cpu")
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    out = _runner(host, spec, w).run_contiguous(rows, offsets)
    ref = host.load(host.resolve(spec.replace(arch="cpu"), force="reference:loop"), w).run_contiguous(rows, offsets)
    return relative_error(out, ref), tolerance(spec.quant)


def swapped(job):
    """``job`` as on a Hopper GPU, where FP8 GEMMs with short row tiles swap their operands
    (``kernels.swaps_operands``); fails unless some launch did swap."""
    real_sm90, real_rule = kernels.is_sm90, kernels.swaps_operands
    decided = []

    def rule(config, fp8, device):
        decided.append(real_rule(config, fp8, device))
        return decided[-1]
    kernels.is_sm90, kernels.swaps_operands = (lambda device: True), rule
    try:
        result = job()
    finally:
        kernels.is_sm90, kernels.swaps_operands = real_sm90, real_rule
    assert any(decided), f"no launch swapped its operands ({decided})"
    return result


def main() -> None:
    host = Host()
    jobs = {name: (lambda f=f, t=t: standard(host, f, t)) for name, (f, t) in CASES.items()}
    for name in ("fp8-silu", "fp8-clamp-ep-slice", "fp8-relu2"):
        f, t = CASES[name]
        jobs[name + "-swapped"] = lambda f=f, t=t: swapped(lambda: standard(host, f, t))
    jobs["fp8-contiguous-swapped"] = lambda: swapped(lambda: contiguous(host, {**BASE, **FP8}))
    jobs["bf16-empty-experts"] = lambda: empty_experts(host)
    jobs["bf16-contiguous-ep"] = lambda: contiguous(host, {**BASE, "tp_size": 2, "ep_size": 2, "rank": 1})
    jobs["fp8-contiguous"] = lambda: contiguous(host, {**BASE, **FP8})
    out = {}
    for name, job in jobs.items():
        try:
            err, tol = job()
            out[name] = {"error": err, "tolerance": tol}
        except Exception:  # noqa: BLE001 - reported per case
            out[name] = {"failed": traceback.format_exc(limit=6)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
