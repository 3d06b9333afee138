"""benchmarks/triton_moe_tune.py's choice, on a CPU: stand-in kernels and a stand-in timer
that prices each tile, so the tile the tuner keeps is known in advance."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import triton_moe_tune as tt  # noqa: E402

from moe_core import MoESpec  # noqa: E402


class StandInKernels:
    """Records each GEMM launch's tile; the activation does nothing."""

    def __init__(self):
        self.tiles = []

    def launch_gemm(self, a, w, out, sorted_slots, block_expert, config, **kw):
        self.tiles.append(config)

    def launch_activation(self, *a, **kw):
        pass

    def activation_code(self, spec):
        return 0


@pytest.mark.parametrize("tokens,block_ms,first_walk", [(16, [16], 1), (512, [64, 128], 8)])
def test_the_fastest_tile_then_its_fastest_row_block_walk(monkeypatch, tokens, block_ms, first_walk):
    """Decode (16 tokens: 4 rows an expert) and prefill (512) buckets: the tile grid at its
    default walk, then the best tile's other walks; the cheapest tile and walk are kept."""
    kernels = StandInKernels()

    def price(call):  # block_n 64 / 256, block_k 256 / 64, a 32-block walk and block_m 64 are cheapest
        call()
        c = kernels.tiles[-1]
        best_n, best_k = (64, 256) if tokens <= 256 else (256, 64)
        return (10.0 - 3 * (c.block_n == best_n) - 2 * (c.block_k == best_k) - 1 * (c.group_m == 32)
                + 0.5 * (c.block_m == 128))

    monkeypatch.setattr(tt, "DEVICE", "cpu")
    monkeypatch.setattr(tt, "graph_time_us", price)
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, arch="cpu")
    out = tt.tune_bucket(kernels, spec, "bf16", tt.make_weights(spec, "bf16"), tokens)
    assert list(out) == block_ms
    tiles = (tt.PREFILL_TILES if tokens > 256 else tt.DECODE_TILES)["bf16"]
    (t1, c1), (t2, c2) = out[block_ms[0]]
    assert c1 == c2 and (c1.block_n, c1.block_k, c1.group_m) == ((64, 256, 32) if tokens <= 256 else (256, 64, 32))
    assert t1 == t2 == 4.0
    walks = [t for t in kernels.tiles if t.group_m != first_walk]
    others = sorted(g for g in tt.GROUP_MS if g != first_walk)
    # only the best tile's walks were tried, each once per GEMM and block_m
    assert sorted(t.group_m for t in walks) == sorted(others * 2 * len(block_ms))
    assert all((t.block_n, t.block_k) == (c1.block_n, c1.block_k) for t in walks)
    assert len(kernels.tiles) == 2 * len(block_ms) * (len(tiles) + len(others))
