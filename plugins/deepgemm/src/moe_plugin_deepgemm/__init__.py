"""DeepGEMM backend: grouped GEMMs in the contiguous (a2a none, DeepEP normal, prefill) and
masked (DeepEP low-latency, decode) layouts, bf16 or fp8 128x128-block weights.

For fp8 layers the activation step between the two GEMMs is either our fused Triton
kernel (SiLU-and-mul, optional SwiGLU clamp, per-token-group FP8 quant, scales written in
DeepGEMM's MN-major layout; needs G % 4 == 0 groups of 128 in the intermediate size)
or the unfused path (activation, then quant; any shape, no clamp). Scenario S1 is the
fall-through between them; S4 follows from the variants' declared wire formats (bf16 layers
travel as bf16, fp8_block128 layers as FP8); S5 is the overlap decision.

Importing this module imports neither torch nor deep_gemm.
"""

from __future__ import annotations

from moe_core import Variant, hookimpl

from .constraints import CONTIGUOUS, LAYOUTS, MASKED, VARIANTS, WIRE, verdicts


@hookimpl
def moe_variants():
    # quantized_input: FP8 tokens reach the first GEMM as they travel (run_*_quantized).
    # graph_safe: the standard call permutes, runs and combines on the device with shapes
    # from T alone (moe_core.kernels.permute); a GPU test captures and replays a layer.
    return [Variant(name, priority, summary, requires=("deep_gemm",), wire=WIRE,
                    layouts=LAYOUTS[MASKED if name.startswith(MASKED) else CONTIGUOUS],
                    quantized_input=True, graph_safe=True)
            for name, (priority, summary) in VARIANTS.items()]


@hookimpl
def supports_shape(spec):
    return verdicts(spec)


@hookimpl
def process_weights(plan, weights):
    from .weights import prepare

    return prepare(plan, weights)


@hookimpl
def make_runner(plan, weights):
    from .runner import DeepGemmRunner

    return DeepGemmRunner(plan, weights)
