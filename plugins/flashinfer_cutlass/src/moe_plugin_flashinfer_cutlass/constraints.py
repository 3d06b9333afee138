"""What each FlashInfer CUTLASS fused-MoE variant supports, as data and reasons.

Pure: imports neither torch nor flashinfer. The facts come from FlashInfer 0.5.3's
``flashinfer_cutlass_fused_moe_sm100_binding.cu`` (``runMoe``) and the TensorRT-LLM MoE
kernels it wraps:

* TMA needs 16-byte rows: hidden and intermediate sizes are multiples of
  ``128 / (8 * min(activation bytes, weight bytes))``, 8 for bf16 and 16 for fp8.
* The DeepSeek FP8 path (bf16 activations quantized in-kernel per 1x128 group, fp8
  weights with 128x128 block scales) needs both sizes in whole 128-blocks.
* w13 is ``[Up, Gate]`` (the kernel reads the linear half first, the gate half at
  ``+inter``), the reverse of moe-core's canonical ``[Gate, Up]``.
"""

from __future__ import annotations

from moe_core import A2A, Activation, Layout, Quant, Reason, Verdict
from moe_core.sizes import round_up

#: Variant names are the ``Quant`` values they run.
BF16, FP8_BLOCK, FP8_TENSOR, NVFP4, MXFP4 = (Quant.BF16.value, Quant.FP8_BLOCK128.value,
                                            Quant.FP8_TENSOR.value, Quant.NVFP4.value, Quant.MXFP4.value)
#: name -> (priority, summary). The same priority as DeepGEMM's fused variants; the
#: per-spec preference decides between them from what was measured on the H100
#: (benchmarks/flashinfer_cutlass_bench.py, docs/results.md): with tokens on the rank
#: (a2a none) this fused kernel was 1.6-3.2x faster than DeepGEMM through moe-core at every
#: batch size, while on dispatched tokens DeepGEMM's fp8 kernels were up to 1.35x faster at
#: prefill sizes.
PREFER_STANDARD, PREFER_DISPATCHED = 2.0, -1.0
VARIANTS = {
    BF16: (31, "fused MoE (routing, both GEMMs, activation, finalize), bf16 (SM90)"),
    FP8_BLOCK: (31, "fused MoE, fp8 128x128 block weights, in-kernel 1x128 activation quant (SM90)"),
    FP8_TENSOR: (31, "fused MoE, fp8 per-tensor weights with static activation scales (SM90)"),
    NVFP4: (31, "fused MoE, NVFP4 weights and activations (SM100)"),
    MXFP4: (31, "fused MoE, MXFP4 weights (SM100)"),
}
#: The size multiple TMA needs (16 bytes of the narrower operand).
TMA_ALIGN = {Quant.BF16: 8, Quant.FP8_BLOCK128: 16}
#: Scenario S2: an intermediate size per partition off this multiple is zero-padded up to it.
PAD_TO = 16
BLOCK = 128
ACTIVATIONS = (Activation.SILU_GATED, Activation.SWIGLU_LIMIT, Activation.RELU2)
#: The kernel routes tokens itself: it takes the standard layout, from a dispatcher too.
LAYOUTS = (Layout.STANDARD,)
REQUIRES = ("flashinfer",)


def padded_intermediate(spec) -> int:
    """The per-partition intermediate size the kernel runs on (S2): the next multiple of 16,
    or of 128 for block-scaled fp8 (whose scales already cover the partial last block)."""
    multiple = BLOCK if spec.quant is Quant.FP8_BLOCK128 else PAD_TO
    return round_up(spec.intermediate_per_partition, multiple)


Why = tuple[Reason, str]


def _arch(spec, variant: str) -> Why | None:
    if variant in (NVFP4, MXFP4):
        if spec.sm is None or spec.sm < 100:
            return Reason.ARCH_UNSUPPORTED, f"{variant} fused MoE needs Blackwell (SM100+), found {spec.arch}"
        return (Reason.NOT_IMPLEMENTED, "the SM100 NVFP4/MXFP4 weight layouts are declared but not "
                "implemented: no Blackwell machine to verify them on")
    if spec.sm != 90:
        return (Reason.ARCH_UNSUPPORTED, f"this plugin builds and runs its {variant} kernels on SM90 "
                f"(Hopper) only, found {spec.arch}")
    if variant == FP8_TENSOR:
        return (Reason.NUMERICS_DIFFER,
                "the kernel quantizes the intermediate activation with a static scale from the "
                "checkpoint (input_scale); moe-core's fp8_tensor activations are dynamic per "
                "tensor, so the outputs would differ: not offered")
    return None


def _shape(spec) -> Why | None:
    if spec.act_dtype != "bf16":
        return Reason.ACT_DTYPE_UNSUPPORTED, f"the kernel reads and writes bf16 activations, got {spec.act_dtype}"
    if spec.activation is Activation.GELU_GATED:
        return (Reason.NUMERICS_DIFFER,
                f"activation {spec.activation.value}: the kernel's GELU is erf-based, the spec's "
                "is the tanh approximation")
    if spec.activation not in ACTIVATIONS:
        return Reason.ACTIVATION_UNSUPPORTED, f"activation {spec.activation.value} is not one the kernel computes"
    if spec.has_bias and spec.moe_tp_size > 1:
        return (Reason.BIAS_UNSUPPORTED, "expert biases with the intermediate split over moe-TP "
                "ranks: every rank would add the down bias")
    align = TMA_ALIGN[spec.quant]
    if spec.hidden_size % align:
        return (Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size} is not a multiple of {align} "
                f"(16-byte TMA rows of {spec.quant.value}); padding the hidden size would pad every token")
    if spec.quant is Quant.FP8_BLOCK128 and spec.hidden_size % BLOCK:
        return (Reason.SHAPE_UNALIGNED,
                f"hidden {spec.hidden_size} is not a multiple of 128 (fp8 128x128 weight blocks)")
    return None


def verdicts(spec, env) -> list[Verdict]:
    from .build import build_note  # here: `python -m ...build` must not find it imported

    out = []
    for name in VARIANTS:
        if spec.quant.value != name:
            out.append(Verdict.no(name, Reason.QUANT_UNSUPPORTED, f"runs {name} layers, this is {spec.quant.value}"))
            continue
        why = _arch(spec, name) or _shape(spec)
        if why:
            out.append(Verdict.no(name, *why))
            continue
        inter, padded = spec.intermediate_per_partition, padded_intermediate(spec)
        reason = f"FlashInfer CUTLASS fused MoE, {name} on {spec.arch}"
        if padded != inter:
            reason += f"; intermediate {inter} zero-padded to {padded} (S2)"
        note = build_note(name, env)
        if note:
            reason += f"; {note}"
        out.append(Verdict.yes(name, reason, padded_intermediate=padded if padded != inter else None,
                               preference=PREFER_STANDARD if spec.a2a is A2A.NONE else PREFER_DISPATCHED))
    return out
