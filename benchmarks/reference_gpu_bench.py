"""The reference backend on a GPU: `grouped_mm` vs `loop`, decode and prefill, real shapes.

Prints time, TFLOP/s and weight GB/s (weights of experts that received tokens, read once).
Run on the device machine by scripts/gpu_session.sh; results in docs/results.md.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from common import timed

from moe_core import Host, spec_for_model
from moe_core.synthetic import random_inputs, random_weights, weight_bytes

SHAPES = [("Qwen/Qwen3-30B-A3B", 1), ("Qwen/Qwen3-235B-A22B", 4)]  # (model, tp)
TOKENS = [64, 4096]


def main() -> None:
    host = Host()
    table = Table(title=f"reference backend on {torch.cuda.get_device_name()}")
    for col in ("model", "tp", "tokens", "variant", "ms", "TFLOP/s", "weight GB/s"):
        table.add_column(col, justify="right")
    for model, tp in SHAPES:
        for tokens in TOKENS:
            spec = spec_for_model(model, quant="bf16", tp=tp, arch="auto", max_tokens=tokens)
            weights = random_weights(spec)
            x, tw, ti = random_inputs(spec, tokens)
            flops = 2 * tokens * spec.top_k * spec.hidden_size * (spec.w13_rows + spec.intermediate_per_partition)
            hit = torch.unique(ti).numel()
            wbytes = weight_bytes(spec) * hit / spec.local_experts
            for variant in ("grouped_mm", "loop"):
                layer = host.load(spec, weights, force=f"reference:{variant}", check_values=False)
                ms, _ = timed(lambda: layer(x, tw, ti), iters=20 if variant == "grouped_mm" else 3)
                table.add_row(model.split("/")[1], str(tp), str(tokens), variant, f"{ms:.3f}",
                              f"{flops / ms / 1e9:.1f}", f"{wbytes / ms / 1e6:.0f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
