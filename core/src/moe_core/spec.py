"""The layer spec: one frozen, hashable description of one MoE layer on one rank.

Every decision (which backend, how weights are laid out, what the dispatcher sends,
whether overlap is on) is derived from a spec once, at load, by resolution.

Parallel layout follows the engines' convention (SGLang's ``--tp/--ep``): the layer spans
``tp_size`` ranks; ``ep_size`` of them split the experts and the remaining factor
``moe_tp_size = tp_size // ep_size`` splits the intermediate dimension.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .arch import check_arch, detect_arch, sm_version
from .errors import SpecError


class Activation(StrEnum):
    """The expert activation. Gated ones read ``[gate | up]`` halves of the w13 output."""

    SILU_GATED = "silu_gated"
    #: clamp(gate, max=limit), clamp(up, ±limit); then silu(gate)*up when ``swiglu_alpha``
    #: is None (DeepSeek-V4 style) or gate*sigmoid(alpha*gate)*(up+1) (gpt-oss style).
    SWIGLU_LIMIT = "swiglu_limit"
    GELU_GATED = "gelu_gated"  # tanh approximation (gelu_pytorch_tanh)
    RELU2 = "relu2"  # non-gated: relu(up)**2

    @property
    def gated(self) -> bool:
        return self is not Activation.RELU2


class Quant(StrEnum):
    """Weight format, which also fixes the activation format (see ``quant.formats``)."""

    BF16 = "bf16"
    FP8_BLOCK128 = "fp8_block128"  # 128x128 weight blocks, 1x128 per-token-group activations
    FP8_TENSOR = "fp8_tensor"  # one scale per expert matrix, per-tensor activations
    FP8_CHANNEL = "fp8_channel"  # one scale per output row, per-token activations
    NVFP4 = "nvfp4"  # e2m1, 16-element blocks, e4m3 block scale, fp32 global scale
    MXFP4 = "mxfp4"  # e2m1, 32-element blocks, e8m0 block scale; bf16 activations


class A2A(StrEnum):
    """How tokens reach the ranks that own their experts."""

    NONE = "none"
    DEEPEP_NORMAL = "deepep_normal"
    DEEPEP_LL = "deepep_ll"
    TORCH_A2A = "torch_a2a"


class Regime(StrEnum):
    DECODE = "decode"
    PREFILL = "prefill"


#: Up to this many tokens per rank per forward, a spec is in the decode regime.
DECODE_MAX_TOKENS = 256

_ACT_DTYPES = ("bf16", "fp16", "fp32")


def _enum(cls: type[StrEnum], name: str, value: Any) -> StrEnum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise SpecError(name, f"{value!r} is not one of: {choices}") from None


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(name, f"expected a positive integer, got {value!r}")


def _flag(name: str, value: Any) -> None:
    # bool("false") is True: a string here would silently switch the feature on.
    if not isinstance(value, bool):
        raise SpecError(name, f"expected True or False, got {value!r}")


def _positive_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise SpecError(name, f"expected a positive finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class MoESpec:
    """One MoE layer on one rank. Build it in code, or with :func:`moe_core.spec_for_model`.

    Sizes are the model's global sizes; per-rank sizes are properties
    (``local_experts``, ``intermediate_per_partition``). ``hidden_size`` is the dimension
    the experts see (a model's ``moe_latent_size`` where it has one).
    """

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    activation: Activation = Activation.SILU_GATED
    quant: Quant = Quant.BF16
    swiglu_limit: float | None = None
    swiglu_alpha: float | None = None
    has_bias: bool = False
    act_dtype: str = "bf16"
    tp_size: int = 1
    ep_size: int = 1
    rank: int = 0
    a2a: A2A = A2A.NONE
    arch: str = "cpu"
    max_tokens: int = 4096
    #: The plan is chosen for calls of more than this many tokens: one tier of a layer that
    #: holds a plan per token range (the tuning objective scores runners over ``(min_tokens,
    #: max_tokens]``; 0: over its regime's range, decode 1 to ``max_tokens``, prefill above
    #: the decode limit). It never limits what the plan runs: a smaller call is computed
    #: correctly. ``for_tokens`` resizes a spec and drops it.
    min_tokens: int = 0
    #: Override of the token regime; None derives it from ``max_tokens`` (see
    #: :attr:`token_regime`), so ``replace(max_tokens=...)`` never leaves it stale.
    regime: Regime | None = None
    sbo: bool = False
    down_gemm_overlap: bool = False
    #: The checkpoint carries a static activation scale (e.g. NVFP4 ``input_global_scale``),
    #: so tokens can be quantized before dispatch instead of inside the expert kernel.
    static_input_scale: bool = False
    #: Display only: two models with the same layer shape share one spec (and one plan).
    model: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "activation", _enum(Activation, "activation", self.activation))
        set_(self, "quant", _enum(Quant, "quant", self.quant))
        set_(self, "a2a", _enum(A2A, "a2a", self.a2a))
        set_(self, "arch", detect_arch() if str(self.arch).strip().lower() == "auto"
             else check_arch(self.arch))
        for name in ("has_bias", "sbo", "down_gemm_overlap", "static_input_scale"):
            _flag(name, getattr(self, name))
        for name in ("num_experts", "top_k", "hidden_size", "intermediate_size",
                     "tp_size", "ep_size", "max_tokens"):
            _positive(name, getattr(self, name))
        if self.regime is not None:
            set_(self, "regime", _enum(Regime, "regime", self.regime))
        if (not isinstance(self.min_tokens, int) or isinstance(self.min_tokens, bool)
                or not 0 <= self.min_tokens < self.max_tokens):
            raise SpecError("min_tokens", f"{self.min_tokens!r}: expected an int in [0, max_tokens="
                            f"{self.max_tokens})")
        if self.act_dtype not in _ACT_DTYPES:
            raise SpecError("act_dtype", f"{self.act_dtype!r} is not one of: {', '.join(_ACT_DTYPES)}")
        if self.top_k > self.num_experts:
            raise SpecError("top_k", f"{self.top_k} exceeds num_experts {self.num_experts}")
        if self.tp_size % self.ep_size:
            raise SpecError(
                "ep_size",
                f"{self.ep_size} does not divide tp_size {self.tp_size}: the layer spans tp_size "
                "ranks and ep_size of them split the experts (expected a divisor of tp_size)",
            )
        if self.num_experts % self.ep_size:
            raise SpecError(
                "ep_size",
                f"{self.ep_size} does not divide num_experts {self.num_experts} "
                f"(expected a divisor of {self.num_experts})",
            )
        moe_tp = self.tp_size // self.ep_size
        if self.intermediate_size % moe_tp:
            raise SpecError(
                "tp_size",
                f"moe_tp_size {moe_tp} (tp_size {self.tp_size} / ep_size {self.ep_size}) does not "
                f"divide intermediate_size {self.intermediate_size} "
                f"(expected a divisor of {self.intermediate_size})",
            )
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.tp_size:
            raise SpecError("rank", f"{self.rank!r} is not in [0, tp_size={self.tp_size})")
        if self.activation is Activation.SWIGLU_LIMIT:
            if self.swiglu_limit is None:
                raise SpecError("swiglu_limit", "activation swiglu_limit needs a positive clamp limit")
            for name in ("swiglu_limit", "swiglu_alpha"):
                if getattr(self, name) is not None:
                    _positive_finite(name, getattr(self, name))
        elif self.swiglu_limit is not None or self.swiglu_alpha is not None:
            raise SpecError(
                "swiglu_limit",
                f"a clamp limit/alpha only applies to activation 'swiglu_limit', not {self.activation.value!r}",
            )
        if self.down_gemm_overlap and not self.sbo:
            raise SpecError("down_gemm_overlap", "down-GEMM overlap is part of single-batch overlap; "
                            "it needs sbo=True")
        if self.a2a is not A2A.NONE and self.ep_size == 1:
            raise SpecError(
                "a2a",
                f"{self.a2a.value!r} moves tokens between expert-parallel ranks, but ep_size is 1 "
                "(expected a2a 'none' or ep_size > 1)",
            )

    # -- per-rank sizes -------------------------------------------------------------
    @property
    def moe_tp_size(self) -> int:
        return self.tp_size // self.ep_size

    @property
    def ep_rank(self) -> int:
        return self.rank // self.moe_tp_size

    @property
    def moe_tp_rank(self) -> int:
        return self.rank % self.moe_tp_size

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.ep_size

    def rows_per_local_expert(self, tokens: int) -> float:
        """Rows one of this rank's experts expects when each rank routes ``tokens`` tokens
        (uniform routing): with an a2a dispatcher a rank receives every rank's slots for its
        experts, ``tokens * top_k * ep / num_experts``; without one (a2a none) every rank runs
        the same tokens and keeps its own slots, ``tokens * top_k / num_experts``."""
        ranks = self.ep_size if self.a2a is not A2A.NONE else 1
        return tokens * self.top_k * ranks / self.num_experts

    @property
    def first_expert(self) -> int:
        """Global id of this rank's first expert; its experts are contiguous."""
        return self.ep_rank * self.local_experts

    @property
    def intermediate_per_partition(self) -> int:
        return self.intermediate_size // self.moe_tp_size

    @property
    def w13_rows(self) -> int:
        """Rows of the canonical w13: ``2 * intermediate_per_partition`` when gated."""
        return self.intermediate_per_partition * (2 if self.activation.gated else 1)

    # -- facts plugins ask about ---------------------------------------------------
    @property
    def token_regime(self) -> Regime:
        """Decode (<= 256 tokens per rank) or prefill, unless ``regime`` overrides it."""
        if self.regime is not None:
            return self.regime
        return Regime.DECODE if self.max_tokens <= DECODE_MAX_TOKENS else Regime.PREFILL

    @property
    def sm(self) -> int | None:
        """NVIDIA compute capability as an int (90, 100, ...), None elsewhere."""
        return sm_version(self.arch)

    @property
    def is_nvidia(self) -> bool:
        return self.sm is not None

    @property
    def quantized(self) -> bool:
        return self.quant is not Quant.BF16

    def tokens_range(self) -> str:
        """``tokens<=256``, or ``tokens 17-256`` for a tier above ``min_tokens``."""
        if self.min_tokens:
            return f"tokens {self.min_tokens + 1}-{self.max_tokens}"
        return f"tokens<={self.max_tokens}"

    def for_tokens(self, tokens: int) -> "MoESpec":
        """This layer resolved for calls of up to ``tokens`` tokens and no tier (what a
        measurement at ``tokens`` resolves)."""
        return dataclasses.replace(self, max_tokens=tokens, min_tokens=0)

    def replace(self, **changes: Any) -> "MoESpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(
            local_experts=self.local_experts,
            intermediate_per_partition=self.intermediate_per_partition,
            moe_tp_size=self.moe_tp_size,
            ep_rank=self.ep_rank,
            token_regime=self.token_regime,
        )
        return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in d.items()}

    def describe(self) -> str:
        act = self.activation.value
        if self.swiglu_limit is not None:
            act += f"(limit={self.swiglu_limit:g}" + (
                f", alpha={self.swiglu_alpha:g})" if self.swiglu_alpha is not None else ")")
        overlap = " sbo" if self.sbo else ""
        overlap += " down-gemm-overlap" if self.down_gemm_overlap else ""
        overlap += " static-input-scale" if self.static_input_scale else ""
        return (
            f"E={self.num_experts} ({self.local_experts} local) top{self.top_k} "
            f"H={self.hidden_size} I={self.intermediate_size} ({self.intermediate_per_partition}/rank) "
            f"{act} {self.quant.value} tp{self.tp_size} ep{self.ep_size} a2a={self.a2a.value} "
            f"{self.arch} {self.tokens_range()} ({self.token_regime.value}){overlap}"
        )
