"""The kernels read the canonical layout as it is: w13 ``[E, R, H]`` and w2 ``[E, H, I]``
row-major (K contiguous), fp8 block scales ``[E, Nb, Kb]``, biases fp32 ``[E, N]``. Preparing
them only makes each tensor contiguous (a copy where it is not; the caller's stay untouched)."""

from __future__ import annotations

import torch

LAYOUT = "triton"


def prepare(plan, weights):
    tensors = {name: t.contiguous() for name, t in weights.tensors().items()}
    for name in ("w13_bias", "w2_bias"):
        if name in tensors:
            tensors[name] = tensors[name].to(torch.float32).contiguous()
    return weights.replace(layout=LAYOUT, **tensors)
