"""DeepEP call arguments derived from a plan's dispatch config: pure data, tested on CPU.

Scenario S3: a runner that quantizes internally (CuTe-DSL) gets BF16 dispatch and none of
the FP8/DeepGEMM options; with NVFP4 dispatch, DeepEP gets ``use_nvfp4`` and the input
global scale. Scenario S4: the wire is whatever the host derived for the runner.
"""

from __future__ import annotations

from typing import Any

from moe_core import Wire
from moe_core.dispatch import DispatchConfig
from moe_core.errors import InputError

FP8_WIRES = (Wire.FP8, Wire.FP8_UE8M0)


def low_latency_kwargs(cfg: DispatchConfig, x_global_scale: Any = None) -> dict[str, Any]:
    """Keyword arguments of ``Buffer.low_latency_dispatch`` beyond tensors and sizes."""
    kw: dict[str, Any] = {"use_fp8": cfg.wire in FP8_WIRES}
    if cfg.wire in FP8_WIRES:
        kw.update(round_scale=cfg.round_scale, use_ue8m0=cfg.use_ue8m0)
    elif cfg.wire is Wire.NVFP4:
        if x_global_scale is None:
            raise InputError("the plan dispatches NVFP4 with the input global scale, but no "
                             "x_global_scale was given (expected a float32 tensor)")
        kw.update(use_nvfp4=True, x_global_scale=x_global_scale)
    return kw


def fp8_wire(cfg: DispatchConfig) -> bool:
    """Whether tokens travel as FP8 (DeepEP then moves ``(x_fp8, scales)``, not bf16)."""
    return cfg.wire in FP8_WIRES
