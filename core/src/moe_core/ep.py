"""Expert parallelism: the dispatcher contract, and the layer that runs
dispatch -> experts -> combine on every rank of the expert-parallel group.

A dispatcher takes this rank's tokens with their top-k choices, sends each token once to
every rank that owns one of its experts, and hands the runner the layout the plan asked
for (``plan.dispatch.layout``):

* ``standard``: received rows ``[N, H]`` with their global ``topk_ids``/``topk_weights``;
  the runner returns each row's weighted sum over *this rank's* experts.
* ``contiguous``: rows ``[N, H]`` grouped per local expert, ``counts [E_local]``.
* ``masked``: ``[E_local, M, H]`` with ``counts [E_local]`` valid rows per expert, ``M =
  max_tokens_per_rank * ep_size`` (every token of every rank could pick one expert). Rows
  past a count hold anything (as DeepEP's buffers do): runners must not read them.

``combine`` applies the top-k weights (where the runner did not), returns each partial sum
to the rank the token came from and adds them: the result is the whole layer's output for
this rank's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from .errors import InputError, PluginError
from .layer import MoELayer
from .runner import offsets_from_counts
from .tokens import Layout


def ep_group(group, spec):
    """``group`` (default: the world) checked against the spec's EP size and rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InputError("torch.distributed is not initialized; call init_process_group first "
                         f"(expected a group of ep_size={spec.ep_size} ranks)")
    group = group if group is not None else dist.group.WORLD
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if size != spec.ep_size:
        raise InputError(f"the process group has {size} ranks; the plan's ep_size is {spec.ep_size}")
    if rank != spec.ep_rank:
        raise InputError(f"this process is rank {rank} of the group; the spec was built for "
                         f"ep_rank {spec.ep_rank} (rank={spec.rank}); build one spec per rank")
    return group


@dataclass
class Dispatched:
    """What a dispatcher hands the runner (see the module doc for each layout)."""

    #: Tokens in the activation dtype; None when only ``quantized`` is delivered.
    x: torch.Tensor | None
    counts: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_weights: torch.Tensor | None = None
    #: Whatever the dispatcher's ``combine`` needs to route results back.
    handle: Any = None
    #: The wire tensors as received (FP8 data and scales, NVFP4 data and block scales), in
    #: the plan's layout, when the plan delivers them (``DispatchConfig.deliver_quantized``;
    #: see :mod:`moe_core.runner` for their shapes).
    quantized: tuple[torch.Tensor, ...] | None = None


@runtime_checkable
class Dispatcher(Protocol):
    """What ``make_dispatcher`` returns (checked by the host); one per layer and rank."""

    def dispatch(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> Dispatched:
        """Send ``x [T, H]`` to the ranks owning its ``topk_ids [T, k]`` (global ids)."""
        ...

    def combine(self, y: torch.Tensor, dispatched: Dispatched) -> torch.Tensor:
        """The runner's output for ``dispatched`` -> ``[T, H]``, summed over all ranks."""
        ...


class DispatchedLayer:
    """A loaded layer whose tokens travel: call it on every rank of the group together."""

    def __init__(self, layer: MoELayer, dispatcher: Dispatcher):
        self.layer = layer
        self.plan = layer.plan
        self.dispatcher = dispatcher

    def __repr__(self) -> str:
        return f"DispatchedLayer({self.plan.backend} via {self.plan.dispatcher}, {self.plan.spec.describe()})"

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """``x [T, H]`` with this rank's routing -> the layer output ``[T, H]`` (all experts)."""
        self.layer.check_standard(x, topk_weights, topk_ids)
        d = self.dispatcher.dispatch(x, topk_ids, topk_weights)
        layout = self.plan.dispatch.layout
        if self.plan.dispatch.deliver_quantized:
            # checked at load: the runner has the layout's quantized entry point
            if d.quantized is None:
                raise PluginError(f"dispatcher {self.plan.dispatcher} delivered no wire tensors; "
                                  f"the plan dispatches {self.plan.dispatch.describe()}")
            runner = self.layer.runner
            y = (runner.run_masked_quantized(d.quantized, d.counts) if layout is Layout.MASKED else
                 runner.run_contiguous_quantized(d.quantized, offsets_from_counts(d.counts)))
        elif layout is Layout.MASKED:
            y = self.layer.run_masked(d.x, d.counts)
        elif layout is Layout.CONTIGUOUS:
            y = self.layer.run_contiguous(d.x, offsets_from_counts(d.counts))
        else:
            # Received rows may exceed max_tokens (they come from every rank): skip that check.
            y = self.layer.run_standard(d.x, d.topk_weights, d.topk_ids)
        out = self.dispatcher.combine(y, d)
        if tuple(out.shape) != tuple(x.shape):
            raise PluginError(f"dispatcher {self.plan.dispatcher} combined to {tuple(out.shape)}; "
                             f"expected {tuple(x.shape)}")
        return out
