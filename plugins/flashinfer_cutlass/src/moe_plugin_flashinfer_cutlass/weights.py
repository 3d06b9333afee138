"""The kernel's weight layout, and scenario S2's padding.

From canonical ``w13 [E, 2I, H]`` ([Gate, Up]) and ``w2 [E, H, I]`` to the kernel's
``fc1 [E, 2I', H]`` in ``[Up, Gate]`` order and ``fc2 [E, H, I']``, where ``I'`` is the
plan's padded intermediate size: each half of a gated w13 gets its own zero rows (so the
kernel's split at ``I'`` still separates up from gate), w2 gets zero input columns, a
gated fc1 bias gets zeros per half. Zeros in both make the extra intermediate channels
exactly zero, whatever the activation, so padding never changes the output.

128x128 block scales need no padding: the plan pads block-scaled layers to a multiple of
128 and the canonical scales already cover the partial last block.
"""

from __future__ import annotations

import torch

from moe_core.spec import Quant

LAYOUT = "flashinfer_cutlass"


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` with zeros appended along ``dim`` up to ``size`` (bitwise zeros: fp8 too)."""
    extra = size - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    raw = t.view(torch.uint8) if t.dtype.itemsize == 1 else t
    out = torch.cat([raw, raw.new_zeros(shape)], dim)
    return out.view(t.dtype)


def _halves(t: torch.Tensor, gated: bool, dim: int) -> list[torch.Tensor]:
    """[Up, Gate] halves of a gated w13-like tensor (canonical is [Gate, Up]); else [t]."""
    if not gated:
        return [t]
    gate, up = t.chunk(2, dim)
    return [up, gate]


def to_kernel(spec, weights, padded: int):
    """New weights in the kernel's layout at intermediate ``padded``; inputs untouched."""
    gated = spec.activation.gated
    fc1 = torch.cat([_pad(h, -2, padded) for h in _halves(weights.w13, gated, -2)], -2)
    tensors = {"w13": fc1.contiguous(), "w2": _pad(weights.w2, -1, padded).contiguous()}
    if spec.quant is Quant.FP8_BLOCK128:
        tensors["w13_scale"] = torch.cat(_halves(weights.w13_scale, gated, -2), -2).contiguous()
        tensors["w2_scale"] = weights.w2_scale.contiguous()
    if spec.has_bias:
        # the kernel adds biases in the output dtype
        tensors["w13_bias"] = torch.cat([_pad(h, -1, padded) for h in _halves(weights.w13_bias, gated, -1)],
                                        -1).to(torch.bfloat16).contiguous()
        tensors["w2_bias"] = weights.w2_bias.to(torch.bfloat16).contiguous()
    return weights.replace(layout=f"{LAYOUT}/I={padded}", **tensors)


def canonical(spec, weights, unpad: bool = True):
    """The inverse of :func:`to_kernel`: canonical [Gate, Up] order, without the padding
    (``unpad=False`` keeps it, giving canonical weights of the padded size). Biases come
    back in the kernel's bf16."""
    gated = spec.activation.gated
    padded = weights.w2.shape[-1]
    keep = spec.intermediate_per_partition if unpad else padded

    def back(t: torch.Tensor, dim: int) -> torch.Tensor:
        halves = _halves(t, gated, dim)  # the same swap, applied to [Up, Gate], restores it
        return torch.cat([h.narrow(dim, 0, keep) for h in halves], dim)

    tensors = {"w13": back(weights.w13, -2), "w2": weights.w2[..., :keep]}
    if spec.quant is Quant.FP8_BLOCK128:
        tensors["w13_scale"] = torch.cat(_halves(weights.w13_scale, gated, -2), -2)
        tensors["w2_scale"] = weights.w2_scale
    if spec.has_bias:
        tensors["w13_bias"] = back(weights.w13_bias, -1)
        tensors["w2_bias"] = weights.w2_bias
    return weights.replace(layout="canonical", **tensors)
