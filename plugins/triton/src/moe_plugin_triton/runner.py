"""The runner: align (:func:`moe_core.kernels.align.align_by_expert`) -> GEMM1 (gather, x @ w13, +bias) -> activation (+ FP8 quant) ->
GEMM2 (@ w2, +bias) -> weighted top-k sum, all on the device.

No step synchronises with the host or sizes a tensor from data (the buffers hold the
alignment's capacity, fixed by ``T * k``), so the standard call can be captured in a CUDA
graph (the variants declare ``graph_safe``).
"""

from __future__ import annotations

import torch

from moe_core.kernels.align import AlignedRoutes, align_by_expert
from moe_core.kernels.combine import weighted_reduce
from moe_core.kernels.group_quant import quantize_groups
from moe_core.runner import GroupedRunner, expert_of_rows
from moe_core.sizes import cdiv
from moe_core.spec import Quant

from . import kernels  # imports triton: this module is imported once a plan chose it
from .configs import ConfigTable, LayerConfigs, layer_configs


def _device_table(device: torch.device) -> tuple[ConfigTable, int | None]:
    """The tuned tiles and the per-block shared memory of ``device`` (none off a GPU)."""
    if device.type != "cuda":
        return ConfigTable({}, f"default rule (weights on {device.type})"), None
    props = torch.cuda.get_device_properties(device)
    return ConfigTable.for_device(props.name), getattr(props, "shared_memory_per_block_optin", None)


class TritonMoeRunner(GroupedRunner):
    """Standard layout natively; the contiguous layout as top-1 routes with unit weights;
    the masked layout through :class:`GroupedRunner` (not declared: it synchronises)."""

    def __init__(self, plan, weights):
        super().__init__(plan, weights)
        s = self.spec
        self.dtype = plan.variant  # the config tables' dtype names are the variant names
        self.fp8 = s.quant is Quant.FP8_BLOCK128
        self.table, self.shared = _device_table(weights.device)
        self.inter, self.hidden = s.intermediate_per_partition, s.hidden_size
        self.gated = s.activation.gated
        self.act = kernels.activation_code(s)
        # Under TP every rank holds the whole down bias; only the first adds it.
        self.w2_bias = weights.w2_bias if s.moe_tp_rank == 0 else None
        self._configs: dict[int, LayerConfigs] = {}
        #: The routing alignment (one or two Triton kernels on CUDA, no host sync).
        self.align = align_by_expert

    def configs(self, tokens: int) -> LayerConfigs:
        """Tiles for a call of ``tokens`` tokens (cached per count)."""
        got = self._configs.get(tokens)
        if got is None:
            s = self.spec
            got = self._configs[tokens] = layer_configs(
                self.table, tokens, dtype=self.dtype, rows_per_expert=s.rows_per_local_expert(tokens),
                gemm1=(s.w13_rows, self.hidden), gemm2=(self.hidden, self.inter),
                shared_limit=self.shared)
        return got

    def _experts(self, x: torch.Tensor, routes: AlignedRoutes, top_k: int, cfg: LayerConfigs) -> torch.Tensor:
        """``[capacity, H]`` bf16: each sorted row's expert output (padding rows unwritten)."""
        w, dev = self.weights, x.device
        rows, num_slots = routes.sorted_slots.shape[0], routes.slot_rows.shape[0]
        if self.fp8:
            a, a_scale = quantize_groups(x)  # [T, H] e4m3, [T, H/128] MN-major
        else:
            a, a_scale = x, None
        h = torch.empty(rows, w.w13.shape[1], dtype=torch.bfloat16, device=dev)
        kernels.launch_gemm(a, w.w13, h, routes.sorted_slots, routes.block_expert, cfg.gemm1,
                            gather=True, top_k=top_k, a_scale=a_scale, w_scale=w.w13_scale,
                            bias=w.w13_bias, split_n=self.inter if self.gated else None, num_slots=num_slots)
        act = torch.empty(rows, self.inter, dtype=torch.float8_e4m3fn if self.fp8 else torch.bfloat16,
                          device=dev)
        act_scale = (torch.empty(cdiv(self.inter, kernels.FP8_GROUP), rows, dtype=torch.float32,
                                 device=dev).t() if self.fp8 else None)
        kernels.launch_activation(h, act, routes.slot_rows, intermediate=self.inter, act=self.act,
                                  scale=act_scale, limit=self.spec.swiglu_limit,
                                  alpha=self.spec.swiglu_alpha)
        y = torch.empty(rows, self.hidden, dtype=torch.bfloat16, device=dev)
        kernels.launch_gemm(act, w.w2, y, routes.sorted_slots, routes.block_expert, cfg.gemm2,
                            gather=False, a_scale=act_scale, w_scale=w.w2_scale, bias=self.w2_bias,
                            num_slots=num_slots)
        return y

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        T, k = topk_ids.shape
        if T == 0:
            return x.new_empty(0, self.hidden)
        cfg = self.configs(T)
        s = self.spec
        routes = self.align(topk_ids, s.first_expert, s.local_experts, cfg.gemm1.block_m)
        y = self._experts(x.contiguous(), routes, k, cfg)
        # Slots of other ranks' experts have row -1: the sum skips them.
        return weighted_reduce(y, routes.slot_rows.view(T, k), topk_weights)

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Rows grouped per local expert -> their expert outputs, unweighted."""
        n = x.shape[0]
        if n == 0:
            return x.new_empty(0, self.hidden)
        s = self.spec
        local = expert_of_rows(offsets, n)
        # The tables are keyed by standard-layout tokens: n rows over the local experts are
        # what n * ep_size / top_k tokens route to them.
        cfg = self.configs(max(1, cdiv(n * s.ep_size, s.top_k)))
        routes = self.align(local[:, None], 0, s.local_experts, cfg.gemm1.block_m)
        y = self._experts(x.contiguous(), routes, 1, cfg)
        return y.index_select(0, routes.slot_rows)
