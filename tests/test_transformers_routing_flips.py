"""Why a DeepSeek-V3-family model's logits under moe_core differ from grouped_mm's by a few
1e-2 at 128+ tokens (H200, 2026-12-01, benchmarks/transformers_bench.py), while one layer
agrees to bf16 rounding: the second layer's router, fed first-layer outputs that differ by
rounding, picks another top-8 for a few tokens. transformers' own eager experts do the same,
so the gap is the routing's sensitivity, not an implementation's error. This pins that down
on a CPU (the same family at H 512, I 256, 64 experts, 128 one-token sequences)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from moe_core.reference.oracle import relative_error  # noqa: E402

IMPLS = ("grouped_mm", "eager", "moe_core")


def _run(layers: int):
    import transformers

    import moe_core.integrations.transformers as moe_tf

    torch.manual_seed(0)
    cfg = moe_tf.tiny_config("deepseek_v3", layers=layers, experts=64, top_k=8, hidden=512, intermediate=256)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (128, 1), generator=torch.Generator().manual_seed(128))
    gates = [m for n, m in model.named_modules() if n.endswith("mlp.gate")]
    out = {}
    for impl in IMPLS:
        model.set_experts_implementation(impl)
        logits_in: dict[int, torch.Tensor] = {}
        hooks = [g.register_forward_hook(
            lambda m, i, o, k=k: logits_in.__setitem__(k, (o[0] if isinstance(o, tuple) else o).float()))
            for k, g in enumerate(gates)]
        with torch.no_grad():
            out[impl] = (model(ids, use_cache=False).logits.float(), logits_in)
        for h in hooks:
            h.remove()

    def top8(k, router_logits):  # the experts each token's scores pick (no group limit)
        return (router_logits.sigmoid() + gates[k].e_score_correction_bias.float()).topk(8, -1).indices.sort(-1).values

    ref_logits, ref_router = out["grouped_mm"]
    errors = {i: relative_error(out[i][0], ref_logits) for i in IMPLS}
    flips = {i: [int((top8(k, out[i][1][k]) != top8(k, ref_router[k])).any(-1).sum()) for k in ref_router]
             for i in IMPLS}
    return errors, flips


def test_one_layer_agrees_two_layers_differ_only_where_the_routing_flips():
    errors, flips = _run(1)
    assert flips["moe_core"] == flips["eager"] == [0]
    assert errors["moe_core"] < 1e-2 and errors["eager"] < 1e-2, errors
    errors, flips = _run(2)
    print(errors, flips)
    # the first router sees the same embeddings; the second flips some tokens for both
    assert flips["moe_core"][0] == flips["eager"][0] == 0
    assert flips["moe_core"][1] > 0 and flips["eager"][1] > 0, flips
    # and moe_core is no further from grouped_mm than transformers' own eager experts, give or take
    assert errors["moe_core"] < 1.5 * errors["eager"], errors
