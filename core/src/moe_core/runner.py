"""The runner contract (one Protocol per token layout) and its building blocks: token
grouping, combining, and a base class that derives all three layouts from one
``run_contiguous``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .dispatch import DispatchConfig
from .plan import Plan
from .tokens import Layout
from .weights import MoEWeights


@runtime_checkable
class Runner(Protocol):
    """Every runner: the standard layout (the only one with tokens on the rank)."""

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> torch.Tensor:
        """``x [T, H]``, global ``topk_ids``/``topk_weights [T, k]`` -> ``[T, H]``: the
        weighted sum over this rank's experts (a partial sum under EP/TP)."""
        ...


@runtime_checkable
class ContiguousRunner(Protocol):
    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``x [N, H]``, rows ``offsets[e]:offsets[e+1]`` (``offsets [E_local + 1]``, int64)
        for local expert ``e`` -> ``[N, H]`` expert outputs, not weighted."""
        ...


@runtime_checkable
class MaskedRunner(Protocol):
    def run_masked(self, x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
        """``x [E_local, M, H]``, ``masked_m [E_local]`` valid rows -> the same shape; rows
        past a count are unspecified."""
        ...


# Quantized delivery (``DispatchConfig.deliver_quantized``): the wire tensors as received.
# FP8 / FP8_UE8M0: ``(q e4m3 [..., H], scales fp32 [..., ceil(H / 128)])``, one scale per
# 1x128 group of a row (power-of-two values for UE8M0); the scales may be row-major or
# MN-major (DeepEP low-latency hands them column-major for TMA). NVFP4: the data, its block
# scales and the input global scale they were made with.


@runtime_checkable
class QuantizedMaskedRunner(Protocol):
    def run_masked_quantized(self, quantized: tuple[torch.Tensor, ...],
                             masked_m: torch.Tensor) -> torch.Tensor:
        """The wire tensors in the masked layout (``[E_local, M, ...]``) -> ``[E_local, M, H]``
        in the activation dtype; rows past a count are unspecified."""
        ...


@runtime_checkable
class QuantizedContiguousRunner(Protocol):
    def run_contiguous_quantized(self, quantized: tuple[torch.Tensor, ...],
                                 offsets: torch.Tensor) -> torch.Tensor:
        """The wire tensors as rows ``[N, ...]`` grouped per local expert (``offsets
        [E_local + 1]``) -> ``[N, H]`` expert outputs in the activation dtype, not weighted."""
        ...


#: The Protocol a runner must satisfy for each layout it is planned with.
LAYOUT_PROTOCOL = {Layout.STANDARD: Runner, Layout.CONTIGUOUS: ContiguousRunner,
                   Layout.MASKED: MaskedRunner}
#: ... and, when the plan delivers the wire tensors, for the layout's quantized entry point.
QUANTIZED_PROTOCOL = {Layout.CONTIGUOUS: QuantizedContiguousRunner,
                      Layout.MASKED: QuantizedMaskedRunner}
_METHOD = {Runner: "__call__", ContiguousRunner: "run_contiguous", MaskedRunner: "run_masked",
           QuantizedMaskedRunner: "run_masked_quantized",
           QuantizedContiguousRunner: "run_contiguous_quantized"}


def missing_methods(runner: Any, dispatch: DispatchConfig) -> list[str]:
    """The methods ``runner`` lacks for a plan that dispatches as ``dispatch``."""
    need = [Runner, LAYOUT_PROTOCOL[dispatch.layout]]
    if dispatch.deliver_quantized:
        need.append(QUANTIZED_PROTOCOL[dispatch.layout])
    return [_METHOD[p] for p in dict.fromkeys(need) if not isinstance(runner, p)]


def valid_rows(masked_m: torch.Tensor, rows: int) -> torch.Tensor:
    """``[E, rows]`` bool: which rows of a masked buffer hold tokens (``row < masked_m[e]``)."""
    return torch.arange(rows, device=masked_m.device)[None, :] < masked_m[:, None]


def offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``[E] -> [E + 1]`` int64 row offsets of a contiguous layout."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    offsets[1:] = counts.to(torch.int64).cumsum(0)
    return offsets


def expert_of_rows(offsets: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows]`` int64: the local expert of each row of a contiguous layout delimited by
    ``offsets [E + 1]`` (on the device, no host synchronisation)."""
    arange = torch.arange(rows, device=offsets.device)
    return torch.searchsorted(offsets[1:].contiguous(), arange, right=True).clamp(max=offsets.numel() - 2)


