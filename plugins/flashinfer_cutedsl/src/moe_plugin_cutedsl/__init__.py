"""FlashInfer CuTe-DSL NVFP4 MoE for moe-core: v1 on a dispatcher's masked layout (DeepEP
low-latency), v2 on the standard layout. Resolution picks the variant from the layouts the
spec's a2a mode delivers (scenario S3); weight layout and wire format follow the variant.
Blackwell (SM100+) only; ``flashinfer`` is imported only when a runner is built."""

from moe_core import Variant, Verdict, hookimpl

from .constraints import LAYOUTS, REQUIRES, V1, V2, WIRE, reasons

_SUMMARY = {V1: "masked CuTe-DSL MoE straight on DeepEP low-latency's layout",
            V2: "standard runner path (the grouped GEMMs on locally grouped tokens)"}
_YES = {V1: "NVFP4 masked grouped GEMMs on a dispatcher's masked layout; [Gate, Up] w13, "
            "swizzled block scales, no autotune run",
        V2: "NVFP4 grouped GEMMs; w13 halves interleaved by 64, block scales in the MMA layout"}
# v1 takes NVFP4 tokens as they travel (its kernels read the data and block scales).
VARIANTS = [Variant(name, 25, _SUMMARY[name], layouts=LAYOUTS[name], wire=WIRE[name],
                    requires=REQUIRES, quantized_input=name == V1) for name in (V1, V2)]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_shape(spec):
    why = reasons(spec)
    if why:
        return [Verdict.no(v.name, why[0][0], "; ".join(d for _, d in why)) for v in VARIANTS]
    return [Verdict.yes(v.name, _YES[v.name]) for v in VARIANTS]


@hookimpl
def process_weights(plan, weights):
    from .weights import process

    return process(plan.variant, weights)


@hookimpl
def make_runner(plan, weights):
    from .runner import CuteDslRunner

    return CuteDslRunner(plan, weights)
