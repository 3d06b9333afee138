"""The Triton kernels' one FP8 1x128-group quantization (:mod:`moe_core.kernels.triton_fp8`),
run by Triton's interpreter on CPU: byte for byte :func:`quantize_fp8_blockwise`, on every
e4m3 value, the ties between neighbours and one fp32 step either side of them, subnormals,
signed zeros, UE8M0 scales and groups along the last axis of a 3-D tile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import torch
    from moe_core.kernels import enable_interpreter
    enable_interpreter()
    import triton
    import triton.language as tl
    from moe_core.kernels.triton_fp8 import fp8_grid_values, fp8_group_scales
    from moe_core.quant.fp8 import quantize_fp8_blockwise

    @triton.jit
    def rows(x_ptr, q_ptr, s_ptr, UE8M0: tl.constexpr):  # a program per row
        r, c = tl.program_id(0) + tl.arange(0, 1), tl.arange(0, 128)
        x = tl.load(x_ptr + r[:, None] * 128 + c[None, :])
        s = fp8_group_scales(x, AXIS=1, UE8M0=UE8M0)
        q = fp8_grid_values(x, s, AXIS=1, INTERPRETED=True)
        tl.store(q_ptr + r[:, None] * 128 + c[None, :], q.to(tl.float8e4nv))
        tl.store(s_ptr + r, s)

    @triton.jit
    def tiles(x_ptr, q_ptr, s_ptr):  # 2 rows x 4 groups, grouped along axis 2
        r, c, g = tl.arange(0, 2), tl.arange(0, 512), tl.arange(0, 4)
        x = tl.reshape(tl.load(x_ptr + r[:, None] * 512 + c[None, :]), (2, 4, 128))
        s = fp8_group_scales(x, AXIS=2, UE8M0=False)
        q = fp8_grid_values(x, s, AXIS=2, INTERPRETED=True)
        tl.store(q_ptr + r[:, None] * 512 + c[None, :], tl.reshape(q, (2, 512)).to(tl.float8e4nv))
        tl.store(s_ptr + r[:, None] * 4 + g[None, :], s)

    def quantize(x, ue8m0=False):
        q = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
        s = torch.empty(x.shape[0])
        rows[(x.shape[0],)](x, q, s, UE8M0=ue8m0)
        return q, s

    def same(got, want):
        assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
        assert torch.equal(got[1], want[1].reshape(got[1].shape))

    # Every finite e4m3 value, the midpoints (ties), and one fp32 step either side of both;
    # a 448 in column 0 makes every row's scale exactly 1.
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite()].unique()
    mid = (grid[1:] + grid[:-1]) / 2
    up, down = torch.full((1,), 1e9), torch.full((1,), -1e9)
    vals = torch.cat([v for w in (grid, mid) for v in (w, torch.nextafter(w, up), torch.nextafter(w, down))])
    vals = torch.cat([vals.clamp(-448, 448), torch.tensor([-0.0, -1e-9, 1e-9])])
    vals = torch.cat([vals, vals.new_zeros(-len(vals) % 127)]).view(-1, 127)
    x = torch.cat([torch.full((len(vals), 1), 448.0), vals], 1)
    q, s = quantize(x)
    assert (s == 1).all()
    assert torch.equal(q.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=gen) * torch.logspace(-9, 4, 16)[:, None]
    x[3] = 0.0
    x[4, ::2] = -0.0
    for ue8m0 in (False, True):
        same(quantize(x, ue8m0), quantize_fp8_blockwise(x, 1, 128, ue8m0=ue8m0))
    x = torch.randn(2, 512, generator=gen) * 5
    q, s = torch.empty(2, 512, dtype=torch.float8_e4m3fn), torch.empty(2, 4)
    tiles[(1,)](x, q, s)
    same((q, s), quantize_fp8_blockwise(x, 1, 128))
    print("same")
""")


def test_the_interpreted_quantization_is_torchs_byte_for_byte():
    pytest.importorskip("triton", reason="triton is in requirements-dev.txt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]