def group_by_expert(topk_ids: torch.Tensor, first_expert: int, num_local: int):
    """Order the (token, slot) pairs routed to this rank's experts by local expert.

    :return: ``(pairs, offsets)``: ``pairs`` indexes the flattened ``[T * k]`` top-k
        entries in expert order (stable, so token order within an expert);
        ``offsets`` (``[num_local + 1]``, int64) delimits each expert's rows.
    """
    local = topk_ids.reshape(-1) - first_expert
    mine = ((local >= 0) & (local < num_local)).nonzero().squeeze(1)
    experts = local[mine]
    order = torch.argsort(experts, stable=True)
    return mine[order], offsets_from_counts(torch.bincount(experts, minlength=num_local))


class GroupedRunner:
    """Base for a runner whose core computes rows already grouped per local expert.

    Subclasses implement :meth:`run_contiguous`; :meth:`__call__` (standard layout, with
    the top-k weighted sum) and :meth:`run_masked` come from it.
    """

    def __init__(self, plan: Plan, weights: MoEWeights):
        self.plan = plan
        self.spec = plan.spec
        self.weights = weights

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Expert outputs for ``x [N, H]`` whose rows ``offsets[e]:offsets[e+1]`` go to local
        expert ``e``. No top-k weighting (the combine step applies it)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """``[T, H]``: the weighted sum over this rank's experts (a partial sum under EP/TP)."""
        rows, offsets, tokens, pairs = contiguous_layout(
            x, topk_ids, self.spec.first_expert, self.spec.local_experts)
        y = self.run_contiguous(rows, offsets)
        return combine(y, tokens, pairs, topk_weights, x.shape[0]).to(x.dtype)

    def run_masked(self, x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
        """``x [E_local, M, H]`` with ``masked_m[e]`` valid rows per expert -> same shape.

        Rows past ``masked_m[e]`` are unspecified (a combine reads only valid rows; kernels
        skip them). This base class happens to leave them zero."""
        valid = valid_rows(masked_m, x.shape[1])
        out = torch.zeros_like(x)
        out[valid] = self.run_contiguous(x[valid], offsets_from_counts(masked_m)).to(x.dtype)
        return out

    # A runner that declares ``quantized_input`` gets these; this base dequantizes FP8 wire
    # tensors (so the reference checks quantized delivery); FP8 kernels override them.
    def run_contiguous_quantized(self, quantized, offsets: torch.Tensor) -> torch.Tensor:
        return self.run_contiguous(dequantize_wire(quantized), offsets)

    def run_masked_quantized(self, quantized, masked_m: torch.Tensor) -> torch.Tensor:
        return self.run_masked(dequantize_wire(quantized), masked_m)


def dequantize_wire(quantized: tuple[torch.Tensor, ...], dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """FP8 wire tensors ``(q [..., H], scales [..., ceil(H / 128)])`` -> ``[..., H]`` in ``dtype``."""
    from .quant.fp8 import ACT_GROUP, dequantize_fp8_blockwise

    if len(quantized) != 2 or quantized[0].dtype != torch.float8_e4m3fn:
        raise TypeError(f"expected FP8 wire tensors (e4m3 data, fp32 scales); got "
                        f"{[(tuple(t.shape), t.dtype) for t in quantized]}")
    q, scale = quantized
    return dequantize_fp8_blockwise(q, scale.float(), 1, ACT_GROUP).to(dtype)


def contiguous_layout(x: torch.Tensor, topk_ids: torch.Tensor, first_expert: int, num_local: int):
    """What a dispatcher hands a contiguous-layout runner, built locally from standard inputs.

    :return: ``(rows [N, H], offsets [E+1], tokens [N], pairs [N])``: ``rows`` are the
        tokens routed to each local expert, grouped by expert; ``tokens``/``pairs`` map each
        row back to its token and its flattened top-k slot (for the combine).
    """
    pairs, offsets = group_by_expert(topk_ids, first_expert, num_local)
    tokens = pairs // topk_ids.shape[1]
    return x.index_select(0, tokens), offsets, tokens, pairs


def masked_layout(rows: torch.Tensor, offsets: torch.Tensor, max_m: int | None = None):
    """Contiguous rows -> ``(x [E, M, H], masked_m [E])`` as DeepEP low-latency delivers them."""
    counts = offsets.diff()
    m = int(counts.max()) if max_m is None and counts.numel() else (max_m or 0)
    out = rows.new_zeros(counts.numel(), max(m, 1), rows.shape[-1])
    out[valid_rows(counts, out.shape[1])] = rows
    return out, counts


def combine(rows_out: torch.Tensor, tokens: torch.Tensor, pairs: torch.Tensor,
            topk_weights: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Weighted sum of expert outputs back to ``[num_tokens, H]`` (what a combine does)."""
    out = torch.zeros(num_tokens, rows_out.shape[-1], dtype=torch.float32, device=rows_out.device)
    w = topk_weights.reshape(-1).index_select(0, pairs).float()
    out.index_add_(0, tokens, rows_out.float() * w[:, None])
    return out
