"""CUDA graphs of a loaded layer: its standard-layout call captured once per token count
and replayed on new inputs, so a decode step pays one graph launch instead of a launch
(and Python) per kernel.

Only a plan whose runner declares ``graph_safe`` (no host synchronisation, no tensor
sized from data) is captured; anything else is a :class:`GraphError`, never a graph that
replays stale shapes. A call with fewer tokens than a captured count runs that count's
graph with padding tokens (zero hidden state, weight 0, slot ``s`` routed to this rank's
expert ``s mod E_local``, so no token names an expert twice where ``top_k <= E_local``):
they add nothing to the tokens returned, though the runner still computes their rows.

A call copies its inputs into the graph's static buffers, unless they are those buffers
(:meth:`GraphedLayer.static_inputs`): an engine that writes each step's hidden states and
routing there replays with no input copy (three fewer kernels a step; a call with fewer
tokens than its graph still re-pads the rows past them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

import torch

from .errors import GraphError, InputError
from .layer import MoELayer


def capture(fn: Callable[[], object], *, warmups: int = 2, pool=None) -> torch.cuda.CUDAGraph:
    """``fn`` warmed up on a side stream (lazy inits and compiles stay out of the graph),
    then captured; replay with ``graph.replay()``. Raises what capture raises."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph


def require_capturable(plan, device) -> None:
    """:class:`GraphError` unless ``plan``'s layer may be captured on ``device``."""
    if not plan.graph_safe:
        raise GraphError(f"{plan.backend} does not declare graph_safe (its call may synchronise "
                         "with the host or size tensors from data): run the layer eagerly")
    if torch.device(device).type != "cuda":
        raise GraphError(f"CUDA graphs need a CUDA device; the layer runs on {device}")


def token_buckets(counts: Iterable[int], max_tokens: int) -> tuple[int, ...]:
    """Sorted distinct token counts to capture; each in ``[1, max_tokens]``."""
    out = sorted(set(counts))
    bad = [c for c in out if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= max_tokens]
    if not out or bad:
        raise GraphError(f"token counts {bad or '(none)'}: expected integers in [1, {max_tokens}] "
                         "(the plan's max_tokens)")
    return tuple(out)


def fill(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Copy ``src`` into ``dst`` unless ``src`` is ``dst`` itself (the same memory, shape,
    strides and dtype: the caller wrote its input in place). Whether it copied. Another view
    of the same storage (rows shifted) is copied through a temporary."""
    if (src.data_ptr() == dst.data_ptr() and src.shape == dst.shape and src.stride() == dst.stride()
            and src.dtype == dst.dtype and src.device == dst.device):
        return False
    same_storage = (src.device == dst.device
                    and src.untyped_storage().data_ptr() == dst.untyped_storage().data_ptr())
    dst.copy_(src.clone() if same_storage else src)
    return True


class _Captured:
    """One token count's static inputs, output and graph."""

    def __init__(self, layer: MoELayer, tokens: int, pool) -> None:
        spec, dev = layer.plan.spec, layer.weights.device
        self.tokens = tokens
        slots = torch.arange(spec.top_k, device=dev) % spec.local_experts
        self.pad_ids = (spec.first_expert + slots).expand(tokens, spec.top_k)
        self.x = torch.zeros(tokens, spec.hidden_size, dtype=layer.dtype, device=dev)
        self.weights = torch.zeros(tokens, spec.top_k, dtype=torch.float32, device=dev)
        self.ids = self.pad_ids.clone()
        self.out: torch.Tensor | None = None

        def call() -> None:
            self.out = layer.runner(self.x, self.weights, self.ids)

        self.graph = capture(call, pool=pool)

    def run(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        fill(self.x[:n], x)
        fill(self.weights[:n], topk_weights)
        fill(self.ids[:n], topk_ids)
        if n < self.tokens:  # a bigger earlier call left its tokens here: pad again
            self.x[n:].zero_()
            self.weights[n:].zero_()
            self.ids[n:].copy_(self.pad_ids[n:])
        self.graph.replay()
        return self.out[:n]


class GraphedLayer:
    """``layer`` captured for each of ``token_counts``; called like the layer.

    :param copy_out: return a copy of the output (default). ``False`` returns a view of the
        graph's static output, which the next call of any count may overwrite (the graphs
        share one memory pool).
    """

    def __init__(self, layer: MoELayer, token_counts: Iterable[int], *, copy_out: bool = True) -> None:
        plan = layer.plan
        require_capturable(plan, layer.weights.device)
        self.layer = layer
        self.copy_out = copy_out
        self.token_counts = token_buckets(token_counts, plan.spec.max_tokens)
        pool = torch.cuda.graph_pool_handle()
        # Largest first: the smaller graphs reuse its memory from the shared pool.
        graphs = {t: _Captured(layer, t, pool) for t in reversed(self.token_counts)}
        self._graphs = [graphs[t] for t in self.token_counts]

    def __repr__(self) -> str:
        return f"GraphedLayer({self.layer!r}, token_counts={list(self.token_counts)})"

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Standard layout, as :meth:`MoELayer.__call__`; the smallest captured count that
        holds ``x``'s tokens is replayed."""
        self.layer.check_standard(x, topk_weights, topk_ids)
        n = x.shape[0]
        if n == 0:
            return x.new_zeros(0, x.shape[1])
        i = bisect_left(self.token_counts, n)
        if i == len(self.token_counts):
            raise InputError(f"x has {n} tokens; the layer was captured for at most "
                             f"{self.token_counts[-1]} (token counts {list(self.token_counts)})")
        out = self._graphs[i].run(x, topk_weights, topk_ids)
        return out.clone() if self.copy_out else out

    def static_inputs(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [tokens, H], topk_weights [tokens, k] fp32, topk_ids [tokens, k] int64)``: views
        of the static inputs of the graph a ``tokens``-token call replays. Write a step's
        inputs into them and call with these very views: they are not copied (values of
        another dtype are converted by the write; rows past ``tokens`` are still re-padded).
        They are shared by every call of that graph."""
        i = bisect_left(self.token_counts, tokens)
        if tokens < 1 or i == len(self.token_counts):
            raise InputError(f"{tokens} tokens: the layer was captured for 1 to "
                             f"{self.token_counts[-1]} (token counts {list(self.token_counts)})")
        g = self._graphs[i]
        return g.x[:tokens], g.weights[:tokens], g.ids[:tokens]
