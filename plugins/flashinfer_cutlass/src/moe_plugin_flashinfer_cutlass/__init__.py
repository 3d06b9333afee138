"""FlashInfer CUTLASS fused-MoE backend: bf16 and fp8 128x128-block layers on SM90, with
scenario S2's padding of intermediate sizes the kernel cannot take as they are.

The kernels are FlashInfer's (TensorRT-LLM's CUTLASS MoE); :mod:`.build` compiles only the
kind a plan needs with FlashInfer's JIT. Importing this module imports neither torch nor
flashinfer.
"""

from __future__ import annotations

from moe_core import Variant, hookimpl

from .constraints import LAYOUTS, REQUIRES, VARIANTS, padded_intermediate, verdicts


@hookimpl
def moe_variants():
    # graph_safe: one run_moe call whose workspace is sized by T (allocated through torch's
    # caching allocator) and whose TensorRT-LLM error checks skip capturing streams; a GPU
    # test captures and replays a loaded layer.
    return [Variant(name, priority, summary, layouts=LAYOUTS, requires=REQUIRES, graph_safe=True)
            for name, (priority, summary) in VARIANTS.items()]


@hookimpl
def probe_environment():
    from .build import probe

    return probe()


@hookimpl
def supports_shape(spec, env):
    return verdicts(spec, env)


@hookimpl
def process_weights(plan, weights):
    from .weights import to_kernel

    return to_kernel(plan.spec, weights, plan.intermediate_padded)


@hookimpl
def make_runner(plan, weights):
    from .runner import CutlassFusedMoeRunner

    return CutlassFusedMoeRunner(plan, weights)


__all__ = ["padded_intermediate"]
