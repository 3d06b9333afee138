"""Example backend: bf16 experts as chunked matmuls on padded, pre-transposed weights."""

from __future__ import annotations

from moe_core import Quant, Reason, Variant, Verdict, hookimpl

VARIANT = "chunked"
PAD_TO = 64
#: A portable runner: the 2-19 band, above the reference (0-1), below kernels tuned for a
#: GPU (20-39). The bands: moe_core.Variant, or docs/writing-a-backend.md "Priorities".
PRIORITY = 5


def padded(size: int) -> int:
    return -(-size // PAD_TO) * PAD_TO


@hookimpl
def moe_variants():
    return [Variant(VARIANT, priority=PRIORITY,
                    summary="bf16 experts, chunked matmuls (CPU or CUDA)")]


@hookimpl
def supports_shape(spec):
    if spec.quant is not Quant.BF16:
        return [Verdict.no(VARIANT, Reason.QUANT_UNSUPPORTED, f"bf16 weights only, got {spec.quant.value}")]
    if spec.arch != "cpu" and not spec.is_nvidia:
        return [Verdict.no(VARIANT, Reason.ARCH_UNSUPPORTED, f"runs on CPU or NVIDIA CUDA only, not {spec.arch}")]
    size = padded(spec.intermediate_per_partition)
    note = f"; intermediate {spec.intermediate_per_partition} padded to {size}" if size != spec.intermediate_per_partition else ""
    return [Verdict.yes(VARIANT, f"bf16 chunked matmuls{note}", padded_intermediate=size)]


@hookimpl
def process_weights(plan, weights):
    from .kernels import pad_and_transpose

    return pad_and_transpose(plan, weights)


@hookimpl
def make_runner(plan, weights):
    from .kernels import ChunkedRunner

    return ChunkedRunner(plan, weights)
