"""Which spec each CuTe-DSL variant takes, as declarations and pure functions (no flashinfer
import).

v1 runs on a dispatcher's masked layout (DeepEP low-latency); v2 takes the standard layout
(tokens on the rank). Both are NVFP4 (e2m1 weights, 16-element e4m3 block scales, fp32
global scales), SiLU-gated, on Blackwell. The a2a mode picks between them through these
layout declarations (scenario S3), and the wire follows v1's: NVFP4 with the checkpoint's
static input scale where it has one, else BF16, never FP8 (the kernel quantizes itself).
"""

from __future__ import annotations

from moe_core import Activation, Layout, Quant, Reason, Wire

V1, V2 = "v1", "v2"
LAYOUTS = {V1: (Layout.MASKED,), V2: (Layout.STANDARD,)}
WIRE = {V1: (Wire.NVFP4, Wire.BF16), V2: (Wire.BF16,)}
REQUIRES = ("flashinfer",)
HIDDEN_ALIGN = 128      # K of GEMM1: whole 128-wide NVFP4 MMA k-blocks
INTER_ALIGN = 128       # v2 interleaves 64-row groups of each half; N tiles of 128


def reasons(spec) -> list[tuple[Reason, str]]:
    """Every (code, detail) why no CuTe-DSL variant can run ``spec`` (empty: both may)."""
    out = []
    if spec.quant is not Quant.NVFP4:
        out.append((Reason.QUANT_UNSUPPORTED, f"NVFP4 weights only, got {spec.quant.value}"))
    if spec.activation is not Activation.SILU_GATED:
        out.append((Reason.ACTIVATION_UNSUPPORTED, f"SiLU-gated experts only, got {spec.activation.value}"))
    if spec.has_bias:
        out.append((Reason.BIAS_UNSUPPORTED, "expert biases are not supported"))
    if spec.hidden_size % HIDDEN_ALIGN:
        out.append((Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size} is not a multiple of {HIDDEN_ALIGN}"))
    if spec.intermediate_per_partition % INTER_ALIGN:
        out.append((Reason.SHAPE_UNALIGNED, f"intermediate per partition {spec.intermediate_per_partition} "
                                            f"is not a multiple of {INTER_ALIGN}"))
    if (spec.sm or 0) < 100:
        out.append((Reason.ARCH_UNSUPPORTED,
                    f"the CuTe-DSL NVFP4 kernels need Blackwell (SM100 or newer), found {spec.arch}"))
    return out
