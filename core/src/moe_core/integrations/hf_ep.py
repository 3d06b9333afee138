"""``ep_implementation="moe_core"``: transformers' expert parallelism with moe-core's token
exchange (transformers >= 5.2x, ``transformers.distributed.expert_parallel``).

transformers shards the experts (``grouped_gemm``: whole experts per rank of the EP mesh)
and, for an ``ep_dispatch_experts`` module, hands each rank's batch to the
``EPImplementation`` that ``DistributedConfig.ep_implementation`` names. This one resolves
the layer as moe-core's expert-parallel spec (``tp = ep =`` the EP mesh size, this rank's
place in it) and runs ``dispatch -> runner -> combine`` with the dispatcher the host picks
(DeepEP where it can serve the layer, else ``torch:all_to_all``). As transformers'
``all_to_all`` does, the ranks of a TP group (which hold the same batch) each send a slice
of it, and the slices are gathered back. Inference only: no gradients flow through it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers.distributed.expert_parallel import EPImplementation

from ..errors import InputError
from .hf_experts import EP_ATTR, Sharding, load_for, state_of

IMPLEMENTATION = "moe_core"


class MoECoreEP(EPImplementation):
    """moe-core's dispatcher and runner for one experts module of an EP-sharded model."""

    def __init__(self, experts, ep_mesh, tp_mesh):
        super().__init__(experts, ep_mesh, tp_mesh)
        self.experts = experts
        self.ep_group = ep_mesh.get_group()
        self.sharding = Sharding(ep_mesh.size(), ep_mesh.size(), ep_mesh.get_local_rank())
        self.tp_group, self.tp_size, self.tp_rank = (tp_mesh.get_group(), tp_mesh.size(),
                                                     tp_mesh.get_local_rank())
        experts.__dict__[EP_ATTR] = self  # the report names the exchange

    def tokens_per_rank(self, rows: int, device) -> int:
        """The row count every rank of the EP group plans for (they must pick the same plan:
        its dispatcher is a collective). Equal already when the group shares one batch."""
        if self.shares_batch:
            return rows
        t = torch.tensor([rows], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ep_group)
        return int(t.item())

    def __call__(self, hidden_states, top_k_index, top_k_weights):
        module = self.experts
        impl = getattr(module.config, "_experts_implementation", None)
        if impl != IMPLEMENTATION:
            raise InputError(f'ep_implementation="{IMPLEMENTATION}" runs the experts through '
                             f'moe-core; load the model with experts_implementation="{IMPLEMENTATION}" '
                             f"too (got {impl!r})")
        with torch.no_grad():
            state = state_of(module)
            T = hidden_states.shape[0]
            rows, per = self._my_rows(T)
            x, ids, w = hidden_states[rows], top_k_index[rows], top_k_weights[rows]
            opts = state.options
            max_tokens = opts.max_tokens_for(self.tokens_per_rank(per, x.device))
            layer = load_for(module, state, max_tokens=max_tokens, sharding=self.sharding,
                             a2a=opts.a2a_for(max_tokens), group=self.ep_group).layer
            out = layer(x.to(layer.layer.dtype), w, ids).to(hidden_states.dtype)
            if self.tp_size == 1:
                return out
            # all_gather takes equal sizes: every slice padded to ``per`` rows after the
            # exchange (a rank whose slice is empty sends and receives 0 rows)
            out = torch.cat([out, out.new_zeros(per - out.shape[0], out.shape[1])])
            parts = [torch.empty_like(out) for _ in range(self.tp_size)]
            dist.all_gather(parts, out, group=self.tp_group)
            return torch.cat(parts)[:T]

    def _my_rows(self, T: int) -> tuple[slice, int]:
        """This rank's slice of a batch of ``T`` rows its TP group shares, and the rows per
        slice (the last slices may be shorter or empty)."""
        per = -(-T // self.tp_size)
        lo = min(T, self.tp_rank * per)
        return slice(lo, min(T, lo + per)), per
