"""DeepGEMM plugin vs the reference's torch._grouped_mm on the H100: decode and prefill.

Expert dims of DeepSeek-V3 under EP 8 (32 local experts, H=7168, I=2048). Decode: the
masked layout with m rows per expert (what DeepEP low-latency delivers; 1-128 tokens per
rank). Prefill: the contiguous layout with 4k-16k routed rows. For each: the whole layer
(GEMMs + activation + quantization, as `MoELayer.run_*` runs it) and the first call (which
includes DeepGEMM's JIT compile, a load-time cost users pay once per shape).

    python benchmarks/deepgemm_bench.py       # needs a GPU and deep_gemm (scripts/gpu_session.sh)

Fractions are of the ceilings measured at the start of the same run (benchmarks/ceilings.py):
TFLOP/s against the matmul rate of the layer's dtype, weight GB/s against the HBM copy rate.
``--out`` writes the rows and the ceilings as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import ceilings as measured
from common import timed

import moe_plugin_deepgemm as plugin
from moe_core import Host, MoESpec
from moe_core.registry import Registry
from moe_core.synthetic import random_weights, weight_bytes

E, H, I = 32, 7168, 2048
DECODE_M = (1, 4, 16, 32, 64)
PREFILL_ROWS = (4096, 8192, 16384)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON of every row and the measured ceilings")
    args = ap.parse_args()
    ceil = measured.measure()
    print(measured.describe(ceil))
    reg = Registry.builtin()
    reg.register(plugin, "deepgemm")
    host = Host(reg)
    table = Table(title=f"DeepGEMM plugin vs torch._grouped_mm, {torch.cuda.get_device_name()}, "
                        f"E={E} local experts, H={H}, I={I}")
    for col in ("regime", "rows", "backend", "ms", "TFLOP/s", "% matmul", "weight GB/s", "% HBM copy",
                "first call s"):
        table.add_column(col, justify="right")
    layers = {}
    for quant in ("bf16", "fp8_block128"):
        spec = MoESpec(num_experts=E, top_k=8, hidden_size=H, intermediate_size=I, quant=quant,
                       arch="sm90", max_tokens=16384)
        weights = random_weights(spec)
        for backend in (["deepgemm:contiguous_fused", "deepgemm:masked_fused"] if quant != "bf16" else
                        ["deepgemm:contiguous", "deepgemm:masked", "reference:grouped_mm"]):
            for regime in ("decode", "prefill"):
                s = spec.replace(max_tokens=64 if regime == "decode" else 16384)
                if backend.startswith("deepgemm:masked") and regime == "prefill":
                    continue
                if backend.startswith("deepgemm:contiguous") and regime == "decode":
                    continue
                plan = host.resolve(s, force=backend)
                layers[(backend, regime)] = (host.load(plan, weights, check_values=False), s)
    wbytes = {q: weight_bytes(MoESpec(num_experts=E, top_k=8, hidden_size=H, intermediate_size=I, quant=q))
              for q in ("bf16", "fp8_block128")}
    out_rows = []
    for (backend, regime), (layer, spec) in layers.items():
        sizes = DECODE_M if regime == "decode" else PREFILL_ROWS
        for size in sizes:
            gen = torch.Generator(device="cuda").manual_seed(size)
            if regime == "decode":  # DeepEP-style buffer of 128 rows, `size` of them valid
                x = torch.randn(E, 128, H, device="cuda", generator=gen).to(torch.bfloat16)
                counts = torch.full((E,), size, dtype=torch.int64, device="cuda")
                fn = (lambda lay=layer, x=x, c=counts: lay.run_masked(x, c))
                rows = E * size
            else:
                rows = size
                x = torch.randn(rows, H, device="cuda", generator=gen).to(torch.bfloat16)
                offsets = torch.linspace(0, rows, E + 1, device="cuda").long()
                fn = (lambda lay=layer, x=x, o=offsets: lay.run_contiguous(x, o))
            ms, first = timed(fn)
            flops = 2 * rows * H * 3 * I
            gbs = wbytes[spec.quant.value] / ms / 1e6
            tflops = flops / ms / 1e9
            pct_mm = measured.fraction(tflops, ceil.matmul_tflops(spec.quant))
            pct_hbm = measured.fraction(gbs / 1e3, ceil.hbm_tbps)
            table.add_row(regime, str(rows), f"{backend} ({spec.quant.value})", f"{ms:.3f}", f"{tflops:.0f}",
                          f"{pct_mm:.0%}" if pct_mm is not None else "-", f"{gbs:.0f}",
                          f"{pct_hbm:.0%}" if pct_hbm is not None else "-", f"{first:.2f}")
            out_rows.append(dict(regime=regime, rows=rows, backend=backend, quant=spec.quant.value, ms=ms,
                                 tflops=tflops, pct_matmul=pct_mm, weight_gbs=gbs, pct_hbm_copy=pct_hbm,
                                 first_s=first))
    Console(width=170).print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(ceilings=ceil.to_dict(), rows=out_rows), indent=1))


if __name__ == "__main__":
    main()
