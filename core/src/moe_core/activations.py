"""Expert activations on the w13 output ``h = x @ w13.T`` (``[gate | up]`` halves when gated)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import Activation, MoESpec


def apply_activation(spec: MoESpec, h: torch.Tensor) -> torch.Tensor:
    """``[n, R] -> [n, R/2]`` (gated) or ``[n, R]`` (relu2). Zero-padded columns stay zero."""
    act = spec.activation
    if act is Activation.RELU2:
        return F.relu(h).square()
    gate, up = h.chunk(2, dim=-1)
    if act is Activation.SILU_GATED:
        return F.silu(gate) * up
    if act is Activation.GELU_GATED:
        return F.gelu(gate, approximate="tanh") * up
    limit = spec.swiglu_limit
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    if spec.swiglu_alpha is None:
        return F.silu(gate) * up
    return gate * torch.sigmoid(spec.swiglu_alpha * gate) * (up + 1)
