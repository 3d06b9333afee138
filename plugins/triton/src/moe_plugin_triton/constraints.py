"""What each Triton variant runs, as data and reasons. Pure: imports neither torch nor triton.

The kernels (:mod:`.kernels`) mask every tile edge, so the sizes they take are bounded only
by what the data formats need:

* ``bf16``: any hidden and intermediate size.
* ``fp8_block128``: the hidden size in whole 1x128 activation groups (the tokens are
  quantized by :func:`moe_core.kernels.group_quant.quantize_groups`, which needs K % 128);
  any intermediate size (our activation kernel quantizes a ragged last group on its own
  amax, as the reference does, and the 128x128 weight scales restart at the up half, which
  the GEMM reads per output column).
* Sorted rows are indexed in int32: ``max_tokens * top_k`` plus the per-expert padding
  must stay below 2**31.
"""

from __future__ import annotations

from moe_core import Activation, Layout, Quant, Reason, Verdict, Wire

BF16, FP8_BLOCK = Quant.BF16.value, Quant.FP8_BLOCK128.value
#: The band "kernels tuned for a GPU", below DeepGEMM's and FlashInfer's static priorities
#: until the H200 numbers place it; ``moe tune``'s measured order decides where it wins.
PRIORITY = 22
#: name -> (quant it runs, summary).
VARIANTS = {
    BF16: (Quant.BF16, "Triton fused MoE: gather + grouped GEMM, activation, grouped GEMM, "
                       "top-k sum; bf16 weights (per-GPU tuned tiles)"),
    FP8_BLOCK: (Quant.FP8_BLOCK128, "Triton fused MoE, e4m3 weights with 128x128 block scales, "
                                    "activations quantized per 1x128 token group"),
}
#: The standard layout natively; a dispatcher's contiguous rows become top-1 routes.
LAYOUTS = (Layout.STANDARD, Layout.CONTIGUOUS)
#: FP8 on the wire loses nothing for an fp8_block128 layer: the kernel quantizes the same
#: 1x128 groups again (a dequantized group re-quantizes to itself).
WIRE = {BF16: (Wire.BF16,), FP8_BLOCK: (Wire.FP8, Wire.BF16)}
REQUIRES = ("triton",)
ACTIVATIONS = (Activation.SILU_GATED, Activation.SWIGLU_LIMIT, Activation.GELU_GATED, Activation.RELU2)
#: Triton's tensor-core dots: bf16 from SM80 (Ampere), e4m3 from SM89 (Ada, Hopper).
MIN_SM = {Quant.BF16: 80, Quant.FP8_BLOCK128: 89}
#: The activation group of the FP8 format (1 x 128 per token).
GROUP = 128
#: Sorted-row indices are int32; the largest padding an expert gets is BLOCK_M - 1 rows.
MAX_ROWS, MAX_BLOCK_M = 2**31 - 1, 128

Why = tuple[Reason, str]


def _why_not(spec, name: str) -> Why | None:
    quant = VARIANTS[name][0]
    if spec.quant is not quant:
        return Reason.QUANT_UNSUPPORTED, f"runs {quant.value} weights, this layer has {spec.quant.value}"
    if spec.sm is None:
        return (Reason.ARCH_UNSUPPORTED, f"needs an NVIDIA GPU (CUDA SM{MIN_SM[quant]}+) for "
                f"Triton's tensor-core dots, found {spec.arch}")
    if spec.sm < MIN_SM[quant]:
        return (Reason.ARCH_UNSUPPORTED, f"{quant.value} dots need SM{MIN_SM[quant]}+ in Triton, "
                f"found {spec.arch}")
    if spec.act_dtype != "bf16":
        return (Reason.ACT_DTYPE_UNSUPPORTED,
                f"the kernels read and write bf16 activations, got {spec.act_dtype}")
    if spec.activation not in ACTIVATIONS:
        return Reason.ACTIVATION_UNSUPPORTED, f"activation {spec.activation.value} is not implemented"
    if quant is Quant.FP8_BLOCK128 and spec.hidden_size % GROUP:
        return (Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size} is not a multiple of {GROUP}: "
                "tokens are quantized in whole 1x128 groups")
    rows = spec.max_tokens * spec.top_k + spec.local_experts * (MAX_BLOCK_M - 1)
    if rows > MAX_ROWS:
        return (Reason.LIMIT_EXCEEDED, f"{spec.max_tokens} tokens x top-{spec.top_k} plus padding is "
                f"{rows} sorted rows; int32 row indices hold at most {MAX_ROWS}")
    return None


def verdicts(spec) -> list[Verdict]:
    out = []
    for name in VARIANTS:
        why = _why_not(spec, name)
        if why:
            out.append(Verdict.no(name, *why))
            continue
        what = spec.activation.value + (" + biases" if spec.has_bias else "")
        out.append(Verdict.yes(name, f"Triton fused MoE, {name} weights, {what}, on {spec.arch} "
                               f"({spec.local_experts} local experts, intermediate "
                               f"{spec.intermediate_per_partition}/rank)"))
    return out
