"""DeepGEMM backend (skeleton): grouped GEMMs in the contiguous (prefill, DeepEP normal)
and masked (DeepEP low-latency, decode) layouts. Kernels land with issue #4."""

from moe_core import Variant, Verdict, hookimpl
from moe_core.availability import missing_module

VARIANTS = [
    Variant("contiguous", 30, "m_grouped GEMM, contiguous layout (a2a none / DeepEP normal)"),
    Variant("masked", 30, "m_grouped GEMM, masked layout (DeepEP low-latency)"),
]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_shape(spec):
    why = "; ".join(filter(None, ["not implemented yet (issue #4)", missing_module("deep_gemm")]))
    return [Verdict.no(v.name, why) for v in VARIANTS]


@hookimpl
def make_runner(plan, weights):
    raise NotImplementedError("the deepgemm skeleton declines every spec until issue #4 lands")
