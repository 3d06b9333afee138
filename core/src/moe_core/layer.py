"""The loaded layer: a plan, its processed weights and its runner, behind input checks.

Checks run before any kernel sees the data, so a bad call is an :class:`InputError`
naming the tensor and what the plan expected, never a crash inside a kernel.
"""

from __future__ import annotations

import torch

from .errors import InputError, PluginError
from .plan import Plan
from .runner import LAYOUT_PROTOCOL
from .tokens import Layout
from .weights import MoEWeights, device_type

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class MoELayer:
    def __init__(self, plan: Plan, weights: MoEWeights, runner, *, check_values: bool = True):
        self.plan = plan
        self.weights = weights
        self.runner = runner
        #: Also check id ranges and counts (one device sync per call); shapes are always checked.
        self.check_values = check_values
        self.dtype = TORCH_DTYPES[plan.spec.act_dtype]
        #: Layouts whose runner output has been checked once (shape, dtype, device).
        self._verified: set[Layout] = set()

    def __repr__(self) -> str:
        return f"MoELayer({self.plan.backend}, {self.plan.spec.describe()})"

    def _check_hidden(self, name: str, x: torch.Tensor, dims: int) -> None:
        spec = self.plan.spec
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} is {type(x).__name__}; expected a torch.Tensor")
        if x.dim() != dims or x.shape[-1] != spec.hidden_size:
            raise InputError(f"{name} has shape {tuple(x.shape)}; expected {dims} dims ending in "
                             f"hidden_size {spec.hidden_size}")
        if x.dtype != self.dtype:
            raise InputError(f"{name} has dtype {x.dtype}; the plan's activation dtype is {self.dtype}")
        if x.device.type != device_type(spec) or x.device != self.weights.device:
            raise InputError(f"{name} is on {x.device}; the weights are on {self.weights.device}")

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Standard layout: ``x [T, H]``, ``topk_weights``/``topk_ids`` ``[T, top_k]`` -> ``[T, H]``."""
        self.check_standard(x, topk_weights, topk_ids)
        return self.run_standard(x, topk_weights, topk_ids)

    def graphed(self, token_counts, *, copy_out: bool = True):
        """This layer captured in CUDA graphs, one per token count (see :mod:`moe_core.graphs`);
        :class:`~moe_core.errors.GraphError` unless its plan is graph-safe and on CUDA."""
        from .graphs import GraphedLayer

        return GraphedLayer(self, token_counts, copy_out=copy_out)

    def run_standard(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """The runner on checked standard inputs (a dispatcher's rows may exceed max_tokens)."""
        return self._verify(Layout.STANDARD, self.runner(x, topk_weights, topk_ids), x.shape, x.device)

    def _verify(self, layout: Layout, out, shape, device) -> torch.Tensor:
        """The runner's first output in each layout must be what the contract says."""
        if layout in self._verified:
            return out
        got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, torch.Tensor) else None
        if got != (tuple(shape), self.dtype, device):
            raise PluginError(f"the runner of {self.plan.backend} returned "
                              f"{'a ' + type(out).__name__ if got is None else got} in the {layout} "
                              f"layout; expected a tensor {(tuple(shape), self.dtype, device)}")
        self._verified.add(layout)
        return out

    def check_standard(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:
        """:class:`InputError` unless this rank's tokens and routing match the plan."""
        spec = self.plan.spec
        self._check_hidden("x", x, 2)
        T = x.shape[0]
        if T > spec.max_tokens:
            raise InputError(f"x has {T} tokens; the plan was resolved for at most {spec.max_tokens} "
                             "per rank (resolve a spec with a larger max_tokens)")
        for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (T, spec.top_k):
                raise InputError(f"{name} has shape {tuple(getattr(t, 'shape', ()))}; expected "
                                 f"({T}, {spec.top_k}) = (tokens, top_k)")
            if t.device != x.device:
                raise InputError(f"{name} is on {t.device}; x is on {x.device}")
        if topk_ids.dtype not in (torch.int32, torch.int64):
            raise InputError(f"topk_ids has dtype {topk_ids.dtype}; expected int32 or int64")
        if not topk_weights.is_floating_point():
            raise InputError(f"topk_weights has dtype {topk_weights.dtype}; expected a float dtype")
        if self.check_values and T:
            lo, hi = int(topk_ids.min()), int(topk_ids.max())
            if lo < 0 or hi >= spec.num_experts:
                raise InputError(f"topk_ids range [{lo}, {hi}] is outside [0, {spec.num_experts}) "
                                 "(global expert ids)")

    @staticmethod
    def _check_counts(name: str, t, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        """``t`` is an integer tensor of ``shape`` on ``x``'s device."""
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} is {type(t).__name__}; expected a torch.Tensor of shape {shape} = {what}")
        if tuple(t.shape) != shape:
            raise InputError(f"{name} has shape {tuple(t.shape)}; expected {shape} = {what}")
        if t.dtype not in (torch.int32, torch.int64):
            raise InputError(f"{name} has dtype {t.dtype}; expected int32 or int64 row counts")
        if t.device != x.device:
            raise InputError(f"{name} is on {t.device}; x is on {x.device}")

    def _expect(self, layout: Layout) -> None:
        # The host checked the runner's methods for the plan's layout; another layout's
        # method is optional (GroupedRunner has all three).
        if not isinstance(self.runner, LAYOUT_PROTOCOL[layout]):
            raise InputError(f"the runner of {self.plan.backend} does not take the {layout} layout "
                             f"(its plan's layout is {self.plan.dispatch.layout})")

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Contiguous layout: rows of ``x [N, H]`` grouped per local expert by ``offsets``."""
        E = self.plan.spec.local_experts
        self._expect(Layout.CONTIGUOUS)
        self._check_hidden("x", x, 2)
        self._check_counts("offsets", offsets, x, (E + 1,), "(local_experts + 1,)")
        if self.check_values:
            diffs = offsets.diff()
            if int(offsets[0]) != 0 or int(offsets[-1]) != x.shape[0] or bool((diffs < 0).any()):
                raise InputError(f"offsets must rise from 0 to the {x.shape[0]} rows of x; got "
                                 f"{offsets.tolist()}")
        return self._verify(Layout.CONTIGUOUS, self.runner.run_contiguous(x, offsets), x.shape, x.device)

    def run_masked(self, x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
        """Masked layout: ``x [E_local, M, H]``, ``masked_m [E_local]`` valid rows per expert.
        Output rows past ``masked_m[e]`` are unspecified."""
        E = self.plan.spec.local_experts
        self._expect(Layout.MASKED)
        self._check_hidden("x", x, 3)
        if x.shape[0] != E:
            raise InputError(f"x has shape {tuple(x.shape)}; expected ({E}, M, H) = (local experts, "
                             "rows per expert, hidden)")
        self._check_counts("masked_m", masked_m, x, (E,), "(local_experts,)")
        if self.check_values and bool(((masked_m < 0) | (masked_m > x.shape[1])).any()):
            raise InputError(f"masked_m values must lie in [0, {x.shape[1]}]; got {masked_m.tolist()}")
        return self._verify(Layout.MASKED, self.runner.run_masked(x, masked_m), x.shape, x.device)
