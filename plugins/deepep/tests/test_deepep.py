"""DeepEP's declared constraints, and its call arguments as data (S3, S4), on CPU.

``deep_ep`` is never importable here; tests that need the plugin to say "yes" assume it
installed (as ``moe explain --assume-installed deep_ep`` does), and nothing here builds a
DeepEP buffer.
"""

from __future__ import annotations

import pytest
import torch

import moe_plugin_deepep as plugin
from moe_core import A2A, Host, Layout, MoESpec, Reason, Wire, assume_installed
from moe_core.dispatch import DispatchConfig
from moe_core.errors import InputError
from moe_core.registry import Registry
from moe_plugin_deepep.args import low_latency_kwargs

SPEC = MoESpec(num_experts=64, top_k=8, hidden_size=7168, intermediate_size=2048, tp_size=8,
               ep_size=8, a2a="deepep_ll", arch="sm90", max_tokens=128)


@pytest.fixture
def deep_ep_present():
    with assume_installed("deep_ep"):
        yield


def host():
    reg = Registry.builtin()
    reg.register(plugin, "deepep")
    return Host(reg)


def cfg(spec=SPEC, **kw):
    base = dict(mode=spec.a2a, layout="masked" if spec.a2a is A2A.DEEPEP_LL else "contiguous",
                wire="bf16", max_tokens_per_rank=spec.max_tokens)
    return DispatchConfig(**{**base, **kw})


def verdicts(spec, dispatch):
    """The dispatcher trace the host builds for (spec, dispatch), by variant."""
    h = host()
    return {c.variant: c for c in h._dispatchers_for(spec, dispatch, [], h.env.current())
            if c.plugin == "deepep"}


def test_without_deep_ep_both_variants_say_so_and_torch_takes_over():
    v = verdicts(SPEC, cfg())
    assert v["low_latency"].code is Reason.DEPENDENCY_MISSING and "deep_ep" in v["low_latency"].reason
    plan = host().resolve(SPEC)
    assert str(plan.dispatcher) == "torch:all_to_all"
    assert any(str(c.backend) == "deepep:low_latency" and "deep_ep" in c.reason for c in plan.dispatchers)


def test_low_latency_serves_the_masked_decode_path(deep_ep_present):
    v = verdicts(SPEC, cfg())
    assert v["low_latency"].supported and not v["normal"].supported
    assert v["normal"].code is Reason.MODE_UNSUPPORTED
    assert "serves a2a deepep_normal" in v["normal"].reason
    assert str(host().resolve(SPEC).dispatcher) == "deepep:low_latency"


@pytest.mark.parametrize("change, expect", [
    (dict(hidden_size=3000), "hidden 3000 is not one of the low-latency kernels' sizes"),
    (dict(max_tokens=2048), "max dispatch tokens per rank 2048 > 1024"),
    (dict(arch="cpu"), "needs an NVIDIA GPU"),
    (dict(tp_size=16), "split by EP alone"),
])
def test_low_latency_limits_are_declared(deep_ep_present, change, expect):
    spec = SPEC.replace(**change)
    v = verdicts(spec, cfg(spec))["low_latency"]
    assert not v.supported and expect in v.reason
    # ... and the layer still resolves, through the torch dispatcher where it can.
    res = host().explain(spec)
    if res.plan is not None:
        assert str(res.plan.dispatcher) == "torch:all_to_all"


@pytest.mark.parametrize("ep, ok", [(2, True), (4, True), (8, True), (6, False), (16, True),
                                    (24, False), (32, True)])
def test_normal_mode_rank_counts(deep_ep_present, ep, ok):
    spec = SPEC.replace(tp_size=ep, ep_size=ep, num_experts=96, a2a="deepep_normal")
    assert verdicts(spec, cfg(spec))["normal"].supported is ok


def test_normal_mode_does_not_deliver_the_masked_layout_or_nvfp4(deep_ep_present):
    spec = SPEC.replace(a2a="deepep_normal")
    masked = verdicts(spec, cfg(spec, layout="masked"))["normal"]
    assert masked.code is Reason.LAYOUT_UNSUPPORTED and "delivers the standard/contiguous layout" in masked.reason
    nvfp4 = verdicts(spec, cfg(spec, wire="nvfp4", deliver_quantized=True))["normal"]
    assert nvfp4.code is Reason.WIRE_UNSUPPORTED and "moves bf16/fp8/fp8_ue8m0" in nvfp4.reason


