"""The DeepEP dispatcher, written against ``deep_ep.Buffer`` of DeepEP v1.2.1.

Run on 2 x H200 (NVLink, intranode; see the plugin README for what ran where). Everything
it decides (which variant, which arguments, buffer sizes) is pure data in
:mod:`.constraints`, :mod:`.args` and :mod:`.sizing`, tested on CPU.
"""

from __future__ import annotations

import torch

from moe_core import Layout, Wire
from moe_core.ep import Dispatched, Dispatcher, ep_group
from moe_core.quant.fp8 import ACT_GROUP, dequantize_fp8_blockwise, quantize_fp8_blockwise
from moe_core.kernels.combine import slot_positions, weighted_reduce
from moe_core.runner import group_by_expert

from .args import fp8_wire, low_latency_kwargs
from .constraints import LOW_LATENCY, buffer_bytes
from .sizing import qps_per_rank


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
        self.keep = self.cfg.deliver_quantized
        nvl, rdma = buffer_bytes(plan.dispatcher.variant, spec, self.cfg)
        if self.low_latency:
            self.kwargs = low_latency_kwargs(self.cfg, x_global_scale)
            self.buffer = deep_ep.Buffer(self.group, 0, rdma, low_latency_mode=True,
                                         num_qps_per_rank=qps_per_rank(self.local))
        else:
            self.buffer = deep_ep.Buffer(self.group, nvl, rdma)

    # -- low-latency: masked [E_local, ranks * max_tokens, H] ----------------------------
    def _dispatch_ll(self, x, topk_ids, topk_weights) -> Dispatched:
        ids = topk_ids.long().contiguous()
        recv, counts, handle, _, _ = self.buffer.low_latency_dispatch(
            x, ids, self.max_tokens, self.experts, **self.kwargs)
        state = (ids, topk_weights, handle)
        if self.cfg.wire is Wire.NVFP4:
            # (data, block scales, the input global scale they were made with)
            return Dispatched(None, counts=counts, handle=state,
                              quantized=(*recv[:2], self.kwargs["x_global_scale"]))
        if fp8_wire(self.cfg):
            data, scale = recv  # scales [E, M, H / 128], MN-major (DeepEP's TMA layout)
            if self.cfg.use_ue8m0:  # packed UE8M0 exponents -> fp32 powers of two
                scale = torch.exp2(scale.contiguous().view(torch.uint8).float() - 127)
            if self.keep:
                return Dispatched(None, counts=counts, handle=state, quantized=(data, scale))
            xb = dequantize_fp8_blockwise(data, scale, 1, ACT_GROUP)
            return Dispatched(xb.to(torch.bfloat16), counts=counts, handle=state)
        return Dispatched(recv, counts=counts, handle=state)

    # -- normal: tokens with local top-k -> contiguous or standard ------------------------
    def _dispatch_normal(self, x, topk_ids, topk_weights) -> Dispatched:
        ids = topk_ids.long()
        per_rank, per_rdma, per_expert, in_rank, _ = self.buffer.get_dispatch_layout(ids, self.experts)
        send = quantize_fp8_blockwise(x, 1, ACT_GROUP) if fp8_wire(self.cfg) else x
        if isinstance(send, tuple):
            send = (send[0], send[1].reshape(x.shape[0], -1))
        recv, recv_ids, recv_w, _, handle, _ = self.buffer.dispatch(
            send, topk_idx=ids, topk_weights=topk_weights.float(), num_tokens_per_rank=per_rank,
            num_tokens_per_rdma_rank=per_rdma, is_token_in_rank=in_rank,
            num_tokens_per_expert=per_expert)
        quantized = isinstance(recv, tuple)
        # DeepEP hands back local expert ids (-1: another rank's expert).
        if self.cfg.layout is Layout.STANDARD:
            if quantized:
                recv = dequantize_fp8_blockwise(recv[0], recv[1], 1, ACT_GROUP).to(torch.bfloat16)
            gids = torch.where(recv_ids >= 0, recv_ids + self.first, -1)
            return Dispatched(recv, topk_ids=gids, topk_weights=recv_w, handle=(handle, None))
        n = recv[0].shape[0] if quantized else recv.shape[0]
        pairs, offsets = group_by_expert(recv_ids, 0, self.local)
        tokens = pairs // recv_ids.shape[1]
        pos = slot_positions(n, recv_ids.shape[1], pairs, torch.arange(pairs.numel(), device=pairs.device))
        state = (handle, (pos, recv_w))
        if quantized and self.keep:
            q, s = recv
            rows = (q.view(torch.uint8).index_select(0, tokens).view(q.dtype), s.index_select(0, tokens))
            return Dispatched(None, counts=offsets.diff(), handle=state, quantized=rows)
        if quantized:
            recv = dequantize_fp8_blockwise(recv[0], recv[1], 1, ACT_GROUP).to(torch.bfloat16)
        return Dispatched(recv.index_select(0, tokens), counts=offsets.diff(), handle=state)

    def dispatch(self, x, topk_ids, topk_weights) -> Dispatched:
        if self.low_latency:
            return self._dispatch_ll(x, topk_ids, topk_weights)
        return self._dispatch_normal(x, topk_ids, topk_weights)

    def combine(self, y, dispatched: Dispatched) -> torch.Tensor:
        if self.low_latency:
            topk_ids, topk_weights, handle = dispatched.handle
            out, _, _ = self.buffer.low_latency_combine(  # DeepEP asserts contiguous inputs
                y.to(torch.bfloat16).contiguous(), topk_ids, topk_weights.float().contiguous(), handle)
            return out
        handle, reduce = dispatched.handle
        partial = y if reduce is None else weighted_reduce(y, *reduce)
        out, _, _ = self.buffer.combine(partial.to(torch.bfloat16), handle)
        return out
