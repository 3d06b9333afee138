"""How tokens reach a runner: the token layouts, the wire formats, and what each a2a mode
hands the runner. Declared here once; the host derives every plan's dispatch settings
from these facts and the variants' declarations (:class:`moe_core.Variant`)."""

from __future__ import annotations

from enum import StrEnum

from .spec import A2A, MoESpec, Quant


class Layout(StrEnum):
    """What a runner is called with (see :mod:`moe_core.ep` for each layout's contract)."""

    #: ``x [T, H]`` with its ``topk_weights``/``topk_ids``: the runner routes and weights.
    STANDARD = "standard"
    #: rows ``[N, H]`` grouped per local expert, ``offsets [E_local + 1]``; no weighting.
    CONTIGUOUS = "contiguous"
    #: ``[E_local, M, H]`` with ``masked_m [E_local]`` valid rows per expert; no weighting.
    MASKED = "masked"


class Wire(StrEnum):
    """The format tokens travel in between expert-parallel ranks."""

    BF16 = "bf16"
    #: e4m3 in 1x128 groups along the hidden size, fp32 scales (DeepGEMM on SM90).
    FP8 = "fp8"
    #: the same with power-of-two (UE8M0) scales, rounded (DeepGEMM on SM100).
    FP8_UE8M0 = "fp8_ue8m0"
    #: e2m1 in 16-element blocks with e4m3 block scales and the checkpoint's global scale.
    NVFP4 = "nvfp4"

    @property
    def quantized(self) -> bool:
        return self is not Wire.BF16

    @property
    def dequantizable(self) -> bool:
        """Whether a dispatcher can hand the runner these tokens in the activation dtype. FP8
        can be dequantized row by row; NVFP4's global scale belongs to the runner's kernels,
        so NVFP4 arrives only as the wire tensors (``Dispatched.quantized``)."""
        return self is not Wire.NVFP4


#: What each a2a mode hands the runner. A dispatcher that serves a mode keeps this contract,
#: whichever plugin it comes from (``torch:all_to_all`` stands in for DeepEP's modes).
MODE_LAYOUTS: dict[A2A, tuple[Layout, ...]] = {
    A2A.NONE: (Layout.STANDARD,),
    A2A.TORCH_A2A: (Layout.STANDARD, Layout.CONTIGUOUS, Layout.MASKED),
    A2A.DEEPEP_NORMAL: (Layout.STANDARD, Layout.CONTIGUOUS),
    A2A.DEEPEP_LL: (Layout.MASKED,),
}


#: The layouts in which a runner can take the wire tensors themselves (a dispatcher that
#: hands over the standard layout dequantizes: the runner routes those rows itself).
QUANTIZED_LAYOUTS = (Layout.CONTIGUOUS, Layout.MASKED)


def quantized_delivery(layout: Layout, wire: Wire, quantized_input: bool) -> bool | None:
    """Whether tokens moved as ``wire`` reach a runner in ``layout`` as the wire tensors
    (True) or dequantized (False); None when they cannot reach it at all.

    ``quantized_input`` is the runner's one declaration (``Variant(quantized_input=)``): it
    consumes quantized tokens and their scales, so a dispatcher must not dequantize them.
    """
    if not wire.quantized:
        return False
    if quantized_input and layout in QUANTIZED_LAYOUTS:
        return True
    return False if wire.dequantizable else None


def lossless_wires(spec: MoESpec) -> tuple[Wire, ...]:
    """The wire formats that change nothing a layer of ``spec``'s format computes.

    An fp8_block128 layer quantizes its activations in exactly FP8's 1x128 groups, and an
    NVFP4 layer with a static input scale quantizes them to NVFP4 with that scale, so moving
    them quantized loses nothing; every other layer moves its activations as they are.
    UE8M0 re-rounds the scales, so it is never lossless against the reference.
    """
    if spec.act_dtype != "bf16":
        return ()
    if spec.quant is Quant.FP8_BLOCK128:
        return (Wire.FP8, Wire.BF16)
    if spec.quant is Quant.NVFP4 and spec.static_input_scale:
        return (Wire.NVFP4, Wire.BF16)
    return (Wire.BF16,)
