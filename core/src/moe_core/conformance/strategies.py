"""Hypothesis strategies for layer specs: small, but with every field and awkward sizes."""

from __future__ import annotations

from hypothesis import strategies as st

from ..spec import A2A, Activation, MoESpec, Quant

# Aligned sizes kernels like, and ragged ones they must decline honestly.
_HIDDEN = st.one_of(st.sampled_from([64, 128, 256, 384]), st.integers(8, 320))
_INTER = st.one_of(st.sampled_from([32, 64, 96, 128, 256]), st.integers(4, 200))
#: The modes that move tokens between ranks (what a dispatcher serves).
MOVING = [m for m in A2A if m is not A2A.NONE]


def edge_specs(arch: str = "cpu", quant: Quant | None = None) -> list[MoESpec]:
    """Specs every kit run tries first, whatever the random draw: one aligned, two ragged.

    Random draws find ragged sizes only with some probability; a plugin that crashes on them
    must fail the kit every time, not on an unlucky seed.
    """
    q = quant or Quant.BF16
    return [MoESpec(num_experts=4, top_k=2, hidden_size=h, intermediate_size=i, quant=q, arch=arch,
                    max_tokens=64)
            for h, i in ((256, 128), (200, 96), (72, 40))]


def dispatch_edge_specs(arch: str = "cpu") -> list[MoESpec]:
    """Specs that move tokens, tried first by every kit run: each a2a mode with bf16 tokens,
    FP8 and NVFP4 tokens (formats that travel quantized), a ragged and a large hidden size,
    top-1 and all-experts routing."""
    base = MoESpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=128, tp_size=2,
                   ep_size=2, a2a=A2A.TORCH_A2A, arch=arch, max_tokens=64)
    return [*(base.replace(a2a=m) for m in MOVING),
            base.replace(quant=Quant.FP8_BLOCK128),
            base.replace(quant=Quant.FP8_BLOCK128, a2a=A2A.DEEPEP_LL),
            base.replace(quant=Quant.NVFP4, static_input_scale=True, a2a=A2A.DEEPEP_LL),
            base.replace(hidden_size=200, intermediate_size=96, top_k=1, max_tokens=8),
            base.replace(hidden_size=7168, intermediate_size=64, top_k=4,
                         quant=Quant.FP8_BLOCK128, a2a=A2A.DEEPEP_NORMAL)]


@st.composite
def specs(draw, arch: str = "cpu", quant: Quant | None = None, *, moves_tokens: bool = False) -> MoESpec:
    """A random spec; ``moves_tokens``: expert parallel over two ranks with an a2a mode."""
    moe_tp = draw(st.sampled_from([1, 2]))
    ep = 2 if moves_tokens else draw(st.sampled_from([1, 2]))
    experts = draw(st.integers(1, 4)) * ep
    activation = draw(st.sampled_from(list(Activation)))
    limit = alpha = None
    if activation is Activation.SWIGLU_LIMIT:
        limit = draw(st.sampled_from([3.0, 7.0]))
        alpha = draw(st.sampled_from([None, 1.702]))
    sbo = draw(st.booleans())
    quant = quant or draw(st.sampled_from(list(Quant)))
    if moves_tokens:
        a2a = draw(st.sampled_from(MOVING))
    else:
        a2a = A2A.NONE if ep == 1 else draw(st.sampled_from(list(A2A)))
    return MoESpec(
        num_experts=experts, top_k=draw(st.integers(1, min(experts, 4))),
        hidden_size=draw(_HIDDEN), intermediate_size=draw(_INTER) * moe_tp,
        activation=activation, quant=quant,
        swiglu_limit=limit, swiglu_alpha=alpha, has_bias=alpha is not None and draw(st.booleans()),
        # Tokens travel only in bf16 (see tokens.lossless_wires): no dispatcher is asked others.
        act_dtype="bf16" if moves_tokens else draw(st.sampled_from(["bf16", "fp32"])),
        tp_size=moe_tp * ep, ep_size=ep, rank=draw(st.integers(0, moe_tp * ep - 1)), a2a=a2a,
        arch=arch, max_tokens=draw(st.sampled_from([8, 64, 512])), sbo=sbo,
        down_gemm_overlap=sbo and draw(st.booleans()),
        static_input_scale=moves_tokens and quant is Quant.NVFP4 and draw(st.booleans()),
    )
