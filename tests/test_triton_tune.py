"""benchmarks/triton_moe_tune.py's choice, on a CPU: stand-in kernels and a stand-in timer
that prices each tile, so the tile the tuner keeps is known in advance."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import triton_moe_tune as tt  # noqa: E402

from moe_core import MoESpec  # noqa: E402
from moe_plugin_triton.configs import TileConfig  # noqa: E402


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


def test_the_fastest_tile_then_its_fastest_row_block_walk(monkeypatch):
    kernels = StandInKernels()

    def price(call):  # block_n 64, block_k 256 and a walk of 32 row blocks are cheapest
        call()
        c = kernels.tiles[-1]
        return 10.0 - 3 * (c.block_n == 64) - 2 * (c.block_k == 256) - 1 * (c.group_m == 32)

    monkeypatch.setattr(tt, "DEVICE", "cpu")
    monkeypatch.setattr(tt, "graph_time_us", price)
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, arch="cpu")
    out = tt.tune_bucket(kernels, spec, "bf16", tt.make_weights(spec, "bf16"), 16)
    assert list(out) == [16]  # 4 rows an expert: block_m 16 only
    (t1, c1), (t2, c2) = out[16]
    assert c1 == c2 == TileConfig(16, 64, 256, 32, 4, 3) and t1 == t2 == 4.0
    walks = [t for t in kernels.tiles if t.group_m != 1]
    # only the best tile's walks were tried, each once per GEMM
    assert sorted(t.group_m for t in walks) == [8, 8, 32, 32]
    assert all(t.block_n == 64 and t.block_k == 256 for t in walks)
    assert len(kernels.tiles) == 2 * (len(tt.DECODE_TILES["bf16"]) + 2)
