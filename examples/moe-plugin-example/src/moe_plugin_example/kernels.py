"""The example's weight layout and runner (torch is imported only here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_core.activations import apply_activation
from moe_core.runner import GroupedRunner

CHUNK_ROWS = 256
LAYOUT = "example/padded-kn"


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, rows - t.shape[-2])) if t.dim() == 3 else F.pad(t, (0, rows - t.shape[-1]))


def pad_and_transpose(plan, weights):
    """Zero-pad the intermediate dim to ``plan.intermediate_padded`` (each w13 half on its
    own), transpose to ``[E, K, N]``. New tensors: the caller's are never touched."""
    spec, size = plan.spec, plan.intermediate_padded
    halves = weights.w13.chunk(2, dim=1) if spec.activation.gated else (weights.w13,)
    w13 = torch.cat([_pad_rows(h, size) for h in halves], dim=1)
    w2 = F.pad(weights.w2, (0, size - spec.intermediate_per_partition))
    b13 = None
    if weights.w13_bias is not None:
        bias_halves = weights.w13_bias.chunk(2, dim=1) if spec.activation.gated else (weights.w13_bias,)
        b13 = torch.cat([_pad_rows(b, size) for b in bias_halves], dim=1)
    return weights.replace(w13=w13.transpose(1, 2).contiguous(), w2=w2.transpose(1, 2).contiguous(),
                           w13_bias=b13, layout=LAYOUT)


class ChunkedRunner(GroupedRunner):
    def __init__(self, plan, weights):
        super().__init__(plan, weights)
        if weights.layout != LAYOUT:
            raise ValueError(f"expected weights in layout {LAYOUT!r}, got {weights.layout!r}")
        self.add_w2_bias = weights.w2_bias is not None and plan.spec.moe_tp_rank == 0

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        w = self.weights
        y = torch.zeros(x.shape[0], self.spec.hidden_size, dtype=x.dtype, device=x.device)
        bounds = offsets.tolist()
        for e in range(self.spec.local_experts):
            for lo in range(bounds[e], bounds[e + 1], CHUNK_ROWS):
                hi = min(lo + CHUNK_ROWS, bounds[e + 1])
                h = x[lo:hi].float() @ w.w13[e].float()
                if w.w13_bias is not None:
                    h = h + w.w13_bias[e]
                out = apply_activation(self.spec, h) @ w.w2[e].float()
                if self.add_w2_bias:
                    out = out + w.w2_bias[e]
                y[lo:hi] = out.to(x.dtype)
        return y
