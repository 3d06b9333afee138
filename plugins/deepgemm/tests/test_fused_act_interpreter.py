"""The activation kernel of fused_act.py, run by Triton's interpreter on CPU tensors.

The kernels launch on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1``
(:func:`moe_core.kernels.on_triton`); that must be set before triton is first imported,
so the checks run in a child process of their own (as tests/test_triton_fp8.py does).
Checked: :func:`silu_mul` (bf16 out) against :func:`moe_core.activations.apply_activation`
on the rows below each expert's count, rows past the count left as they were (a sentinel
fill), ragged M and an I that is not whole 128-groups; the fused FP8 variant against its
PyTorch definition on the counted rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHECK = textwrap.dedent("""
    import torch
    from moe_core.kernels import enable_interpreter, on_triton
    enable_interpreter()
    from moe_core import MoESpec
    from moe_core.activations import apply_activation
    from moe_plugin_deepgemm import fused_act
    from moe_plugin_deepgemm.fused_act import fused_silu_mul_quant, reference, silu_mul

    SENTINEL = 0x7F  # every byte: bf16 0x7F7F (3.4e38), not a value the kernel writes here
    gen = torch.Generator().manual_seed(0)
    assert on_triton(torch.zeros(1)), "the kernels would not launch on CPU tensors"

    def spec_for(I, act, limit, alpha):
        kw = dict(swiglu_limit=limit, swiglu_alpha=alpha) if act == "swiglu_limit" else {}
        return MoESpec(num_experts=4, top_k=1, hidden_size=128, intermediate_size=I, activation=act, **kw)

    launched = []
    real_launch = fused_act._launch
    def spy(grid, *a, **kw):
        launched.append((grid, kw["quant"]))
        return real_launch(grid, *a, **kw)
    fused_act._launch = spy

    # bf16 out: [E, M, 2I] with counts (one expert empty, one full), M % 4 != 0, I % 128 != 0;
    # the grid: a program per 4 rows x 512 columns per expert (rows past a count masked off)
    cases = [((3, 10, 192), [10, 0, 3], "silu_gated", None, None, (3, 1, 3)),
             ((2, 12, 640), [7, 12], "silu_gated", None, None, (3, 2, 2)),
             ((3, 9, 192), [1, 9, 4], "swiglu_limit", 7.0, None, (3, 1, 3)),
             ((3, 9, 192), [2, 0, 9], "swiglu_limit", 7.0, 1.702, (3, 1, 3)),
             ((5, 192), None, "silu_gated", None, None, (2, 1, 1))]  # 2-D, no counts: every row
    for shape, counts, act, limit, alpha, grid in cases:
        *lead, I = shape
        h = (torch.randn(*lead, 2 * I, generator=gen) * 3).to(torch.bfloat16)
        spec = spec_for(I, act, limit, alpha)
        cnt = None if counts is None else torch.tensor(counts, dtype=torch.int32)
        out = torch.empty(*lead, I, dtype=torch.bfloat16)
        out.view(torch.uint8).fill_(SENTINEL)
        n = len(launched)
        got = silu_mul(h, limit, alpha, cnt, out=out)
        assert got.data_ptr() == out.data_ptr() and launched[n:] == [(grid, False)], launched[n:]
        rows = torch.arange(lead[-1])  # M
        valid = (rows[None, :] < cnt[:, None]) if cnt is not None else torch.ones_like(rows, dtype=torch.bool)
        exact = apply_activation(spec, h.float()).to(torch.bfloat16)  # one rounding, as the kernel
        bf16 = apply_activation(spec, h)  # the separate torch ops: bf16 rounding in between
        g, e, b = got[valid].float(), exact[valid].float(), bf16[valid].float()
        assert g.numel() == int(valid.sum()) * I and g.isfinite().all()
        # The interpreter's fp32 sigmoid (numpy) may differ from torch's by an ulp, which can
        # move a bf16 rounding: at most one bf16 step, on few elements.
        torch.testing.assert_close(g, e, rtol=2 ** -7, atol=1e-30)
        assert (g == e).float().mean() > 0.98, (g == e).float().mean()
        torch.testing.assert_close(g, b, rtol=2 ** -6, atol=1e-2)
        untouched = got.view(torch.uint8)[~valid]
        assert bool((untouched == SENTINEL).all()), f"{shape} {counts}: a row past its count was written"
        if cnt is not None:  # the no-out call: the same values on the counted rows
            again = silu_mul(h, limit, alpha, cnt)
            assert torch.equal(again[valid], got[valid])

    # FP8 out (the fused variant, same kernel with QUANT): the counted rows, as its definition.
    h = (torch.randn(3, 8, 1024, generator=gen) * 3).to(torch.bfloat16)
    cnt = torch.tensor([5, 0, 8], dtype=torch.int32)
    for limit, alpha in [(None, None), (7.0, 1.702)]:
        q, s = fused_silu_mul_quant(h, limit, alpha, cnt)
        assert launched[-1][1], "the fused call did not launch the quantizing kernel"
        qr, sr = reference(h, limit, alpha)
        valid = torch.arange(8)[None, :] < cnt[:, None]
        assert s.stride(-2) == 1, "scales must be MN-major"
        torch.testing.assert_close(s[valid], sr[valid], rtol=1e-5, atol=0)
        same = q[valid].view(torch.uint8) == qr[valid].view(torch.uint8)
        assert same.float().mean() > 0.98, same.float().mean()
        deq = (q[valid].float().unflatten(-1, (-1, 128)) * s[valid][..., None]).flatten(-2)
        ref = (qr[valid].float().unflatten(-1, (-1, 128)) * sr[valid][..., None]).flatten(-2)
        torch.testing.assert_close(deq, ref, rtol=0.07, atol=1e-3)

    # The contiguous layout: 2-D h, padding rows marked -1 in row_expert, skipped (both modes).
    h2 = (torch.randn(16, 1024, generator=gen) * 3).to(torch.bfloat16)
    rex = torch.tensor([0, 0, 0, -1, 1, -1, -1, -1, 2, 2, 2, 2, 3, -1, -1, -1], dtype=torch.int32)
    keep = rex >= 0
    out = torch.empty(16, 512, dtype=torch.bfloat16)
    out.view(torch.uint8).fill_(SENTINEL)
    got = silu_mul(h2, out=out, row_expert=rex)
    assert launched[-1] == ((4, 1, 1), False), launched[-1]
    exact = apply_activation(spec_for(512, "silu_gated", None, None), h2.float()).to(torch.bfloat16)
    torch.testing.assert_close(got[keep].float(), exact[keep].float(), rtol=2 ** -7, atol=1e-30)
    assert bool((got.view(torch.uint8)[~keep] == SENTINEL).all()), "a padding row was written"
    q, s = fused_silu_mul_quant(h2, row_expert=rex)
    qr, sr = reference(h2, None, None)
    torch.testing.assert_close(s[keep], sr[keep], rtol=1e-5, atol=0)
    assert (q[keep].view(torch.uint8) == qr[keep].view(torch.uint8)).float().mean() > 0.98

    # A filter of the wrong kind is refused, not read as something else.
    for bad in [dict(counts=torch.tensor([1], dtype=torch.int32), row_expert=rex),
                dict(row_expert=rex.long()), dict(row_expert=rex[:8])]:
        try:
            silu_mul(h2, **bad)
        except ValueError as e:
            assert "row_expert" in str(e), e
        else:
            raise AssertionError(f"{bad} was taken")

    try:
        silu_mul(h, out=torch.empty(3, 8, 512))
    except ValueError as e:
        assert "contiguous bf16" in str(e)
    else:
        raise AssertionError("an fp32 out was taken")
    print("same")
