"""A CPU stand-in for ``deep_gemm`` used by the plugin's CPU tests.

It checks arguments the way DeepGEMM's host code does (K-major operands, dtypes, int32
layouts, shapes, group alignment of the contiguous layout) and computes with torch in
fp32. The masked GEMMs return None, as DeepGEMM does without overlap arguments (S5).
"""

import torch

ALIGNMENT = 128
calls = []


def get_mk_alignment_for_contiguous_layout():
    return ALIGNMENT


def _k_major(t, name):
    assert t.stride(-1) == 1, f"{name} must be K-major"


def _dequant(pair, bn):
    x, sf = pair
    assert x.dtype == torch.float8_e4m3fn and sf.dtype == torch.float32
    s = sf.repeat_interleave(128, dim=-1)
    if bn > 1:
        s = s.repeat_interleave(bn, dim=-2)
    return x.float() * s[..., : x.shape[-2], : x.shape[-1]]


def _check_contiguous_layout(layout, m):
    assert layout.dtype == torch.int32 and layout.is_contiguous() and layout.shape == (m,)
    # every group's rows start at a multiple of the alignment; -1 marks padding rows
    ids = layout.tolist()
    for i in range(0, m, ALIGNMENT):
        block = {g for g in ids[i:i + ALIGNMENT] if g >= 0}
        assert len(block) <= 1, "a group starts inside an aligned block"


def _contiguous(a, b, d, layout):
    _check_contiguous_layout(layout, a.shape[0])
    for g in range(b.shape[0]):
        rows = layout == g
        d[rows] = (a[rows] @ b[g].T).to(d.dtype)


def m_grouped_bf16_gemm_nt_contiguous(a, b, d, grouped_layout, **kw):
    assert a.dtype == b.dtype == d.dtype == torch.bfloat16
    _k_major(a, "a"), _k_major(b, "b")
    assert a.shape[1] % 64 == 0, "k % 64"
    calls.append("bf16_contiguous")
    _contiguous(a.float(), b.float(), d, grouped_layout)


def m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, recipe=None, **kw):
    assert recipe == (1, 128, 128) and d.dtype == torch.bfloat16
    _k_major(a[0], "a"), _k_major(b[0], "b")
    calls.append("fp8_contiguous")
    _contiguous(_dequant(a, 1), _dequant(b, 128), d, grouped_layout)


def _masked(a, b, d, masked_m, expected_m):
    assert masked_m.dtype == torch.int32 and masked_m.is_contiguous() and expected_m > 0
    # the real kernel stores 64/128-row tiles at group * M + offset: M % 128 keeps them apart
    assert a.shape[1] % 128 == 0, f"masked M = {a.shape[1]} is not a multiple of 128"
    assert a.shape[0] == b.shape[0] == d.shape[0] == masked_m.numel()
    for g in range(b.shape[0]):
        m = int(masked_m[g])
        d[g, :m] = (a[g, :m] @ b[g].T).to(d.dtype)
    return None


def m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m, **kw):
    assert a.dtype == b.dtype == d.dtype == torch.bfloat16
    calls.append("bf16_masked")
    return _masked(a.float(), b.float(), d, masked_m, expected_m)


def m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m, recipe=None, **kw):
    assert recipe == (1, 128, 128)
    calls.append("fp8_masked")
    return _masked(_dequant(a, 1), _dequant(b, 128), d, masked_m, expected_m)