# -- S3 / S4: what DeepEP is told ---------------------------------------------------------
def test_bf16_dispatch_gets_no_fp8_options():
    """S3: a kernel that quantizes internally gets BF16 tokens and no round_scale/use_ue8m0."""
    assert low_latency_kwargs(cfg()) == {"use_fp8": False}


def test_fp8_dispatch_passes_the_runners_scale_options():
    kw = low_latency_kwargs(cfg(wire=Wire.FP8_UE8M0))
    assert kw == {"use_fp8": True, "round_scale": True, "use_ue8m0": True}
    assert low_latency_kwargs(cfg(wire="fp8")) == {"use_fp8": True, "round_scale": False,
                                                   "use_ue8m0": False}


def test_nvfp4_dispatch_passes_the_input_global_scale():
    scale = torch.tensor([0.5])
    kw = low_latency_kwargs(cfg(wire="nvfp4", deliver_quantized=True), scale)
    assert kw.keys() == {"use_fp8", "use_nvfp4", "x_global_scale"} and kw["x_global_scale"] is scale
    assert kw["use_fp8"] is False and kw["use_nvfp4"] is True
    with pytest.raises(InputError, match="no x_global_scale was given"):
        low_latency_kwargs(cfg(wire="nvfp4", deliver_quantized=True))


def test_the_plan_wire_reaches_deepep_unchanged(deep_ep_present):
    """S4: the host derives the wire from the runner's declarations; the dispatcher obeys. The
    reference takes bf16 only, so a forced reference moves bf16 even for an fp8 layer."""
    for quant in ("bf16", "fp8_block128"):
        plan = host().resolve(SPEC.replace(quant=quant))
        assert str(plan.dispatcher) == "deepep:low_latency" and plan.dispatch.wire is Wire.BF16
        assert low_latency_kwargs(plan.dispatch) == {"use_fp8": False}
    fp8 = DispatchConfig(A2A.DEEPEP_LL, Layout.MASKED, Wire.FP8, 128)
    assert low_latency_kwargs(fp8)["use_fp8"] is True


# -- v1.2.1's limits, read from its sources (#15) -------------------------------------------
@pytest.mark.parametrize("change, wire, code, expect", [
    (dict(hidden_size=3072), "bf16", Reason.SHAPE_UNSUPPORTED, "hidden 3072 is not one of"),  # not in v1.2.1
    (dict(top_k=12, num_experts=64), "bf16", Reason.SHAPE_UNSUPPORTED, "top-k 12 > 11"),
    (dict(max_tokens=1025), "bf16", Reason.LIMIT_EXCEEDED, "1025 > 1024"),
    (dict(max_tokens=3, tp_size=2, ep_size=2), "bf16", Reason.SHAPE_UNALIGNED,
     "ep_size 2 x 3 tokens per rank is not a multiple of 4"),
])
def test_low_latency_v1_2_1_limits(deep_ep_present, change, wire, code, expect):
    spec = SPEC.replace(**change)
    v = verdicts(spec, cfg(spec, wire=wire))["low_latency"]
    assert not v.supported and v.code is code and expect in v.reason


@pytest.mark.parametrize("hidden", [2048, 2560, 4096, 5120, 6144, 7168, 8192])
def test_every_low_latency_hidden_size_takes_fp8_and_11_experts_per_token(deep_ep_present, hidden):
    spec = SPEC.replace(hidden_size=hidden, top_k=11)
    for wire in ("bf16", "fp8"):
        assert verdicts(spec, cfg(spec, wire=wire))["low_latency"].supported


@pytest.mark.parametrize("hidden, wire, ok", [(7168, "fp8", True), (1032, "bf16", True),
                                              (1032, "fp8", False), (20480, "fp8", False)])
def test_normal_mode_row_alignment_and_scale_groups(deep_ep_present, hidden, wire, ok):
    spec = SPEC.replace(a2a="deepep_normal", hidden_size=hidden)
    v = verdicts(spec, cfg(spec, wire=wire))["normal"]
    assert v.supported is ok, v.reason