""")


#: The runner's masked paths with the kernels interpreted and the stand-in deep_gemm: the
#: unfused variants take silu_mul's kernel with the counts (then, fp8, quantize_groups), the
#: fused one the quantizing kernel; both match the reference on the counted rows.
RUNNER = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])  # the stand-in deep_gemm
    from moe_core.kernels import enable_interpreter
    enable_interpreter()
    import moe_plugin_deepgemm as plugin
    from moe_core import Host, MoESpec
    from moe_core.reference.experts import ReferenceRunner
    from moe_core.reference.oracle import relative_error
    from moe_core.registry import Registry
    from moe_core.synthetic import random_inputs, random_weights
    from moe_plugin_deepgemm import fused_act
    from moe_plugin_deepgemm.runner import DeepGemmRunner
    from moe_plugin_deepgemm.weights import prepare

    reg = Registry.builtin()
    reg.register(plugin, "deepgemm")
    host = Host(reg)
    seen = []
    real_silu_mul, real_launch = fused_act.silu_mul, fused_act._launch
    def silu_mul(h, limit=None, alpha=None, counts=None, out=None, row_expert=None):
        seen.append(("silu_mul", tuple(h.shape), None if counts is None else counts.tolist(),
                     None if row_expert is None else int((row_expert >= 0).sum())))
        return real_silu_mul(h, limit, alpha, counts, out, row_expert)
    def launch(grid, h3, out, scales, counts, row_expert, *a, **kw):  # and which rows it filters
        seen.append(("launch", kw["quant"], None if counts is None else "counts",
                     None if row_expert is None else int((row_expert >= 0).sum())))
        return real_launch(grid, h3, out, scales, counts, row_expert, *a, **kw)
    fused_act.silu_mul, fused_act._launch = silu_mul, launch

    for quant, variant in [("bf16", "masked"), ("fp8_block128", "masked"), ("fp8_block128", "masked_fused")]:
        spec = MoESpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=512, quant=quant,
                       arch="sm90", max_tokens=16)
        plan = host.resolve(spec, force=f"deepgemm:{variant}")
        weights = random_weights(spec, device="cpu")
        runner = DeepGemmRunner(plan, prepare(plan, weights))
        ref = ReferenceRunner(host.resolve(spec, force="reference:loop"), weights)
        tol = 1e-2 if quant == "bf16" else 3e-2
        fused = variant.endswith("_fused")

        seen.clear()
        x = torch.randn(4, 128, 256).to(torch.bfloat16)
        counts = torch.tensor([5, 0, 3, 128])
        out = runner.run_masked(x, counts)
        valid = torch.arange(128)[None, :] < counts[:, None]
        err = relative_error(out[valid], ref.run_masked(x, counts)[valid])
        assert err < tol, (variant, quant, err)
        if fused:
            assert seen == [("launch", True, "counts", None)], seen
        else:
            assert seen == [("silu_mul", (4, 128, 1024), [5, 0, 3, 128], None),
                            ("launch", False, "counts", None)], seen

        seen.clear()
        x, tw, ti = random_inputs(spec, 9, device="cpu")
        assert runner.uses_masked(9)
        err = relative_error(runner(x, tw, ti), ref(x, tw, ti))  # the standard call's masked path
        assert err < tol, (variant, quant, "standard", err)
        assert [e[0] for e in seen] == (["launch"] if fused else ["silu_mul", "launch"]), seen
        if not fused:
            assert seen[0][1] == (4, 128, 1024) and sum(seen[0][2]) == 9 * 2, seen

        # The contiguous path: the same kernels, on the unpadded rows only (row_expert).
        seen.clear()
        runner.force_path = "contiguous"
        err = relative_error(runner(x, tw, ti), ref(x, tw, ti))
        runner.force_path = None
        assert err < tol, (variant, quant, "standard contiguous", err)
        assert [e[0] for e in seen] == (["launch"] if fused else ["silu_mul", "launch"]), seen
        if not fused:
            assert seen[0][2] is None and seen[0][3] == 9 * 2, seen
        assert seen[-1][2:] == (None, 9 * 2), seen  # the kernel skipped the padding rows
    print("same")
""")


def _run(script: str, *args: str):
    pytest.importorskip("triton", reason="triton is in requirements-dev.txt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-4000:]


def test_the_counted_activation_kernel_under_the_interpreter():
    _run(CHECK)


def test_the_runners_masked_paths_launch_the_counted_kernels():
    _run(RUNNER, str(Path(__file__).with_name("fake_deep_gemm")))
