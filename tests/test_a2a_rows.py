"""``torch:all_to_all``'s rows: packing and unpacking round-trip (a rank may send 0 rows),
the Triton kernels (run by the interpreter on CPU) agree with the PyTorch path, and a
dispatch + combine reads the device back to the host once (the count exchange)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.overrides import TorchFunctionMode

from moe_core.tokens import Wire
from moe_core.torch_dispatch import rows as R

H, K = 200, 3  # H not a multiple of 128: a ragged last group


def _tokens(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, H, generator=gen).bfloat16(), torch.randint(0, 16, (n, K), generator=gen),
            torch.rand(n, K, generator=gen))


@pytest.mark.parametrize("wire", [Wire.BF16, Wire.FP8, Wire.FP8_UE8M0])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_rows_round_trip_including_none(wire, n):
    fmt = R.RowFormat(H, K, wire)
    assert fmt.row_bytes % 16 == 0 and fmt.ids_offset % 4 == 0 and fmt.scale_offset % 4 == 0
    x, ids, w = _tokens(n, n)
    dest = torch.arange(n, dtype=torch.int32)[:, None]
    buf = R.pack(fmt, x, ids, w, dest, n)
    assert buf.dtype == torch.uint8 and tuple(buf.shape) == (n, fmt.row_bytes)
    assert torch.equal(fmt.ids(buf).long(), ids) and torch.equal(fmt.weights(buf), w)
    x2 = R.unpack(fmt, buf, dest, n)
    assert x2.dtype == torch.bfloat16 and tuple(x2.shape) == (n, H)
    if wire is Wire.BF16:
        assert torch.equal(x2, x)
    elif n:  # fp8 in 1x128 groups: a few percent of each value
        err = ((x2.float() - x.float()).norm() / x.float().norm()).item()
        assert 0 < err < 0.1
        q, s = R.unpack(fmt, buf, dest, n, keep_quantized=True)
        assert q.dtype == torch.float8_e4m3fn and tuple(s.shape) == (n, fmt.groups)
        if wire is Wire.FP8_UE8M0:
            assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two


def test_a_token_goes_to_each_destination_and_rows_to_each_slot():
    fmt = R.RowFormat(H, K, Wire.FP8)
    x, ids, w = _tokens(3)
    dest = torch.tensor([[2, -1], [-1, 0], [1, 3]], dtype=torch.int32)  # token 2 to two ranks
    buf = R.pack(fmt, x, ids, w, dest, 4)
    assert torch.equal(fmt.ids(buf)[[2, 0, 1, 3]].long(), ids[[0, 1, 2, 2]])
    slots = torch.tensor([[0, 5], [-1, 2], [-1, -1], [4, -1]], dtype=torch.int32)
    q, s = R.unpack(fmt, buf, slots, 6, keep_quantized=True, batch_rows=3)
    assert tuple(s.shape) == (2, 3, fmt.groups) and s.stride()[1] == 1  # MN-major per batch
    wq, ws = fmt.wire_tensors(buf)
    for row, out in ((0, 0), (0, 5), (1, 2), (3, 4)):
        assert torch.equal(q[out].view(torch.uint8), wq[row].view(torch.uint8))
        assert torch.equal(s[out // 3, out % 3], ws[row])


TRITON_VS_TORCH = textwrap.dedent("""
    import torch
    from moe_core.tokens import Wire
    from moe_core.torch_dispatch import rows as R
    gen = torch.Generator().manual_seed(1)
    H, K = 200, 3
    x = torch.randn(6, H, generator=gen).bfloat16() * 7
    ids = torch.randint(0, 16, (6, K), generator=gen); w = torch.rand(6, K, generator=gen)
    dest = torch.tensor([[0, -1], [1, 4], [-1, 2], [-1, -1], [3, 5], [6, 7]], dtype=torch.int32)
    slots = torch.tensor([[0, 3, -1], [1, -1, -1], [2, 5, 6], [-1, -1, 7], [4, -1, -1],
                          [8, -1, -1], [-1, -1, -1], [9, 10, 11]], dtype=torch.int32)
    for wire in (Wire.BF16, Wire.FP8, Wire.FP8_UE8M0):
        fmt = R.RowFormat(H, K, wire)
        bufs = []
        for pack in (R._pack_torch, R._pack_triton):
            b = torch.zeros(8, fmt.row_bytes, dtype=torch.uint8)
            pack(fmt, x, ids, w, dest, b)
            bufs.append(b)
        assert torch.equal(bufs[0], bufs[1]), (wire, (bufs[0] != bufs[1]).sum())
        for keep, batch in ((False, 0), (True, 0), (True, 4)):
            keep = keep and fmt.fp8
            outs = []
            for unpack in (R._unpack_torch, R._unpack_triton):
                if keep:
                    s = (torch.zeros(3, fmt.groups, batch).transpose(1, 2) if batch
                         else torch.zeros(12, fmt.groups))
                    out = (torch.zeros(12, H, dtype=torch.float8_e4m3fn), s)
                else:
                    out = torch.zeros(12, H, dtype=torch.bfloat16)
                unpack(fmt, bufs[0], slots, out, keep, batch)
                outs.append(out)
            if keep:
                assert torch.equal(outs[0][0].view(torch.uint8), outs[1][0].view(torch.uint8))
                assert torch.equal(outs[0][1], outs[1][1])
            else:  # the interpreter's fp32 -> bf16 cast may differ in the last bit
                torch.testing.assert_close(outs[0], outs[1], rtol=8e-3, atol=0)
    print("same")
