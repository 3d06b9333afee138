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


@runtime_checkable
class QuantizedMaskedRunner(Protocol):
    def run_masked_quantized(self, quantized: tuple[torch.Tensor, ...],
                             masked_m: torch.Tensor) -> torch.Tensor:
        """The wire tensors as received (e.g. NVFP4 data and block scales) in the masked
        layout -> ``[E_local, M, H]`` in the activation dtype."""
        ...


#: The Protocol a runner must satisfy for each layout it is planned with.
LAYOUT_PROTOCOL = {Layout.STANDARD: Runner, Layout.CONTIGUOUS: ContiguousRunner,
                   Layout.MASKED: MaskedRunner}
_METHOD = {Runner: "__call__", ContiguousRunner: "run_contiguous", MaskedRunner: "run_masked",
           QuantizedMaskedRunner: "run_masked_quantized"}


def missing_methods(runner: Any, dispatch: DispatchConfig) -> list[str]:
    """The methods ``runner`` lacks for a plan that dispatches as ``dispatch``."""
    need = [Runner, LAYOUT_PROTOCOL[dispatch.layout]]
    if not dispatch.wire.dequantized_on_arrival:
        need.append(QuantizedMaskedRunner)
    return [_METHOD[p] for p in dict.fromkeys(need) if not isinstance(runner, p)]


def valid_rows(masked_m: torch.Tensor, rows: int) -> torch.Tensor:
    """``[E, rows]`` bool: which rows of a masked buffer hold tokens (``row < masked_m[e]``)."""
    return torch.arange(rows, device=masked_m.device)[None, :] < masked_m[:, None]


def offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``[E] -> [E + 1]`` int64 row offsets of a contiguous layout."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    offsets[1:] = counts.to(torch.int64).cumsum(0)
    return offsets


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
