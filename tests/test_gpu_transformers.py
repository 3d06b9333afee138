"""The transformers integration on a CUDA GPU with the backends the installed plugins offer
there (run by scripts/gpu_session.sh on the device machine; results in docs/results.md)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the transformers extra is not installed")

from moe_core.integrations.transformers import TESTED_FAMILIES, apply, tiny_config  # noqa: E402
from moe_core.reference.oracle import relative_error  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: run scripts/gpu_session.sh on the device machine "
                              "(recorded in docs/results.md)"),
]
TOLERANCE = 2e-2


@pytest.mark.parametrize("family", TESTED_FAMILIES)
def test_apply_on_gpu_matches_transformers_experts(family, record_property):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config(family, experts=16, top_k=4, hidden=1024, intermediate=512)
    model = AutoModelForCausalLM.from_config(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        before = model(ids).logits.float()
    report = apply(model)
    with torch.no_grad():
        after = model(ids).logits.float()
    per_layer = report.layer_errors(model, ids)
    backends = sorted({str(r.plan.backend) for r in report.layers})
    print(f"\n{family}: backends {backends}, layer errors "
          f"{[f'{e:.1e}' for e in per_layer.values()]}, logits {relative_error(after, before):.1e}")
    assert max(per_layer.values()) < TOLERANCE
