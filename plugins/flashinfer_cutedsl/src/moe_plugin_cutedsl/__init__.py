"""FlashInfer CuTe-DSL NVFP4 backend (skeleton): v1 on DeepEP's masked layout, v2 on the
standard runner path. Blackwell (SM100+) only. Kernels land with issue #6."""

from moe_core import Variant, Verdict, hookimpl
from moe_core.availability import missing_module

VARIANTS = [
    Variant("v1", 25, "masked CuTe-DSL MoE on DeepEP low-latency dispatch"),
    Variant("v2", 25, "standard runner path (a2a none / flashinfer)"),
]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_shape(spec):
    arch = None if (spec.sm or 0) >= 100 else f"needs SM100 or newer, found {spec.arch}"
    why = "; ".join(filter(None, ["not implemented yet (issue #6)", arch, missing_module("flashinfer")]))
    return [Verdict.no(v.name, why) for v in VARIANTS]


@hookimpl
def make_runner(plan, weights):
    raise NotImplementedError("the cutedsl skeleton declines every spec until issue #6 lands")
