"""Reference quantization against definitions: e2m1 grid, packing, scale shapes, error bounds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_core import MoESpec, Quant
from moe_core.quant import dequantize_weights, quantize_weights
from moe_core.quant.fp4 import (E2M1_VALUES, dequantize_mxfp4, dequantize_nvfp4, e2m1_decode,
                                e2m1_encode, pack_nibbles, quantize_mxfp4, quantize_nvfp4,
                                unpack_nibbles)
from moe_core.quant.fp8 import dequantize_fp8_blockwise, quantize_fp8_blockwise
from moe_core.weights import expected_tensors, validate_weights


def test_e2m1_grid_is_exact_and_signed():
    grid = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES[1:]))
    assert torch.equal(e2m1_decode(e2m1_encode(grid)), grid)
    assert e2m1_encode(torch.tensor([-0.0, 0.1])).tolist() == [0, 0]  # no negative zero code


def test_e2m1_rounds_to_nearest_ties_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.3, 5.1, 100.0, -2.6])
    assert e2m1_decode(e2m1_encode(x)).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 6.0, 6.0, -3.0]


@given(st.integers(1, 37))
def test_nibble_packing_round_trips(k):
    codes = torch.randint(0, 16, (3, k), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (3, (k + 1) // 2)
    assert torch.equal(unpack_nibbles(packed, k), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4 if k > 1 else 0)


@pytest.mark.parametrize("bn, bk", [(128, 128), (1, 128), (1, None), (None, None)])
def test_fp8_blockwise_shapes_and_error_bound(bn, bk):
    x = torch.randn(2, 200, 300)
    q, s = quantize_fp8_blockwise(x, bn, bk)
    rows = -(-200 // bn) if bn else 1
    cols = -(-300 // bk) if bk else 1
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, rows, cols)
    back = dequantize_fp8_blockwise(q, s, bn, bk)
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2**-4 for normal values
    assert ((back - x).abs() <= x.abs() * 2**-4 + s.max() * 2**-9).all()
    assert torch.isclose(back.abs().max(), x.abs().max(), rtol=1e-6)  # block max maps to 448 exactly


def test_nvfp4_round_trip_and_global_scale():
    x = torch.randn(3, 64, 80)
    packed, scale, g = quantize_nvfp4(x)
    assert packed.shape == (3, 64, 40) and scale.shape == (3, 64, 5) and g.shape == (3,)
    assert scale.dtype == torch.float8_e4m3fn
    assert torch.allclose(g, x.abs().amax(dim=(-2, -1)) / (448 * 6))
    back = dequantize_nvfp4(packed, scale, g, 80)
    rel = (back - x).norm() / x.norm()
    assert rel < 0.15 and back.abs().max() <= x.abs().max() * 1.07


def test_mxfp4_scales_are_powers_of_two():
    x = torch.randn(4, 96) * 10
    packed, scale = quantize_mxfp4(x)
    assert packed.shape == (4, 48) and scale.shape == (4, 3) and scale.dtype == torch.uint8
    back = dequantize_mxfp4(packed, scale, 96)
    blockmax = x.abs().reshape(4, 3, 32).amax(-1)
    assert torch.equal(scale.float() - 127, torch.ceil(torch.log2(blockmax / 6)))
    assert (back - x).norm() / x.norm() < 0.2
    zero_packed, zero_scale = quantize_mxfp4(torch.zeros(1, 32))
    assert zero_scale.item() == 0 and dequantize_mxfp4(zero_packed, zero_scale, 32).abs().sum() == 0


SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 300), st.integers(1, 200))


@settings(max_examples=40, deadline=None)
@given(SHAPES, st.sampled_from(list(Quant)), st.sampled_from(["silu_gated", "relu2"]), st.booleans())
def test_quantized_weights_match_the_canonical_table(sizes, quant, act, bias):
    """Property: for any shape, quantize_weights produces exactly expected_tensors, and
    dequantization stays within the format's element-wise bound."""
    E, H, I = sizes
    spec = MoESpec(num_experts=E, top_k=1, hidden_size=H, intermediate_size=I, quant=quant,
                   activation=act, has_bias=bias)
    w13 = torch.randn(E, spec.w13_rows, H)
    w2 = torch.randn(E, H, I)
    b13, b2 = (torch.randn(E, spec.w13_rows), torch.randn(E, H)) if bias else (None, None)
    weights = quantize_weights(spec, w13, w2, b13, b2)
    validate_weights(spec, weights)
    got = {k: (tuple(v.shape), str(v.dtype)[6:]) for k, v in weights.tensors().items()}
    assert got == expected_tensors(spec)
    d13, d2 = dequantize_weights(spec, weights)
    assert d13.shape == w13.shape and d2.shape == w2.shape
    bound = {Quant.BF16: 2**-8, Quant.FP8_BLOCK128: 2**-4, Quant.FP8_TENSOR: 2**-4,
             Quant.FP8_CHANNEL: 2**-4}.get(quant)
    if bound is not None:  # fp8's subnormals lose relative precision: allow an absolute floor
        for d, w in ((d13, w13), (d2, w2)):
            assert ((d - w).abs() <= w.abs() * bound + w.abs().max() * 2**-9 + 1e-6).all()
    else:  # fp4: half the largest grid step (2) times the block scale; the scale is at most
        # amax/6 (nvfp4, +7% for its e4m3 rounding) or below amax/3 (mxfp4, a power of two)
        limit = {Quant.NVFP4: 1.07 / 6, Quant.MXFP4: 1 / 3}[quant]
        for d, w in ((d13, w13), (d2, w2)):
            assert ((d - w).abs() <= w.abs().amax() * limit + 1e-6).all()


def test_gated_block_scales_restart_at_the_up_half():
    """I=200 is not a multiple of 128: gate and up halves each get ceil(200/128)=2 row blocks."""
    spec = MoESpec(num_experts=1, top_k=1, hidden_size=128, intermediate_size=200, quant="fp8_block128")
    w13 = torch.ones(1, 400, 128)
    w13[:, 200:] = 3.0  # up half: a different block max must not leak into gate blocks
    weights = quantize_weights(spec, w13, torch.ones(1, 128, 200))
    assert weights.w13_scale.shape == (1, 4, 1)
    assert torch.allclose(weights.w13_scale.flatten(), torch.tensor([1, 1, 3, 3]) / 448)
