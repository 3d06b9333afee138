"""CUDA graphs of a loaded layer: who may be captured (declared graph_safe, on CUDA), and on
the GPU, replays that equal eager calls for every token count, padded counts included."""

from __future__ import annotations

import pytest
import torch

from moe_core import MoESpec, Variant, Verdict
from moe_core.activations import apply_activation
from moe_core.errors import GraphError, InputError
from moe_core.graphs import token_buckets
from moe_core.synthetic import random_inputs, random_weights

from conftest import host_with, make_plugin

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


class DenseRunner:
    """Every local expert on every token, masked by the routing: no host sync, no shape
    from data, so it may declare graph_safe (tests only; slow by design)."""

    def __init__(self, plan, weights):
        self.spec, self.w = plan.spec, weights

    def __call__(self, x, topk_weights, topk_ids):
        s, out = self.spec, torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in range(s.local_experts):
            h = x.float() @ self.w.w13[e].float().T
            y = apply_activation(s, h) @ self.w.w2[e].float().T
            gate = ((topk_ids == s.first_expert + e) * topk_weights.float()).sum(1)
            out += y * gate[:, None]
        return out.to(x.dtype)


def _host(graph_safe=True):
    plugin = make_plugin([Variant("dense", 90, graph_safe=graph_safe)],
                         lambda spec: [Verdict.yes("dense")], runner=DenseRunner)
    return host_with(("dense", plugin))


def _spec(arch="cpu", **kw):
    if arch == "auto":
        from moe_core.arch import detect_arch

        arch = detect_arch()
    return MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, max_tokens=64,
                   arch=arch, **kw)


def _cuda_layer(spec):
    host = _host()
    return host.load(host.resolve(spec), random_weights(spec, device="cuda"))


def test_the_plan_carries_the_declaration():
    assert _host().resolve(_spec()).graph_safe is True
    assert _host(graph_safe=False).resolve(_spec()).graph_safe is False
    assert _host().resolve(_spec(), force="reference").to_dict()["graph_safe"] is False


def test_a_runner_that_does_not_declare_it_is_refused():
    host = _host(graph_safe=False)
    spec = _spec()
    layer = host.load(host.resolve(spec), random_weights(spec))
    with pytest.raises(GraphError, match="graph_safe"):
        layer.graphed([4])


def test_a_cpu_layer_is_refused():
    host = _host()
    spec = _spec()
    layer = host.load(host.resolve(spec), random_weights(spec))
    with pytest.raises(GraphError, match="CUDA device"):
        layer.graphed([4])


@pytest.mark.parametrize("counts", [[], [0], [65], [2.0], [True]])
def test_token_counts_must_lie_in_the_plan(counts):
    with pytest.raises(GraphError, match=r"\[1, 64\]"):
        token_buckets(counts, 64)


def test_token_counts_are_sorted_and_distinct():
    assert token_buckets([8, 1, 8, 4], 64) == (1, 4, 8)


def test_moe_run_refuses_before_building_weights(capsys):
    from click.testing import CliRunner

    from moe_core.cli import main

    r = CliRunner().invoke(main, ["run", "--model", "Qwen/Qwen3-30B-A3B", "--tokens", "4",
                                  "--experts", "8", "--cuda-graph"])
    assert r.exit_code == 2
    assert "random weights" not in r.output  # refused before the weights stage


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("rank", [0, 1])
def test_replays_equal_eager_calls_at_every_count(rank):
    spec = _spec(arch="auto", tp_size=2, ep_size=2, rank=rank)
    layer = _cuda_layer(spec)
    graphed = layer.graphed([4, 16])
    # Big then small: padding must not carry the bigger call's tokens into the smaller one.
    for n, seed in ((16, 1), (3, 2), (4, 3), (1, 4), (16, 5), (0, 6)):
        x, w, ids = random_inputs(spec, n, seed=seed, device="cuda")
        torch.testing.assert_close(graphed(x, w, ids), layer(x, w, ids), rtol=0, atol=0)
    x, w, ids = random_inputs(spec, 17, seed=7, device="cuda")
    with pytest.raises(InputError, match="captured for at most 16"):
        graphed(x, w, ids)


@needs_cuda
@pytest.mark.gpu
def test_copy_out_false_returns_the_static_buffer():
    spec = _spec(arch="auto")
    layer = _cuda_layer(spec)
    graphed = layer.graphed([8], copy_out=False)
    a = graphed(*random_inputs(spec, 8, seed=1, device="cuda"))
    kept = a.clone()
    b = graphed(*random_inputs(spec, 8, seed=2, device="cuda"))
    assert a.data_ptr() == b.data_ptr() and not torch.equal(a, kept)


def test_fill_copies_unless_the_source_is_the_destination():
    from moe_core.graphs import fill

    buf = torch.zeros(4, 3)
    assert fill(buf[:2], buf[:2]) is False  # written in place: nothing to copy
    src = torch.ones(2, 3)
    assert fill(buf[:2], src) is True and torch.equal(buf[:2], src) and not buf[2:].any()
    assert fill(buf[:2], buf[:2].clone()) is True  # equal values elsewhere: copied
    assert fill(buf[2:], buf[:2]) is True  # another view of the same buffer: copied
    assert torch.equal(buf[2:], src)
    rows = torch.arange(8.0).view(4, 2)
    assert fill(rows[:3], rows[1:]) is True  # overlapping rows, shifted: through a temporary
    assert rows.flatten().tolist() == [2, 3, 4, 5, 6, 7, 6, 7]
    ids = torch.zeros(2, 3, dtype=torch.int64)
    assert fill(ids, torch.ones(2, 3, dtype=torch.int32)) is True and ids.sum() == 6


@needs_cuda
@pytest.mark.gpu
def test_static_inputs_replay_without_copies_and_match_eager():
    spec = _spec(arch="auto")
    layer = _cuda_layer(spec)
    graphed = layer.graphed([4, 16], copy_out=False)
    for n, seed in ((16, 1), (3, 2)):
        sx, sw, si = graphed.static_inputs(n)
        x, w, ids = random_inputs(spec, n, seed=seed, device="cuda")
        sx.copy_(x), sw.copy_(w), si.copy_(ids)
        torch.testing.assert_close(graphed(sx, sw, si), layer(x, w, ids), rtol=0, atol=0)
        sx.mul_(2)  # the replay reads the buffers as they are now
        torch.testing.assert_close(graphed(sx, sw, si), layer(x * 2, w, ids), rtol=0, atol=0)
    with pytest.raises(InputError, match="captured for 1 to 16"):
        graphed.static_inputs(17)
