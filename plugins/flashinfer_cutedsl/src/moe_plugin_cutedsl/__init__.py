"""FlashInfer CuTe-DSL NVFP4 MoE for moe-core: v1 on DeepEP low-latency's masked layout, v2 on
the standard runner path. Resolution picks the variant from the spec's a2a mode (scenario
S3); weight layout and dispatcher settings follow the variant. Blackwell (SM100+) only;
``flashinfer`` is imported only when a runner is built."""

import dataclasses

from moe_core import Variant, Verdict, hookimpl

from .constraints import V1, V2, reasons

VARIANTS = [
    Variant(V1, 25, "masked CuTe-DSL MoE straight on DeepEP low-latency's layout"),
    Variant(V2, 25, "standard runner path (tokens stay on the rank)"),
]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_shape(spec):
    out = []
    for v in VARIANTS:
        why = reasons(v.name, spec)
        if why:
            out.append(Verdict.no(v.name, "; ".join(why)))
        elif v.name == V1:
            out.append(Verdict.yes(V1, "NVFP4 masked grouped GEMMs on DeepEP's masked layout; "
                                       "[Gate, Up] w13, swizzled block scales, no autotune run",
                                   autotune=False))
        else:
            out.append(Verdict.yes(V2, "NVFP4 grouped GEMMs; w13 halves interleaved by 64, block "
                                       "scales in the MMA layout", autotune=True))
    return out


@hookimpl
def configure_dispatcher(plan, dispatcher):
    """S3: the kernel quantizes internally, so DeepEP moves BF16 with no FP8 options, unless
    the checkpoint's static input scale lets tokens travel as NVFP4 (with that scale)."""
    if plan.variant != V1:
        return None
    if plan.spec.static_input_scale:
        return dataclasses.replace(dispatcher, dtype="nvfp4", round_scale=False, use_ue8m0=False,
                                   nvfp4_global_scale=True)
    return dataclasses.replace(dispatcher, dtype="bf16", round_scale=False, use_ue8m0=False,
                               nvfp4_global_scale=False)


@hookimpl
def process_weights(plan, weights):
    from .weights import process

    return process(plan.variant, weights)


@hookimpl
def make_runner(plan, weights):
    from .runner import CuteDslRunner

    return CuteDslRunner(plan, weights)
