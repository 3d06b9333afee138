"""FlashInfer CUTLASS fused MoE vs DeepGEMM vs torch._grouped_mm on the H100, and S2.

Table 1, the DeepGEMM benchmark's expert dims (DeepSeek-V3 under EP 8: 32 local experts,
H=7168, I=2048, top-8), called in the standard layout (what an engine with a2a none
calls: routing permute + GEMMs + activation + weighted combine, each backend its own
way), decode (4-256 tokens) and prefill (512-2048 tokens, 4k-16k routed rows).
Balanced routing, so every expert gets tokens x 8 / 32 rows.

Table 2, the same expert dims in the contiguous layout a dispatcher delivers (DeepEP
normal, torch all-to-all): 4k-16k rows already grouped per expert.

Table 3, scenario S2: the padded CUTLASS plan next to the plan the host falls back to
when the plugin is disabled (what an unpadded deployment would run; the example plugin
is disabled too, as no deployment installs it), on the shapes of the SGLang report:
Nemotron-3-Nano (I=1856, TP 8 -> 232, relu2) and a synthetic 7688 at TP 8 (961,
SiLU-gated).

    python benchmarks/flashinfer_cutlass_bench.py   # needs a GPU and flashinfer (scripts/gpu_session.sh)

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

from moe_core import Host, MoESpec, spec_for_model
from moe_core.errors import ResolutionError
from moe_core.synthetic import random_weights, weight_bytes

E, H, I, K = 32, 7168, 2048, 8
TOKENS = {"decode": (4, 16, 64, 128, 256), "prefill": (512, 1024, 2048)}
BACKENDS = {"bf16": ("flashinfer_cutlass:bf16", "deepgemm", "reference:grouped_mm"),
            "fp8_block128": ("flashinfer_cutlass:fp8_block128", "deepgemm", "reference:grouped_mm")}


def balanced(tokens: int, spec: MoESpec):
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    x = torch.randn(tokens, spec.hidden_size, device="cuda", generator=gen).to(torch.bfloat16)
    slots = torch.arange(tokens * spec.top_k, device="cuda")
    ids = ((slots + slots // spec.num_experts) % spec.num_experts).view(tokens, spec.top_k)
    w = torch.softmax(torch.randn(tokens, spec.top_k, device="cuda", generator=gen), -1)
    return x, w, ids


#: Set by main(): the ceilings measured in this run, and every row for --out.
CEILINGS: measured.Ceilings | None = None
ROWS: list[dict] = []


def _row(table, label, spec, layer, tokens, backend, wbytes, contiguous=False):
    rows = tokens * spec.top_k
    if contiguous:  # rows grouped per expert, as a dispatcher hands them over
        xr = torch.randn(rows, spec.hidden_size, device="cuda").to(torch.bfloat16)
        offsets = torch.linspace(0, rows, spec.local_experts + 1, device="cuda").long()
        ms, first = timed(lambda: layer.run_contiguous(xr, offsets))
    else:
        x, w, ids = balanced(tokens, spec)
        ms, first = timed(lambda: layer(x, w, ids))
    flops = 2 * rows * spec.hidden_size * (spec.w13_rows + spec.intermediate_per_partition)
    tflops = flops / ms / 1e9
    gbs = wbytes / ms / 1e6
    pct_mm = measured.fraction(tflops, CEILINGS.matmul_tflops(spec.quant))
    pct_hbm = measured.fraction(gbs / 1e3, CEILINGS.hbm_tbps)
    table.add_row(label, str(tokens), str(rows), str(backend), f"{ms:.3f}", f"{tflops:.0f}",
                  f"{pct_mm:.0%}" if pct_mm is not None else "-", f"{gbs:.0f}",
                  f"{pct_hbm:.0%}" if pct_hbm is not None else "-", f"{first:.2f}")
    ROWS.append(dict(case=label, tokens=tokens, rows=rows, backend=str(backend), quant=spec.quant.value,
                     ms=ms, tflops=tflops, pct_matmul=pct_mm, weight_gbs=gbs, pct_hbm_copy=pct_hbm,
                     first_s=first))
    return ms


def _table(title: str) -> Table:
    table = Table(title=title)
    for col in ("case", "tokens", "rows", "backend", "ms", "TFLOP/s", "% matmul", "weight GB/s",
                "% HBM copy", "first call s"):
        table.add_column(col, justify="right")
    return table


def side_by_side(host: Host, console: Console) -> None:
    table = _table(f"Fused MoE layer, standard layout, {torch.cuda.get_device_name()}, "
                   f"E={E} local experts, H={H}, I={I}, top-{K}")
    contiguous = _table("The same, contiguous layout from a dispatcher")
    for quant, backends in BACKENDS.items():
        spec = MoESpec(num_experts=E, top_k=K, hidden_size=H, intermediate_size=I, quant=quant,
                       arch="sm90", max_tokens=2048)
        weights = random_weights(spec)
        wbytes = weight_bytes(spec)
        for backend in backends:
            for regime, counts in TOKENS.items():
                s = spec.replace(max_tokens=max(counts))
                try:
                    plan = host.resolve(s, force=backend)
                except ResolutionError as e:
                    console.print(f"[yellow]{backend} {quant} {regime}: not run: {e}")
                    continue
                layer = host.load(plan, weights, check_values=False)
                for tokens in counts:
                    _row(table, f"{regime} {quant}", s, layer, tokens, plan.backend, wbytes)
                if regime == "prefill":
                    layer = host.load(host.resolve(s.replace(a2a="torch_a2a", ep_size=2, tp_size=2,
                                                             num_experts=2 * E), force=backend),
                                      weights, check_values=False)
                    for tokens in counts:
                        _row(contiguous, f"contiguous {quant}", s, layer, tokens, layer.plan.backend,
                             wbytes, contiguous=True)
        del weights
        torch.cuda.empty_cache()
    console.print(table)
    console.print(contiguous)


def s2(host: Host, console: Console) -> None:
    table = _table("S2: padded CUTLASS vs the unpadded fallback")
    cases = [
        ("Nemotron-3-Nano TP8 (232)",
         spec_for_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", tp=8, arch="sm90", max_tokens=2048)),
        ("synthetic 7688 TP8 (961) bf16",
         MoESpec(num_experts=64, top_k=8, hidden_size=4096, intermediate_size=7688, tp_size=8,
                 arch="sm90", max_tokens=2048)),
        ("synthetic 7688 TP8 (961) fp8",
         MoESpec(num_experts=64, top_k=8, hidden_size=4096, intermediate_size=7688, tp_size=8,
                 quant="fp8_block128", arch="sm90", max_tokens=2048)),
    ]
    for label, spec in cases:
        weights = random_weights(spec)
        wbytes = weight_bytes(spec)
        padded = host.resolve(spec, force="flashinfer_cutlass")
        fallback = host.resolve(spec, disable=("flashinfer_cutlass", "example"))
        times = {}
        for plan in (padded, fallback):
            layer = host.load(plan, weights, check_values=False)
            for tokens in (16, 256, 2048):
                name = f"{plan.backend} (I={plan.intermediate_padded})"
                times[(str(plan.backend), tokens)] = _row(table, label, spec, layer, tokens, name, wbytes)
        for tokens in (16, 256, 2048):
            gain = times[(str(fallback.backend), tokens)] / times[(str(padded.backend), tokens)] - 1
            console.print(f"S2 {label} tokens={tokens}: padded {padded.backend} is {gain:+.0%} throughput "
                          f"vs fallback {fallback.backend}")
        del weights
        torch.cuda.empty_cache()
    console.print(table)


def main() -> None:
    global CEILINGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON of every row and the measured ceilings")
    args = ap.parse_args()
    CEILINGS = measured.measure()
    host = Host()
    console = Console(width=180)
    console.print(measured.describe(CEILINGS))
    side_by_side(host, console)
    s2(host, console)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(ceilings=CEILINGS.to_dict(), rows=ROWS), indent=1))


if __name__ == "__main__":
    main()
