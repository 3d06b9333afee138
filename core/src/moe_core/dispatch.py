"""What the token dispatcher is asked to do for a plan."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import A2A, MoESpec, Quant

STANDARD, CONTIGUOUS, MASKED = "standard", "contiguous", "masked"
DISPATCH_DTYPES = ("bf16", "fp8", "nvfp4")
_FP8_ACTIVATIONS = (Quant.FP8_BLOCK128, Quant.FP8_CHANNEL, Quant.FP8_TENSOR)


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """Dispatch settings of a plan.

    ``layout`` is what the runner receives: ``standard`` (tokens with their top-k),
    ``contiguous`` (rows grouped per local expert) or ``masked`` ([experts, max_tokens,
    hidden] with a count per expert). ``round_scale``/``use_ue8m0`` are FP8 options
    (DeepGEMM on SM100); ``nvfp4_global_scale`` asks for the input global scale.
    """

    mode: A2A
    layout: str
    dtype: str
    max_tokens_per_rank: int
    round_scale: bool = False
    use_ue8m0: bool = False
    nvfp4_global_scale: bool = False

    def __post_init__(self) -> None:
        if self.layout not in (STANDARD, CONTIGUOUS, MASKED):
            raise ValueError(f"dispatch layout {self.layout!r}; expected standard, contiguous or masked")
        if self.dtype not in DISPATCH_DTYPES:
            raise ValueError(f"dispatch dtype {self.dtype!r}; expected one of {DISPATCH_DTYPES}")
        if (self.round_scale or self.use_ue8m0) and self.dtype != "fp8":
            raise ValueError(f"round_scale/use_ue8m0 are FP8 dispatch options; dtype is {self.dtype!r}")
        if self.nvfp4_global_scale and self.dtype != "nvfp4":
            raise ValueError(f"nvfp4_global_scale needs nvfp4 dispatch; dtype is {self.dtype!r}")

    def describe(self) -> str:
        opts = [n for n, on in (("round_scale", self.round_scale), ("ue8m0", self.use_ue8m0),
                                ("global_scale", self.nvfp4_global_scale)) if on]
        return (f"{self.mode.value} {self.layout} {self.dtype}{'+' + '+'.join(opts) if opts else ''}"
                f" (<= {self.max_tokens_per_rank} tokens/rank)")


_LAYOUT = {A2A.NONE: STANDARD, A2A.TORCH_A2A: CONTIGUOUS,
           A2A.DEEPEP_NORMAL: CONTIGUOUS, A2A.DEEPEP_LL: MASKED}


def default_dispatch(spec: MoESpec) -> DispatchConfig:
    """The host's proposal before the chosen runner's ``configure_dispatcher`` adjusts it.

    DeepEP low-latency dispatches FP8 by default (as DeepEP does); DeepEP normal dispatches
    FP8 for layers whose activations are FP8 anyway; everything else moves BF16.
    """
    fp8 = spec.a2a is A2A.DEEPEP_LL or (
        spec.a2a is A2A.DEEPEP_NORMAL and spec.quant in _FP8_ACTIVATIONS)
    return DispatchConfig(mode=spec.a2a, layout=_LAYOUT[spec.a2a], dtype="fp8" if fp8 else "bf16",
                          max_tokens_per_rank=spec.max_tokens)
