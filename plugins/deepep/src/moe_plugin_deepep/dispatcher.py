"""The DeepEP dispatcher, written against ``deep_ep.Buffer``.

Not run in this project's CI or on its test machines: no DeepEP build loads there (see the
plugin README). Everything it decides (which variant, which arguments) is pure data in
:mod:`.constraints` and :mod:`.args`, and is tested on CPU.
"""

from __future__ import annotations

import torch

from moe_core import Layout, Wire
from moe_core.ep import Dispatched, Dispatcher, ep_group
from moe_core.quant.fp8 import ACT_GROUP, dequantize_fp8_blockwise, quantize_fp8_blockwise
from moe_core.kernels.combine import slot_positions, weighted_reduce
from moe_core.runner import contiguous_layout

from .args import low_latency_kwargs, fp8_wire
from .constraints import LOW_LATENCY


class DeepEPDispatcher(Dispatcher):
    def __init__(self, plan, group=None, *, x_global_scale=None):
        import deep_ep

        spec = plan.spec
        self.plan, self.cfg = plan, plan.dispatch
        self.group = ep_group(group, spec)
        self.ranks, self.experts, self.local = spec.ep_size, spec.num_experts, spec.local_experts
        self.first = spec.first_expert
        self.low_latency = plan.dispatcher.variant == LOW_LATENCY
        self.max_tokens = self.cfg.max_tokens_per_rank
        B = deep_ep.Buffer
        if self.low_latency:
            self.kwargs = low_latency_kwargs(self.cfg, x_global_scale)
            rdma = B.get_low_latency_rdma_size_hint(self.max_tokens, spec.hidden_size, self.ranks,
                                                    self.experts)
            self.buffer = B(self.group, 0, rdma, low_latency_mode=True,
                            num_qps_per_rank=max(1, self.local))
        else:
            hidden_bytes = spec.hidden_size * 2
            cfgs = (B.get_dispatch_config(self.ranks), B.get_combine_config(self.ranks))
            nvl = max(c.get_nvl_buffer_size_hint(hidden_bytes, self.ranks) for c in cfgs)
            rdma = max(c.get_rdma_buffer_size_hint(hidden_bytes, self.ranks) for c in cfgs) \
                if self.ranks > 8 else 0
            self.buffer = B(self.group, nvl, rdma)

    # -- low-latency: masked [E_local, ranks * max_tokens, H] ----------------------------
    def _dispatch_ll(self, x, topk_ids, topk_weights) -> Dispatched:
        recv, counts, handle, _, _ = self.buffer.low_latency_dispatch(
            x, topk_ids.long(), self.max_tokens, self.experts, **self.kwargs)
        state = (topk_ids, topk_weights, handle)
        if self.cfg.wire is Wire.NVFP4:
            # (data, block scales, the input global scale they were made with)
            return Dispatched(None, counts=counts, handle=state,
                              quantized=(*recv[:2], self.kwargs["x_global_scale"]))
        if fp8_wire(self.cfg):
            data, scale = recv
            if self.cfg.use_ue8m0:  # packed UE8M0 exponents -> fp32 scales
                scale = torch.exp2(scale.view(torch.uint8).float() - 127)
            xb = dequantize_fp8_blockwise(data, scale.reshape(*data.shape[:-1], -1), 1, ACT_GROUP)
            return Dispatched(xb.to(torch.bfloat16), counts=counts, handle=state, quantized=(data, scale))
        return Dispatched(recv, counts=counts, handle=state)

    # -- normal: tokens with local top-k -> contiguous or standard ------------------------
    def _dispatch_normal(self, x, topk_ids, topk_weights) -> Dispatched:
        ids = topk_ids.long()
        per_rank, per_rdma, per_expert, in_rank, _ = self.buffer.get_dispatch_layout(ids, self.experts)
        send = quantize_fp8_blockwise(x, 1, ACT_GROUP) if fp8_wire(self.cfg) else x
        recv, recv_ids, recv_w, _, handle, _ = self.buffer.dispatch(
            send, topk_idx=ids, topk_weights=topk_weights.float(), num_tokens_per_rank=per_rank,
            num_tokens_per_rdma_rank=per_rdma, is_token_in_rank=in_rank,
            num_tokens_per_expert=per_expert)
        if isinstance(recv, tuple):
            recv = dequantize_fp8_blockwise(recv[0], recv[1], 1, ACT_GROUP).to(torch.bfloat16)
        # DeepEP hands back local expert ids (-1: another rank's expert).
        if self.cfg.layout is Layout.STANDARD:
            gids = torch.where(recv_ids >= 0, recv_ids + self.first, -1)
            return Dispatched(recv, topk_ids=gids, topk_weights=recv_w, handle=(handle, None))
        rows, offsets, _, pairs = contiguous_layout(recv, recv_ids, 0, self.local)
        pos = slot_positions(recv.shape[0], recv_ids.shape[1], pairs,
                             torch.arange(rows.shape[0], device=rows.device))
        return Dispatched(rows, counts=offsets.diff(), handle=(handle, (pos, recv_w)))

    def dispatch(self, x, topk_ids, topk_weights) -> Dispatched:
        if self.low_latency:
            return self._dispatch_ll(x, topk_ids, topk_weights)
        return self._dispatch_normal(x, topk_ids, topk_weights)

    def combine(self, y, dispatched: Dispatched) -> torch.Tensor:
        if self.low_latency:
            topk_ids, topk_weights, handle = dispatched.handle
            out, _, _ = self.buffer.low_latency_combine(
                y.to(torch.bfloat16), topk_ids.long(), topk_weights.float(), handle)
            return out
        handle, reduce = dispatched.handle
        partial = y if reduce is None else weighted_reduce(y, *reduce)
        out, _, _ = self.buffer.combine(partial.to(torch.bfloat16), handle)
        return out
