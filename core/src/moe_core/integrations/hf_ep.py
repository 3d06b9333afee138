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
            x, ids, w, T, per = self._my_rows(hidden_states, top_k_index, top_k_weights)
            opts = state.options
            max_tokens = opts.max_tokens_for(self.tokens_per_rank(per, x.device))
            layer = load_for(module, state, max_tokens=max_tokens, sharding=self.sharding,
                             a2a=opts.a2a_for(max_tokens), group=self.ep_group).layer
            out = layer(x.to(layer.layer.dtype), w, ids).to(hidden_states.dtype)
            if self.tp_size == 1:
                return out[:T]
            parts = [torch.empty_like(out) for _ in range(self.tp_size)]
            dist.all_gather(parts, out, group=self.tp_group)
            return torch.cat(parts)[:T]

    def _my_rows(self, x, ids, w):
        """This rank's slice of a batch its TP group shares, padded to ``per`` rows (every
        rank sends at least one row: ``torch:all_to_all`` cannot send an empty batch): a zero
        row routed to this rank's first expert with weight 0. -> ``(x, ids, w, T, per)``
        where the first ``T`` output rows of the gathered slices are the batch's."""
        T = x.shape[0]
        per = max(1, -(-T // self.tp_size))
        lo = min(T, self.tp_rank * per)
        rows = slice(lo, min(T, lo + per))
        x, ids, w = x[rows], ids[rows], w[rows]
        pad = per - x.shape[0]
        if pad:
            first = self.sharding.rank * self.num_local_experts
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
            mine = first + torch.arange(ids.shape[1], device=ids.device) % self.num_local_experts
            ids = torch.cat([ids, mine.to(ids.dtype).expand(pad, -1)])
            w = torch.cat([w, w.new_zeros(pad, w.shape[1])])
        return x, ids, w, T, per
