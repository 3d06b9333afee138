"""What the token dispatcher is asked to do for a plan (derived by the host, see
:mod:`moe_core.tokens` for the facts it is derived from)."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import A2A
from .tokens import Layout, Wire


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """Dispatch settings of a plan: the a2a mode, the layout the runner receives, the wire
    format, the most tokens a rank sends per forward, and whether the runner receives the
    wire tensors themselves (``Dispatched.quantized``) instead of dequantized ``x``.

    ``deliver_quantized`` is derived by the host (:func:`moe_core.tokens.quantized_delivery`,
    the one place that decides it); a config contradicting it is refused here.
    """

    mode: A2A
    layout: Layout
    wire: Wire
    max_tokens_per_rank: int
    deliver_quantized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", A2A(self.mode))
        object.__setattr__(self, "layout", Layout(self.layout))
        object.__setattr__(self, "wire", Wire(self.wire))
        if not self.deliver_quantized and not self.wire.dequantizable:
            raise ValueError(f"the {self.wire} wire cannot be dequantized: expected "
                             "deliver_quantized=True (see moe_core.tokens.quantized_delivery)")
        if self.deliver_quantized and not self.wire.quantized:
            raise ValueError(f"deliver_quantized with the {self.wire} wire: there is nothing "
                             "quantized to deliver (expected a quantized wire, e.g. fp8)")

    @property
    def round_scale(self) -> bool:
        """FP8 scales rounded to powers of two (DeepEP's ``round_scale``)."""
        return self.wire is Wire.FP8_UE8M0

    @property
    def use_ue8m0(self) -> bool:
        """FP8 scales delivered packed as UE8M0 exponents (DeepEP's ``use_ue8m0``)."""
        return self.wire is Wire.FP8_UE8M0

    @property
    def quantized(self) -> bool:
        return self.wire.quantized

    def describe(self) -> str:
        kept = " kept quantized" if self.deliver_quantized else ""
        return (f"{self.mode.value} {self.layout.value} {self.wire.value}{kept} "
                f"(<= {self.max_tokens_per_rank} tokens/rank)")

    def to_dict(self) -> dict:
        return {"mode": self.mode.value, "layout": self.layout.value, "wire": self.wire.value,
                "max_tokens_per_rank": self.max_tokens_per_rank,
                "deliver_quantized": self.deliver_quantized}