# -- internode declarations: rank counts, buffer sizing, the queue-pair rule ----------------
from moe_plugin_deepep import sizing  # noqa: E402
from moe_plugin_deepep.constraints import buffer_bytes  # noqa: E402


@pytest.mark.parametrize("ep", [16, 32, 64, 128, 144, 160])
def test_internode_rank_counts_have_dispatch_and_combine_configs(deep_ep_present, ep):
    """8 GPUs per node times 2/4/8/16/18/20 nodes: each has DeepEP's tuned configs, an RDMA
    buffer (0 within a node) and fits the host assertions on the buffer sizes."""
    spec = SPEC.replace(tp_size=ep, ep_size=ep, num_experts=2 * ep * 8, a2a="deepep_normal")
    assert verdicts(spec, cfg(spec))["normal"].supported
    nvl, rdma = buffer_bytes("normal", spec, cfg(spec))
    assert nvl > 0 and rdma > 0 and nvl % 128 == rdma % 128 == 0 and rdma < 2**31
    assert buffer_bytes("normal", spec.replace(tp_size=8, ep_size=8), cfg(spec))[1] == 0


def test_nvl_and_rdma_hints_by_hand():
    """v1.2.1's formulas, worked by hand for DeepSeek-V3's hidden 7168 (bf16 rows)."""
    per_token = 7168 * 2 + 8 + 128 * 8 + 128 * 4 + 128 * 4  # x, source meta, top-k ids/weights, scales
    c = sizing.DISPATCH_CONFIG[8]  # 10 channels, 256 tokens per NVLink receive chunk
    nvl = 10 * 8 * (2 * 1 + 3) * 4 + 10 * 8 * 256 * per_token
    assert sizing.nvl_bytes(c, 7168 * 2, 8) == -(-nvl // 128) * 128
    c16 = sizing.DISPATCH_CONFIG[16]  # 2 nodes: 20 tokens per RDMA receive chunk
    rdma = 10 * 2 * (8 * 2 + 2) * 2 * 4 + 10 * 2 * 128 * (per_token + 16) * 2
    assert sizing.rdma_bytes(c16, 7168 * 2, 16) == -(-rdma // 128) * 128
    assert sizing.rdma_bytes(c, 7168 * 2, 8) == 0


def test_low_latency_rdma_hint_by_hand():
    """128 tokens per rank, hidden 7168, 2 ranks, 256 experts (DeepEP's own test shape)."""
    dispatch_msg = 16 + max(7168 * 2, 7168 + 56 * 4)
    combine_msg = 56 * 4 + 7168 * 2
    send = max(128 * dispatch_msg, 256 * 128 * combine_msg)
    recv = 256 * 128 * max(dispatch_msg, combine_msg)
    total = 2 * (send + recv + 1024)  # 256 experts x 4 bytes of signals, 128-aligned
    assert sizing.low_latency_bytes(128, 7168, 2, 256) == (total + 128) // 128 * 128
    assert sizing.low_latency_bytes(128, 7168, 2, 256) / 2**30 == pytest.approx(1.78, abs=0.01)


@pytest.mark.parametrize("experts, ep, qps", [(256, 2, 128), (256, 8, 32), (16, 2, 8), (8, 8, 1)])
def test_queue_pairs_one_per_local_expert(experts, ep, qps):
    assert sizing.qps_per_rank(experts // ep) == qps


def test_buffer_sizes_deepep_would_refuse():
    assert sizing.buffer_limits(100, 0, False) and "multiples of 128" in sizing.buffer_limits(100, 0, False)
    assert "2^31" in sizing.buffer_limits(2**31, 128, False)
    assert "normal-mode RDMA" in sizing.buffer_limits(0, 2**31, False)
    assert sizing.buffer_limits(0, 2**33, True) is None  # low-latency RDMA buffers may be larger


def test_a_yes_says_how_much_memory_the_buffers_hold(deep_ep_present):
    v = verdicts(SPEC, cfg())["low_latency"]
    assert v.supported and "GiB per rank" in v.reason
