"""DeepGEMM backend: grouped GEMMs in the contiguous (a2a none, DeepEP normal, prefill) and
masked (DeepEP low-latency, decode) layouts, bf16 or fp8 128x128-block weights.

For fp8 layers the activation step between the two GEMMs is either our fused Triton
kernel (SiLU-and-mul, optional SwiGLU clamp, per-token-group FP8 quant, scales written in
DeepGEMM's MN-major layout; needs G % 4 == 0 groups of 128 in the intermediate size)
or the unfused path (activation, then quant; any shape, no clamp). Scenario S1 is the
fall-through between them; S4 is :func:`configure_dispatcher`; S5 is the overlap decision.

Importing this module imports neither torch nor deep_gemm.
"""

from __future__ import annotations

import dataclasses

from moe_core import A2A, Variant, hookimpl
from moe_core.spec import Quant

from .constraints import VARIANTS, verdicts


@hookimpl
def moe_variants():
    return [Variant(name, priority, summary) for name, (priority, summary) in VARIANTS.items()]


@hookimpl
def supports_shape(spec):
    return verdicts(spec)


@hookimpl
def configure_dispatcher(plan, dispatcher):
    """S4: BF16 dispatch exactly for unquantized BF16 layers on DeepEP low-latency on NVIDIA;
    every other combination keeps the host's dispatch (fp8 layers: fp8 with fp32 scales; the
    SM100 round_scale/UE8M0 options would come with an SM100 path, which is not offered)."""
    spec = plan.spec
    if spec.is_nvidia and spec.quant is Quant.BF16 and spec.a2a is A2A.DEEPEP_LL:
        return dataclasses.replace(dispatcher, dtype="bf16")
    return None


@hookimpl
def process_weights(plan, weights):
    from .weights import prepare

    return prepare(plan, weights)


@hookimpl
def make_runner(plan, weights):
    from .runner import DeepGemmRunner

    return DeepGemmRunner(plan, weights)