""")


def test_the_triton_kernels_agree_with_the_torch_path_in_the_interpreter():
    pytest.importorskip("triton", reason="triton is in requirements-dev.txt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", TRITON_VS_TORCH], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]


# -- host synchronisation -----------------------------------------------------------------
#: Calls that read a device tensor back to the host (or size an output by its values).
HOST_READS = {"tolist", "item", "nonzero", "__bool__", "__int__", "__index__", "__float__",
              "bincount", "unique", "masked_select", "repeat_interleave", "argwhere"}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        bool_index = name in ("__getitem__", "__setitem__") and len(args) > 1 and \
            isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        if name in HOST_READS or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def one_rank_all_to_all(layout, wire, *, kept: bool, hidden: int, top_k: int, tokens: int):
    """``torch:all_to_all`` over a group of one rank (16 local experts from 0), built without
    a process group: the caller patches ``dist.all_to_all_single`` to a copy."""
    from moe_core.tokens import Layout
    from moe_core.torch_dispatch.a2a import TorchAllToAll

    d = TorchAllToAll.__new__(TorchAllToAll)
    d.group, d.ranks, d.local, d.first, d.layout, d.max_m = None, 1, 16, 0, layout, tokens
    d.cfg = type("Cfg", (), dict(deliver_quantized=kept and layout is not Layout.STANDARD,
                                 max_tokens_per_rank=tokens))
    d.rows = R.RowFormat(hidden, top_k, wire)
    return d


def identity_output(got):
    """What identity experts return for a dispatch: its bf16 rows (zeros shaped like the FP8
    rows when they arrive kept quantized)."""
    if got.x is not None:
        return got.x
    q = got.quantized[0]
    return torch.zeros(*q.shape, dtype=torch.bfloat16, device=q.device)


SYNC_CHECK = textwrap.dedent("""
    import torch, torch.distributed as dist
    import test_a2a_rows as t
    from moe_core.tokens import Layout, Wire

    def copy(out, inp, out_splits=None, in_splits=None, group=None):  # a group of one rank
        out.copy_(inp)
    dist.all_to_all_single = copy
    x, ids, w = t._tokens(7)
    for layout in Layout:
        for wire, kept in ((Wire.BF16, False), (Wire.FP8, False), (Wire.FP8, True)):
            d = t.one_rank_all_to_all(layout, wire, kept=kept, hidden=t.H, top_k=t.K, tokens=8)
            with t.HostReads() as reads:
                got = d.dispatch(x, ids, w)
                d.combine(t.identity_output(got), got)
            assert reads.calls == ["tolist"], (layout, wire, reads.calls)
    print("one read")
""")


def test_dispatch_and_combine_read_the_device_once(tmp_path):
    """With the Triton kernels (interpreted here), the count exchange's ``tolist`` is the
    only host read of a dispatch + combine, in every layout and wire format."""
    pytest.importorskip("triton", reason="triton is in requirements-dev.txt")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", SYNC_CHECK], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "one read" in done.stdout, done.stderr[-3000:]
