"""What each DeepGEMM variant supports, as data and reasons. Pure: no torch, no deep_gemm."""

from __future__ import annotations

from moe_core import A2A, Activation, Layout, Overlap, Quant, Reason, Regime, Verdict, Wire

CONTIGUOUS, MASKED = "contiguous", "masked"
CONTIGUOUS_FUSED, MASKED_FUSED = "contiguous_fused", "masked_fused"
VARIANTS = {
    CONTIGUOUS_FUSED: (31, "contiguous grouped GEMM, fused SiLU-and-mul + FP8 quant (fp8)"),
    MASKED_FUSED: (31, "masked grouped GEMM, fused SiLU-and-mul + FP8 quant (fp8)"),
    CONTIGUOUS: (30, "contiguous grouped GEMM, unfused activation (a2a none / DeepEP normal)"),
    MASKED: (30, "masked grouped GEMM, unfused activation (DeepEP low-latency / decode)"),
}
#: DeepGEMM's SM90 kernels: bf16 needs K % 64 (sm90_bf16_gemm.hpp); fp8 128x128 blocks
#: need K and N in whole 128-blocks so the weight scales line up.
ALIGN = {Quant.BF16: 64, Quant.FP8_BLOCK128: 128}
#: The fused kernel tiles 4 rows x 4 groups of 128 without bounds masks.
FUSED_TILE = 4
#: DeepGEMM's SM90 masked kernels TMA-store whole BLOCK_M (64 or 128) row tiles at
#: ``group * M + offset``: a buffer of M rows per expert not a multiple of 128 lets one
#: expert's last tile overwrite the next expert's rows (measured on the H100).
MASKED_ROWS = 128
#: Layouts each variant takes, best first (the standard one: tokens on the rank, grouped here).
LAYOUTS = {CONTIGUOUS: (Layout.CONTIGUOUS, Layout.STANDARD), MASKED: (Layout.MASKED, Layout.STANDARD)}
#: fp8_block128 layers take FP8 tokens (the 1x128 groups DeepGEMM quantizes to anyway).
WIRE = (Wire.FP8, Wire.BF16)


Why = tuple[Reason, str]


def _common(spec) -> Why | None:
    """Why no DeepGEMM variant can run ``spec`` for its shape (None if some may)."""
    if spec.sm in (100, 103):
        return (Reason.NOT_IMPLEMENTED,
                "SM100 is not offered: its masked tiles follow the runtime M alignment with A/B "
                "swapped (unverified: no SM100 test machine), and its fp8 takes power-of-two "
                "(UE8M0) scales, where re-rounding fp8 weights measured 7.8e-2 relative error "
                "against the reference (above the 6e-2 fp8 tolerance)")
    if spec.sm != 90:
        return Reason.ARCH_UNSUPPORTED, f"needs an NVIDIA SM90 GPU for DeepGEMM's kernels, found {spec.arch}"
    if spec.quant not in ALIGN:
        return Reason.QUANT_UNSUPPORTED, f"weights must be bf16 or fp8_block128, got {spec.quant.value}"
    if spec.act_dtype != "bf16":
        return Reason.ACT_DTYPE_UNSUPPORTED, f"DeepGEMM reads and writes bf16 activations, got {spec.act_dtype}"
    if spec.has_bias:
        return Reason.BIAS_UNSUPPORTED, "expert biases are not supported by DeepGEMM's grouped GEMMs"
    align, inter = ALIGN[spec.quant], spec.intermediate_per_partition
    for name, size in (("hidden", spec.hidden_size), ("intermediate per partition", inter)):
        if size % align:
            return (Reason.SHAPE_UNALIGNED, f"{name} {size} is not a multiple of {align} "
                    f"({'fp8 128x128 weight blocks' if align == 128 else 'bf16 GEMM K alignment'})")
    return None


def _masked(spec) -> Why | None:
    if spec.a2a is not A2A.NONE:  # tokens travel: the masked buffer holds every rank's tokens
        rows = spec.max_tokens * spec.ep_size
        if rows % MASKED_ROWS:
            return (Reason.SHAPE_UNALIGNED,
                    f"a dispatcher's masked buffer has N = {rows} rows per expert ({spec.max_tokens} "
                    f"tokens x {spec.ep_size} ranks); DeepGEMM's masked GEMM needs N % {MASKED_ROWS} == 0")
    return None


def _activation(spec, fused: bool) -> Why | None:
    if fused:
        if spec.quant is not Quant.FP8_BLOCK128:
            return Reason.QUANT_UNSUPPORTED, "the fused activation + FP8 quant is for fp8_block128 layers"
        if spec.activation not in (Activation.SILU_GATED, Activation.SWIGLU_LIMIT):
            return (Reason.ACTIVATION_UNSUPPORTED,
                    f"the fused kernel computes SiLU-gated activations, not {spec.activation.value}")
        groups = spec.intermediate_per_partition // 128
        if groups % FUSED_TILE:
            return (Reason.SHAPE_UNALIGNED,
                    f"fused activation needs G % 4 == 0; G = {groups} groups of 128 in the "
                    f"intermediate per partition {spec.intermediate_per_partition}")
        return None  # rows: multiples of 128 in every layout we run (MASKED_ROWS, alignment)
    if spec.activation is Activation.SWIGLU_LIMIT:
        return (Reason.ACTIVATION_UNSUPPORTED, "a SwiGLU clamp limit is declared only for the fused "
                                               "activation kernel (deepgemm:*_fused), not the unfused "
                                               "variants")
    return None


def _overlap(spec) -> Overlap | None:
    if not spec.down_gemm_overlap:
        return None
    return Overlap(sbo=spec.sbo, down_gemm=False,
                   reason="deep_gemm's masked GEMM here takes no overlap signal arguments")


def verdicts(spec) -> list[Verdict]:
    common = _common(spec)
    decode = spec.token_regime is Regime.DECODE
    out = []
    for name in VARIANTS:
        layout = MASKED if name.startswith(MASKED) else CONTIGUOUS
        why = (common or (_masked(spec) if layout == MASKED else None)
               or _activation(spec, name.endswith("_fused")))
        if why:
            out.append(Verdict.no(name, *why))
            continue
        # The masked GEMM over [E, M, H] buffers is for decode-sized batches: grouping a
        # prefill batch into it locally would waste most of each buffer.
        takes = LAYOUTS[layout] if layout == CONTIGUOUS or decode else (Layout.MASKED,)
        out.append(Verdict.yes(
            name, f"DeepGEMM {layout} {spec.quant.value} grouped GEMM on {spec.arch}",
            preference=1.0 if layout == MASKED and decode else 0.0, overlap=_overlap(spec),
            layouts=takes))
    return out
