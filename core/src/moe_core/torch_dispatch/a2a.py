"""Token dispatch over ``torch.distributed.all_to_all_single``.

Each token goes once to each rank that owns at least one of its experts (not once per
expert), with its top-k ids and weights packed into the same row of bytes, so dispatch is
one count exchange plus one payload exchange. The receiving rank reduces its experts'
outputs per token (weights applied, :func:`moe_core.kernels.combine.weighted_reduce`) before sending
one row back, as DeepEP's normal mode does; the origin adds the per-rank partial sums in fp32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ep import Dispatched, Dispatcher, ep_group
from ..quant.fp8 import ACT_GROUP, dequantize_fp8_blockwise, quantize_fp8_blockwise
from ..kernels.combine import slot_positions, weighted_reduce
from ..runner import contiguous_layout
from ..sizes import cdiv
from ..tokens import Layout, Wire

class RowCodec:
    """Packs (hidden row, top-k ids, top-k weights) into one uint8 row, and back."""

    def __init__(self, hidden: int, top_k: int, wire: Wire):
        self.hidden, self.top_k, self.wire = hidden, top_k, wire
        self.ue8m0 = wire is Wire.FP8_UE8M0
        self.groups = groups = cdiv(hidden, ACT_GROUP)
        self.x_bytes = hidden * 2 if wire is Wire.BF16 else hidden + 4 * groups
        self.row_bytes = self.x_bytes + 8 * top_k

    def encode(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.wire is Wire.BF16:
            parts = [x.to(torch.bfloat16)]
        else:
            q, scale = quantize_fp8_blockwise(x, 1, ACT_GROUP, ue8m0=self.ue8m0)
            parts = [q, scale.reshape(n, self.groups)]
        parts += [ids.to(torch.int32), weights.to(torch.float32)]
        # explicit bytes per row: reshape(n, -1) cannot infer it when a rank sends 0 rows
        return torch.cat([p.contiguous().view(torch.uint8).reshape(n, p.shape[1:].numel() * p.element_size())
                          for p in parts], dim=1)

    def decode(self, buf: torch.Tensor):
        """-> ``(x bf16 [N, H], ids int64 [N, k], weights fp32 [N, k])``."""
        H, k = self.hidden, self.top_k
        x_raw, meta = buf[:, :self.x_bytes], buf[:, self.x_bytes:]
        if self.wire is Wire.BF16:
            x = x_raw.contiguous().view(torch.bfloat16)
        else:
            q = x_raw[:, :H].contiguous().view(torch.float8_e4m3fn)
            scale = x_raw[:, H:].contiguous().view(torch.float32)
            x = dequantize_fp8_blockwise(q, scale, 1, ACT_GROUP).to(torch.bfloat16)
        ids = meta[:, :4 * k].contiguous().view(torch.int32).long()
        weights = meta[:, 4 * k:].contiguous().view(torch.float32)
        return x, ids, weights


class TorchAllToAll(Dispatcher):
    def __init__(self, plan, group=None):
        spec = plan.spec
        self.group = ep_group(group, spec)
        self.ranks, self.local, self.first = spec.ep_size, spec.local_experts, spec.first_expert
        self.layout = plan.dispatch.layout
        self.max_m = plan.dispatch.max_tokens_per_rank * spec.ep_size
        self.codec = RowCodec(spec.hidden_size, spec.top_k, plan.dispatch.wire)

    def _exchange(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        recv = send.new_empty(sum(recv_counts), *send.shape[1:])
        dist.all_to_all_single(recv, send.contiguous(), recv_counts, send_counts, group=self.group)
        return recv

    def dispatch(self, x, topk_ids, topk_weights) -> Dispatched:
        T = x.shape[0]
        hit = torch.zeros(T, self.ranks, dtype=torch.bool, device=x.device)
        hit.scatter_(1, topk_ids.long() // self.local, True)
        _, token = hit.t().nonzero(as_tuple=True)  # grouped by destination rank, token order inside
        send_counts = hit.sum(0)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        sent, got = send_counts.tolist(), recv_counts.tolist()
        payload = self.codec.encode(x.index_select(0, token), topk_ids.index_select(0, token),
                                    topk_weights.index_select(0, token))
        rx, rids, rw = self.codec.decode(self._exchange(payload, sent, got))
        route = (token, sent, got, T)
        if self.layout is Layout.STANDARD:
            return Dispatched(rx, topk_ids=rids, topk_weights=rw, handle=(route, None))
        rows, offsets, _, pairs = contiguous_layout(rx, rids, self.first, self.local)
        counts = offsets.diff()
        order = torch.arange(rows.shape[0], device=rows.device)
        if self.layout is Layout.CONTIGUOUS:
            pos = slot_positions(rx.shape[0], rids.shape[1], pairs, order)
            return Dispatched(rows, counts=counts, handle=(route, (pos, rw)))
        # Masked: row i of expert e goes to e * max_m + (i - offsets[e]). Rows past a count
        # are left unwritten (the layout leaves them unspecified; no kernel reads them).
        expert = torch.repeat_interleave(torch.arange(self.local, device=rows.device), counts,
                                         output_size=rows.shape[0])
        dest = expert * self.max_m + order - offsets[expert]
        buf = rows.new_empty(self.local * self.max_m, rows.shape[1])
        buf.index_copy_(0, dest, rows)
        pos = slot_positions(rx.shape[0], rids.shape[1], pairs, dest)
        return Dispatched(buf.view(self.local, self.max_m, -1), counts=counts, handle=(route, (pos, rw)))

    def combine(self, y, dispatched: Dispatched) -> torch.Tensor:
        (token, sent, got, T), reduce = dispatched.handle
        if reduce is not None:
            pos, rw = reduce
            y = weighted_reduce(y.reshape(-1, y.shape[-1]), pos, rw)
        back = y.to(torch.bfloat16).contiguous()
        # Bytes on the wire: gloo has no bf16 all-to-all; NCCL does not care.
        ret = self._exchange(back.view(torch.uint8), got, sent).view(torch.bfloat16)
        out = torch.zeros(T, back.shape[1], dtype=torch.float32, device=back.device)
        out.index_add_(0, token, ret.float())
        return out.to(torch.bfloat16)
