"""FlashInfer CUTLASS fused-MoE backend (skeleton). Kernels land with issue #5."""

from moe_core import Variant, Verdict, hookimpl
from moe_core.availability import missing_module

VARIANTS = [Variant("fused_moe", 20, "flashinfer.fused_moe.cutlass_fused_moe")]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_shape(spec):
    why = "; ".join(filter(None, ["not implemented yet (issue #5)", missing_module("flashinfer")]))
    return [Verdict.no(v.name, why) for v in VARIANTS]


@hookimpl
def make_runner(plan, weights):
    raise NotImplementedError("the flashinfer_cutlass skeleton declines every spec until issue #5 lands")
