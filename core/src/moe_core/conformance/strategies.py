"""Hypothesis strategies for layer specs: small, but with every field and awkward sizes."""

from __future__ import annotations

from hypothesis import strategies as st

from ..spec import A2A, Activation, MoESpec, Quant

# Aligned sizes kernels like, and ragged ones they must decline honestly.
_HIDDEN = st.one_of(st.sampled_from([64, 128, 256, 384]), st.integers(8, 320))
_INTER = st.one_of(st.sampled_from([32, 64, 96, 128, 256]), st.integers(4, 200))


def edge_specs(arch: str = "cpu", quant: Quant | None = None) -> list[MoESpec]:
    """Specs every kit run tries first, whatever the random draw: one aligned, two ragged.

    Random draws find ragged sizes only with some probability; a plugin that crashes on them
    must fail the kit every time, not on an unlucky seed.
    """
    q = quant or Quant.BF16
    return [MoESpec(num_experts=4, top_k=2, hidden_size=h, intermediate_size=i, quant=q, arch=arch,
                    max_tokens=64)
            for h, i in ((256, 128), (200, 96), (72, 40))]


@st.composite
def specs(draw, arch: str = "cpu", quant: Quant | None = None) -> MoESpec:
    moe_tp = draw(st.sampled_from([1, 2]))
    ep = draw(st.sampled_from([1, 2]))
    experts = draw(st.integers(1, 4)) * ep
    activation = draw(st.sampled_from(list(Activation)))
    limit = alpha = None
    if activation is Activation.SWIGLU_LIMIT:
        limit = draw(st.sampled_from([3.0, 7.0]))
        alpha = draw(st.sampled_from([None, 1.702]))
    sbo = draw(st.booleans())
    return MoESpec(
        num_experts=experts, top_k=draw(st.integers(1, min(experts, 4))),
        hidden_size=draw(_HIDDEN), intermediate_size=draw(_INTER) * moe_tp,
        activation=activation, quant=quant or draw(st.sampled_from(list(Quant))),
        swiglu_limit=limit, swiglu_alpha=alpha, has_bias=alpha is not None and draw(st.booleans()),
        act_dtype=draw(st.sampled_from(["bf16", "fp32"])), tp_size=moe_tp * ep, ep_size=ep,
        rank=draw(st.integers(0, moe_tp * ep - 1)),
        a2a=A2A.NONE if ep == 1 else draw(st.sampled_from(list(A2A))), arch=arch,
        max_tokens=draw(st.sampled_from([8, 64, 512])), sbo=sbo,
        down_gemm_overlap=sbo and draw(st.booleans()),
    )
