"""``torch:all_to_all`` packs each token's row (activations, top-k ids and weights) into bytes;
a rank may send 0 rows (an empty slice of a batch, no token routed to a peer)."""

from __future__ import annotations

import pytest
import torch

from moe_core.tokens import Wire
from moe_core.torch_dispatch.a2a import RowCodec

H, K = 256, 4


@pytest.mark.parametrize("wire", [Wire.BF16, Wire.FP8, Wire.FP8_UE8M0])
@pytest.mark.parametrize("rows", [0, 1, 5])
def test_rows_round_trip_including_none(wire, rows):
    codec = RowCodec(H, K, wire)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, H, generator=gen).bfloat16()
    ids = torch.randint(0, 64, (rows, K), generator=gen)
    w = torch.rand(rows, K, generator=gen)
    buf = codec.encode(x, ids, w)
    assert buf.dtype == torch.uint8 and tuple(buf.shape) == (rows, codec.row_bytes)
    x2, ids2, w2 = codec.decode(buf)
    assert tuple(x2.shape) == (rows, H) and tuple(ids2.shape) == tuple(w2.shape) == (rows, K)
    assert torch.equal(ids2, ids) and torch.equal(w2, w)
    if wire is Wire.BF16:
        assert torch.equal(x2, x)
    elif rows:  # fp8 in 1x128 groups: a few percent of each value
        err = ((x2.float() - x.float()).norm() / x.float().norm()).item()
        assert 0 < err < 0.1
