"""Hook implementations of the reference backend. Importing this module imports no torch."""

from __future__ import annotations

from ..declare import Reason, Variant, Verdict
from ..hookspecs import hookimpl
from ..spec import MoESpec, Quant

LOOP = "loop"
GROUPED_MM = "grouped_mm"


@hookimpl
def moe_variants():
    return [
        Variant(GROUPED_MM, priority=1, summary="bf16 experts through torch._grouped_mm (CUDA SM90+)"),
        Variant(LOOP, priority=0, summary="per-expert fp32 matmuls on dequantized weights; any spec"),
    ]


def _grouped_mm_reason(spec: MoESpec) -> tuple[Reason, str] | None:
    """Why the grouped_mm variant cannot run ``spec``, or None."""
    if spec.quant is not Quant.BF16:
        return Reason.QUANT_UNSUPPORTED, f"bf16 weights only, got {spec.quant.value}"
    if spec.act_dtype != "bf16":
        return Reason.ACT_DTYPE_UNSUPPORTED, f"bf16 activations only, got {spec.act_dtype}"
    if spec.sm is None or spec.sm < 90:
        return (Reason.ARCH_UNSUPPORTED,
                f"needs an NVIDIA GPU of SM90 or newer for torch._grouped_mm (arch {spec.arch})")
    if spec.hidden_size % 8 or spec.intermediate_per_partition % 8:
        return (Reason.SHAPE_UNALIGNED,
                f"rows must be 16-byte aligned: hidden {spec.hidden_size} and intermediate per "
                f"partition {spec.intermediate_per_partition} must be multiples of 8")
    return None


@hookimpl
def supports_shape(spec: MoESpec):
    why = _grouped_mm_reason(spec)
    return [
        Verdict.no(GROUPED_MM, *why) if why else Verdict.yes(GROUPED_MM, "bf16 grouped GEMM in PyTorch"),
        Verdict.yes(LOOP, "reference: supports every spec (slow, exact)"),
    ]


@hookimpl
def make_runner(plan, weights):
    from .experts import ReferenceRunner

    return ReferenceRunner(plan, weights, grouped_mm=plan.variant == GROUPED_MM)
