"""Which spec each CuTe-DSL variant takes, as pure functions (no flashinfer import).

v1 runs on DeepEP low-latency's masked layout; v2 is the standard runner path (tokens stay
on the rank). Both are NVFP4 (e2m1 weights, 16-element e4m3 block scales, fp32 global
scales), SiLU-gated, on Blackwell.
"""

from __future__ import annotations

from moe_core import A2A, Activation, Quant
from moe_core.availability import missing_module

V1, V2 = "v1", "v2"
#: The a2a mode each variant's token path serves.
SERVES = {V1: (A2A.DEEPEP_LL,), V2: (A2A.NONE,)}
HIDDEN_ALIGN = 128      # K of GEMM1: whole 128-wide NVFP4 MMA k-blocks
INTER_ALIGN = 128       # v2 interleaves 64-row groups of each half; N tiles of 128


def reasons(variant: str, spec) -> list[str]:
    out = []
    if spec.a2a not in SERVES[variant]:
        other = V1 if variant == V2 else V2
        out.append(f"a2a {spec.a2a.value!r} is not this path's "
                   f"({'/'.join(a.value for a in SERVES[variant])}); "
                   + (f"{other} takes it" if spec.a2a in SERVES[other] else "no CuTe-DSL path takes it"))
    if spec.quant is not Quant.NVFP4:
        out.append(f"NVFP4 weights only, got {spec.quant.value}")
    if spec.activation is not Activation.SILU_GATED:
        out.append(f"SiLU-gated experts only, got {spec.activation.value}")
    if spec.has_bias:
        out.append("expert biases are not supported")
    if spec.hidden_size % HIDDEN_ALIGN:
        out.append(f"hidden {spec.hidden_size} is not a multiple of {HIDDEN_ALIGN}")
    if spec.intermediate_per_partition % INTER_ALIGN:
        out.append(f"intermediate per partition {spec.intermediate_per_partition} is not a "
                   f"multiple of {INTER_ALIGN}")
    if (spec.sm or 0) < 100:
        out.append(f"the CuTe-DSL NVFP4 kernels need Blackwell (SM100 or newer), found {spec.arch}")
    missing = missing_module("flashinfer")
    if missing:
        out.append(missing)
    return out
