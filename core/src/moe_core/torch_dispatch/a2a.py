"""Token dispatch over ``torch.distributed.all_to_all_single``.

Each token goes once to each rank that owns at least one of its experts (not once per
expert), with its top-k ids and weights in the same row of bytes (:mod:`.rows`), so
dispatch is one count exchange plus one payload exchange. The count exchange carries, per
destination rank, the tokens sent and the (token, expert) pairs per local expert, so after
its one read to the host (the split sizes ``all_to_all_single`` needs) every size is known
and nothing else waits for the device: positions come from cumulative sums and a sort,
packing and unpacking are one kernel each.

The receiving rank reduces its experts' outputs per token (weights applied,
:func:`moe_core.kernels.combine.weighted_reduce`) before sending one row back, as DeepEP's normal
mode does; the origin adds the per-rank partial sums in fp32 (the same kernel, unit weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError
from ..ep import Dispatched, Dispatcher, ep_group
from ..kernels.combine import weighted_reduce
from ..tokens import Layout
from .rows import RowFormat, pack, unpack


@dataclass
class Route:
    """What the combine needs to send results back: where each token's rows went."""

    dest: torch.Tensor  # [T, R] int32: the token's row in the send buffer per rank, -1: none
    sent: list[int]  # rows sent to each rank
    got: list[int]  # rows received from each rank
    #: [N, k] int32: the runner output row of each received (token, slot); None: standard layout
    pos: torch.Tensor | None = None
    weights: torch.Tensor | None = None  # [N, k] fp32, with ``pos``


class TorchAllToAll(Dispatcher):
    def __init__(self, plan, group=None):
        spec = plan.spec
        self.group = ep_group(group, spec)
        self.ranks, self.local, self.first = spec.ep_size, spec.local_experts, spec.first_expert
        self.cfg = plan.dispatch
        self.layout = plan.dispatch.layout
        self.max_m = plan.dispatch.max_tokens_per_rank * spec.ep_size
        self.rows = RowFormat(spec.hidden_size, spec.top_k, plan.dispatch.wire)

    def _exchange(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        recv = send.new_empty(sum(recv_counts), *send.shape[1:])
        dist.all_to_all_single(recv, send.contiguous(), recv_counts, send_counts, group=self.group)
        return recv

    def _counts(self, ids: torch.Tensor):
        """The one host read: rows per peer both ways, and (token, expert) pairs received per
        local expert. -> ``(hit [T, R] int32, sent, got, pairs_per_expert (host), counts (device))``"""
        R, E, T = self.ranks, self.local, ids.shape[0]
        hit = torch.zeros(T, R, dtype=torch.int32, device=ids.device)
        hit.scatter_(1, ids // E, 1)
        pairs = torch.zeros(R * E, dtype=torch.int32, device=ids.device)
        pairs.scatter_add_(0, ids.reshape(-1), torch.ones(ids.numel(), dtype=torch.int32, device=ids.device))
        meta = torch.cat([hit.sum(0, dtype=torch.int32)[:, None], pairs.view(R, E)], 1)
        recv = torch.empty_like(meta)
        dist.all_to_all_single(recv, meta, group=self.group)
        counts = recv[:, 1:].sum(0)
        host = torch.cat([meta[:, 0], recv.view(-1)]).tolist()  # the one synchronisation
        sent = host[:R]
        rows = [host[R + i * (1 + E):R + (i + 1) * (1 + E)] for i in range(R)]
        per_expert = [sum(r[1 + e] for r in rows) for e in range(E)]
        return hit, sent, [r[0] for r in rows], per_expert, counts

    def dispatch(self, x, topk_ids, topk_weights) -> Dispatched:
        ids = topk_ids.long()
        hit, sent, got, per_expert, counts = self._counts(ids)
        # token t's row for rank r: after every earlier token sent to r, after ranks < r
        start = torch.cumsum(hit.sum(0), 0) - hit.sum(0)
        dest = torch.where(hit > 0, torch.cumsum(hit, 0) - 1 + start, -1).to(torch.int32)
        payload = pack(self.rows, x, ids, topk_weights, dest, sum(sent))
        recv = self._exchange(payload, sent, got)
        N = recv.shape[0]
        rids, rw = self.rows.ids(recv), self.rows.weights(recv)
        if self.layout is Layout.STANDARD:
            own = torch.arange(N, dtype=torch.int32, device=recv.device)[:, None]
            return Dispatched(unpack(self.rows, recv, own, N), topk_ids=rids.long(),
                              topk_weights=rw.contiguous(), handle=Route(dest, sent, got))
        pos, rows = self._positions(rids, per_expert, counts)
        keep = self.cfg.deliver_quantized
        masked = self.layout is Layout.MASKED
        out = unpack(self.rows, recv, pos, rows, keep_quantized=keep,
                     batch_rows=self.max_m if masked else None)
        if masked:
            out = (out[0].view(self.local, self.max_m, -1), out[1]) if keep else \
                out.view(self.local, self.max_m, -1)
        x_out, quantized = (None, out) if keep else (out, None)
        return Dispatched(x_out, counts=counts, handle=Route(dest, sent, got, pos, rw),
                          quantized=quantized)

    def _positions(self, rids: torch.Tensor, per_expert: list[int], counts: torch.Tensor):
        """``[N, k]`` int32: the row of the runner's layout each received (token, slot) goes
        to (-1: another rank's expert), and the layout's row count. Rows are grouped by local
        expert, in arrival order within one."""
        N, k = rids.shape
        E, total = self.local, sum(per_expert)
        local = rids.long() - self.first
        mine = (local >= 0) & (local < E)
        flat = torch.arange(N * k, device=rids.device)
        order = torch.argsort(torch.where(mine, local, E).view(-1) * (N * k) + flat)[:total]
        row = torch.arange(total, device=rids.device)
        if self.layout is Layout.MASKED:
            if max(per_expert, default=0) > self.max_m:
                raise InputError(f"a local expert received {max(per_expert)} tokens; the masked "
                                 f"layout holds {self.max_m} per expert (max_tokens_per_rank "
                                 f"{self.cfg.max_tokens_per_rank} x {self.ranks} ranks)")
            expert = local.view(-1)[order]
            starts = torch.cumsum(counts, 0) - counts
            row = expert * self.max_m + row - starts[expert]
            rows = E * self.max_m
        else:
            rows = total
        pos = torch.full((N * k,), -1, dtype=torch.int32, device=rids.device)
        pos.scatter_(0, order, row.to(torch.int32))
        return pos.view(N, k), rows

    def combine(self, y, dispatched: Dispatched) -> torch.Tensor:
        route: Route = dispatched.handle
        if route.pos is not None:
            y = weighted_reduce(y.reshape(-1, y.shape[-1]), route.pos, route.weights)
        back = y.to(torch.bfloat16).contiguous()
        # Bytes on the wire: gloo has no bf16 all-to-all; NCCL does not care.
        ret = self._exchange(back.view(torch.uint8), route.got, route.sent).view(torch.bfloat16)
        ones = torch.ones(route.dest.shape, dtype=torch.float32, device=ret.device)
        return weighted_reduce(ret, route.dest, ones)  # the per-rank partial sums, in fp32
