"""DeepEP call arguments derived from a plan's dispatch config: pure data, tested on CPU.

Scenario S3: a runner that quantizes internally (CuTe-DSL) gets BF16 dispatch and none of
the FP8/DeepGEMM options; with NVFP4 dispatch, DeepEP gets ``use_nvfp4`` and the input
global scale. Scenario S4: the dtype is whatever the runner's ``configure_dispatcher`` set.
"""

from __future__ import annotations

from typing import Any

from moe_core.dispatch import DispatchConfig
from moe_core.errors import InputError


def low_latency_kwargs(cfg: DispatchConfig, x_global_scale: Any = None) -> dict[str, Any]:
    """Keyword arguments of ``Buffer.low_latency_dispatch`` beyond tensors and sizes."""
    kw: dict[str, Any] = {"use_fp8": cfg.dtype == "fp8"}
    if cfg.dtype == "fp8":
        kw.update(round_scale=cfg.round_scale, use_ue8m0=cfg.use_ue8m0)
    elif cfg.dtype == "nvfp4":
        kw["use_nvfp4"] = True
        if cfg.nvfp4_global_scale:
            if x_global_scale is None:
                raise InputError("the plan dispatches NVFP4 with the input global scale, but no "
                                 "x_global_scale was given (expected a float32 tensor)")
            kw["x_global_scale"] = x_global_scale
    return kw


def normal_fp8(cfg: DispatchConfig) -> bool:
    """Normal mode moves FP8 by receiving ``(x_fp8, scales)`` instead of a bf16 tensor."""
    return cfg.dtype == "fp8"
