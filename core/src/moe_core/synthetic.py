"""Random layers for `moe run`, tests and benchmarks: canonical weights and routed inputs."""

from __future__ import annotations

import math

import torch

from .layer import TORCH_DTYPES
from .models import RouterConfig
from .quant import quantize_weights
from .routing import route
from .spec import MoESpec
from .weights import TENSOR_NAMES, MoEWeights, device_type, expected_tensors

_CHUNK = 8  # experts quantized at a time, to bound the fp32 peak
_BYTES = {"bfloat16": 2, "float8_e4m3fn": 1, "uint8": 1, "float32": 4}


def weight_bytes(spec: MoESpec) -> int:
    """Bytes of the canonical weights of ``spec`` on one rank."""
    return sum(math.prod(shape) * _BYTES[dtype] for shape, dtype in expected_tensors(spec).values())


def run_memory_bytes(spec: MoESpec, tokens: int) -> int:
    """A generous bound on what `moe run` holds at once for ``spec`` and ``tokens``.

    Canonical weights twice (canonical + processed), one fp32 chunk while generating,
    float64 copies of one expert for the oracle, and per-token activations.
    """
    E, R, H, I = spec.local_experts, spec.w13_rows, spec.hidden_size, spec.intermediate_per_partition
    per_expert = R * H + H * I
    chunk = min(_CHUNK, E) * per_expert * 4 * 3
    oracle = per_expert * 8 * 2
    acts = tokens * spec.top_k * (H + R) * 4 * 4 + tokens * H * 8 * 4
    return 2 * weight_bytes(spec) + chunk + oracle + acts


def random_weights(spec: MoESpec, *, seed: int = 0, device: str | torch.device | None = None) -> MoEWeights:
    """Canonical weights for ``spec``: N(0, 1/fan_in) floats, quantized as the spec says."""
    gen = torch.Generator().manual_seed(seed)
    E, R, H, I = spec.local_experts, spec.w13_rows, spec.hidden_size, spec.intermediate_per_partition
    device = device or device_type(spec)
    parts: list[MoEWeights] = []
    for lo in range(0, E, _CHUNK):
        n = min(_CHUNK, E - lo)
        w13 = torch.randn(n, R, H, generator=gen) / math.sqrt(H)
        w2 = torch.randn(n, H, I, generator=gen) / math.sqrt(I)
        b13 = torch.randn(n, R, generator=gen) * 0.1 if spec.has_bias else None
        b2 = torch.randn(n, H, generator=gen) * 0.1 if spec.has_bias else None
        part = quantize_weights(spec, w13, w2, b13, b2)
        parts.append(part.replace(**{k: v.to(device) for k, v in part.tensors().items()}))
    merged = {name: torch.cat([getattr(p, name) for p in parts]) for name in TENSOR_NAMES
              if getattr(parts[0], name) is not None}
    return MoEWeights(**merged)


def random_inputs(spec: MoESpec, tokens: int, *, seed: int = 1, router: RouterConfig | None = None,
                  device: str | torch.device | None = None):
    """``(x [T, H], topk_weights [T, k], topk_ids [T, k])`` routed by ``router``
    (default: softmax top-k, renormalized) over the spec's global experts."""
    gen = torch.Generator().manual_seed(seed)
    device = device or device_type(spec)
    x = torch.randn(tokens, spec.hidden_size, generator=gen).to(TORCH_DTYPES[spec.act_dtype])
    logits = torch.randn(tokens, spec.num_experts, generator=gen)
    bias = torch.randn(spec.num_experts, generator=gen) * 0.1
    router = router or RouterConfig("softmax_topk", renormalize=True)
    weights, ids = route(logits, router, spec.top_k, correction_bias=bias)
    return x.to(device), weights.to(device), ids.to(device)
