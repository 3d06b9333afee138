"""Measured resolution on the CPU: keys, the cache file (invalidation, corruption,
concurrent writers), ordering (force/disable still win, a "no" never runs) and explain.

Runners here cost what a fake clock says: ``Costing`` advances it by ``cost(rows)`` ms per
call, and ``tune(clock=...)`` reads that clock, so every time below is exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import moe_core
import tuning_worker
from conftest import host_with, make_plugin, one
from moe_core import Host, Layout, MoESpec, SpecError, Status, Variant, Verdict
from moe_core.cli import main
from moe_core.plan import SelectedBy
from moe_core.tuning import (Objective, ObjectiveKind, TuningCache, TuningError, environment_body, fingerprint,
                             parse_buckets, plot, spec_key, token_buckets, tune)

MEASUREMENT, PRIORITY = SelectedBy.MEASUREMENT, SelectedBy.PRIORITY


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def spend(self, ms: float) -> None:
        self.t += ms / 1e3


def costing(clock: FakeClock, cost, fail: bool = False):
    """A runner class whose every call costs ``cost(rows)`` ms of the fake clock."""

    class Costing:
        def __init__(self, plan, weights):
            self.plan = plan

        def _spend(self, x):
            if fail:
                raise RuntimeError("kernel launch failed (a test runner)")
            clock.spend(cost(x.shape[0]))
            return torch.zeros_like(x)

        def __call__(self, x, topk_weights, topk_ids):
            return self._spend(x)

        def run_contiguous(self, x, offsets):
            return self._spend(x)

    return Costing


def plugin(name, clock, cost, *, priority=10, allowed=None, fail=False, layouts=(Layout.STANDARD,)):
    """One runner variant ``name`` (of plugin ``name``) that costs ``cost(rows)`` ms."""
    allowed = allowed if allowed is not None else [True]

    def answer(spec):
        if allowed[0]:
            return [Verdict.yes(name, f"{name} runs it")]
        return [Verdict.no(name, moe_core.Reason.SHAPE_UNALIGNED, f"{name} declines it now")]

    return make_plugin([Variant(name, priority, layouts=layouts)], answer,
                       runner=costing(clock, cost, fail))


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def spec():
    return MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32, max_tokens=4096)


def crossover(clock, **kw):
    """``small`` wins small buckets (1 + T/100 ms), ``big`` (static priority first) large
    ones (2 + T/1000 ms); ``never`` says no to everything and would be fastest."""
    never = make_plugin(one("never", 50), lambda s: [Verdict.no("never", moe_core.Reason.SHAPE_UNALIGNED,
                                                                "never runs this test spec")],
                        runner=costing(clock, lambda t: 0.0))
    return host_with(("small", plugin("small", clock, lambda t: 1 + t / 100, priority=1, **kw)),
                     ("big", plugin("big", clock, lambda t: 2 + t / 1000, priority=5)),
                     ("never", never), reference=False)


def tuned(host, spec, clock, cache_dir, **kw):
    kw.setdefault("buckets", [1, 64, 4096])
    return tune(spec, host=host, cache=TuningCache(cache_dir), clock=clock, warmup=0, iters=3, **kw)


def reader(host, cache_dir, objective=None):
    """A fresh host over the same plugins that reads ``cache_dir``."""
    return Host(host.registry, host.env, measurements=TuningCache(cache_dir, objective))


# -- keys ---------------------------------------------------------------------------------
def test_spec_key_ignores_display_rank_and_token_count_only(spec):
    key = spec_key(spec)
    assert len(key) == 24 and int(key, 16) >= 0
    ep = spec.replace(tp_size=2, ep_size=2)
    same = [spec.replace(model="another/model"), spec.replace(max_tokens=16)]
    assert all(spec_key(s) == key for s in same)
    assert spec_key(ep.replace(rank=1)) == spec_key(ep) != key  # every rank of a layer agrees
    different = [spec.replace(quant="fp8_block128"), spec.replace(arch="sm90"),
                 spec.replace(hidden_size=128), spec.replace(act_dtype="fp16"),
                 spec.replace(regime="prefill"), ep]
    assert len({spec_key(s) for s in different} | {key}) == len(different) + 1
    code = ("from moe_core import MoESpec; from moe_core.tuning import spec_key; "
            "print(spec_key(MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == key  # stable across processes (no hash randomization)


def test_buckets_and_objective_parsing():
    assert token_buckets(16) == [1, 2, 4, 8, 16] and token_buckets(12) == [1, 2, 4, 8, 12]
    assert token_buckets(1) == [1]
    assert parse_buckets("64, 1,64") == [1, 64]
    for bad in ("", "0,4", "a,b"):
        with pytest.raises(TuningError, match="expected comma-separated positive token counts"):
            parse_buckets(bad)
    assert Objective.parse("mean_slowdown") == Objective.parse(None) == Objective()
    assert Objective().kind is ObjectiveKind.MEAN_SLOWDOWN
    assert Objective.parse("max_tokens").kind is ObjectiveKind.MAX_TOKENS
    with pytest.raises(TuningError, match="expected weights exactly for a weighted objective"):
        Objective(ObjectiveKind.WEIGHTED)
    assert Objective.parse("4096:0.2,1:0.8").weights == ((1, 0.8), (4096, 0.2))
    for bad in ("1", "1:x", "0:1", "1:-2", "1:nan"):
        with pytest.raises(TuningError, match="is not BUCKET:WEIGHT"):
            Objective.parse(bad)


def test_fingerprint_covers_device_torch_plugins_and_kernel_libraries(clock):
    host = crossover(clock)
    body = environment_body(host.env, host.registry)
    assert body["device"]["name"] == "cpu" and body["device"]["cpu"]
    assert body["torch"] == torch.__version__ and body["modules"] == {}
    assert set(body["plugins"]) == {"small", "big", "never"}
    fp = fingerprint(body)
    rec = host.registry.records["big"]
    host.registry.records["big"] = dataclasses.replace(rec, version="2.0")
    assert fingerprint(environment_body(host.env, host.registry)) != fp
    host.registry.records["big"] = rec
    other = dataclasses.replace(host.env, modules=(moe_core.environment.Module("deep_gemm", True, "2.9"),))
    assert fingerprint(environment_body(other, host.registry)) != fp
    assert fingerprint(environment_body(host.env, host.registry)) == fp


# -- tuning and ordering ------------------------------------------------------------------
def test_tune_times_every_yes_and_resolution_orders_by_the_objective(clock, spec, tmp_path):
    host = crossover(clock)
    report = tuned(host, spec, clock, tmp_path)
    layer = report.layers[0]
    assert sorted(layer.buckets) == [1, 64, 4096]
    timed = {b: {m.backend: m.ms for m in ms} for b, ms in layer.buckets.items()}
    # standard layout: T tokens, so rows = T; a "no" is never timed
    assert timed[1] == {"big:big": pytest.approx(2.001), "small:small": pytest.approx(1.01)}
    assert timed[4096] == {"big:big": pytest.approx(6.096), "small:small": pytest.approx(41.96)}
    assert all(m.timer == "wall_clock" and m.samples == 3 and m.error is None
               for ms in layer.buckets.values() for m in ms)
    # one choice per layer: the time at the max_tokens bucket (4096) -> big
    assert layer.chosen == "big:big" and layer.selection.by is MEASUREMENT
    assert "static priority agrees" in layer.selection.reason
    assert layer.selection.other_winners == ((1, "small:small"), (64, "small:small"))
    assert layer.selection.other_winners_bytes > 0
    # the same measurements serve a layer resolved for 64 tokens: small is fastest there
    h = reader(host, tmp_path)
    plan = h.resolve(spec.replace(max_tokens=64))
    assert str(plan.backend) == "small:small" and plan.selection.by is MEASUREMENT
    assert "static priority would pick big:big" in plan.selection.reason
    assert [c.status for c in plan.candidates[:2]] == [Status.CHOSEN, Status.SUPPORTED]
    never = next(c for c in plan.candidates if c.plugin == "never")
    assert never.status is Status.DECLINED  # measured order never touches a "no"
    d = h.explain(spec).to_dict()["plan"]["selection"]
    assert d["by"] == "measurement" and d["times"]["4096"] == {"big:big": pytest.approx(6.096),
                                                                "small:small": pytest.approx(41.96)}
    json.dumps(d)  # JSON-safe (no infinities)


def test_a_tier_spec_tunes_and_resolves_for_its_own_range(clock, spec, tmp_path):
    """A prefill tier (min_tokens 256, as the transformers integration makes it) is timed at
    every bucket, small ones included (no SpecError from resizing it), and chooses by its range."""
    host = crossover(clock)
    tier = spec.replace(min_tokens=256)
    layer = tuned(host, tier, clock, tmp_path).layers[0]
    assert sorted(layer.buckets) == [1, 64, 4096] and layer.chosen == "big:big"
    assert not layer.selection.other_winners  # small's wins at 1 and 64 are another tier's
    assert str(reader(host, tmp_path).resolve(spec.replace(max_tokens=64, min_tokens=0)).backend) == "small:small"


def test_a_stated_objective_weighs_the_buckets(clock, spec, tmp_path):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path)
    decode_heavy = reader(host, tmp_path, "1:0.99,4096:0.01").explain(spec).plan
    assert str(decode_heavy.backend) == "small:small" and decode_heavy.selection.by is MEASUREMENT
    assert "weighted sum" in decode_heavy.selection.objective
    unmeasured = reader(host, tmp_path, "2:1").explain(spec).plan
    assert unmeasured.selection.by is PRIORITY and str(unmeasured.backend) == "big:big"
    assert "needs bucket(s) 2" in unmeasured.selection.reason


def test_force_and_disable_still_win_over_measurements(clock, spec, tmp_path, monkeypatch):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path)
    h = reader(host, tmp_path)
    small = spec.replace(max_tokens=1)  # small:small is measured fastest here
    assert str(h.resolve(small).backend) == "small:small"
    assert str(h.resolve(small, force="big").backend) == "big:big"
    assert str(h.resolve(small, disable="small").backend) == "big:big"
    monkeypatch.setenv("MOE_DISABLE", "small")
    plan = h.resolve(small)
    assert str(plan.backend) == "big:big" and "only big:big would run" in plan.selection.reason
    disabled = next(c for c in plan.candidates if c.plugin == "small")
    assert disabled.status is Status.DISABLED


def test_nothing_measured_makes_a_no_run(clock, spec, tmp_path):
    allowed = [True]
    host = crossover(clock, allowed=allowed)
    tuned(host, spec, clock, tmp_path)
    allowed[0] = False  # small now says no (e.g. a new plugin rule), though measured fastest
    plan = reader(host, tmp_path).resolve(spec.replace(max_tokens=1))
    assert str(plan.backend) == "big:big"
    assert next(c for c in plan.candidates if c.plugin == "small").status is Status.DECLINED


def test_an_unmeasured_runner_keeps_the_static_order(clock, spec, tmp_path):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path, disable="big")  # big never timed
    plan = reader(host, tmp_path).resolve(spec.replace(max_tokens=1))
    assert str(plan.backend) == "big:big" and plan.selection.by is PRIORITY
    assert "not every runner that would run was measured (big:big at 1" in plan.selection.reason


def test_a_runner_that_failed_when_tuned_ranks_last(clock, spec, tmp_path):
    host = host_with(("hi", plugin("hi", clock, lambda t: 1.0, priority=9, fail=True)),
                     ("lo", plugin("lo", clock, lambda t: 5.0, priority=1)), reference=False)
    report = tuned(host, spec, clock, tmp_path, buckets=[4096])
    failed = next(m for m in report.layers[0].buckets[4096] if m.backend == "hi:hi")
    assert failed.ms is None and "kernel launch failed" in failed.error
    plan = reader(host, tmp_path).resolve(spec)
    assert str(plan.backend) == "lo:lo" and plan.selection.by is MEASUREMENT
    assert any("hi:hi failed at 4096 tokens" in why for why in plan.selection.ignored)


def test_dispatched_layouts_are_timed_on_the_rows_a_rank_receives(clock, tmp_path):
    rows = []
    grouped = plugin("grouped", clock, lambda n: rows.append(n) or 1.0, layouts=(Layout.CONTIGUOUS,))
    host = host_with(("grouped", grouped), reference=False)
    from moe_core.torch_dispatch import plugin as torch_dispatch

    host.registry.register(torch_dispatch, "torch")
    host = Host(host.registry)
    ep = MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32, tp_size=2, ep_size=2,
                 a2a="torch_a2a", max_tokens=64)
    report = tuned(host, ep, clock, tmp_path, buckets=[64])
    m = report.layers[0].buckets[64][0]
    assert m.layout == "contiguous" and m.error is None
    # 2 ranks x 64 tokens x top-2, about half of the pairs on this rank's 4 experts
    assert 0 < rows[-1] < 2 * 64 * 2 and rows[-1] == rows[0]
    assert any("runner only" in n for n in report.layers[0].notes)


# -- the cache file -----------------------------------------------------------------------
def _file(host, tmp_path):
    return TuningCache(tmp_path).file_for(fingerprint(environment_body(host.env, host.registry)))


def test_another_environment_is_ignored_with_what_differs(clock, spec, tmp_path):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path)
    moved = dataclasses.replace(host.env, torch="9.9.9")
    plan = Host(host.registry, moved, measurements=TuningCache(tmp_path)).resolve(spec.replace(max_tokens=1))
    assert str(plan.backend) == "big:big" and plan.selection.by is PRIORITY
    assert "not tuned in environment" in plan.selection.reason
    assert any("differs in torch" in why and "-> 9.9.9" in why for why in plan.selection.ignored)
    # an entry of another fingerprint inside this environment's file is ignored too
    path = _file(host, tmp_path)
    data = json.loads(path.read_text())
    for e in data["entries"].values():
        e["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    plan = reader(host, tmp_path).resolve(spec.replace(max_tokens=1))
    assert plan.selection.by is PRIORITY
    assert any("measured under environment 0123456789abcdef" in w for w in plan.selection.ignored)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: "", "not valid JSON"),
    (lambda text: "[1, 2]", "not a format-1 tuning file"),
    (lambda text: text.replace('"ms": ', '"ms": "fast", "was": '), "malformed entries ignored"),
])
def test_a_corrupt_file_warns_and_never_breaks_resolution(clock, spec, tmp_path, damage, message,
                                                         caplog):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path)
    path = _file(host, tmp_path)
    path.write_text(damage(path.read_text()))
    with caplog.at_level("WARNING", logger="moe_core.tuning"):
        plan = reader(host, tmp_path).resolve(spec.replace(max_tokens=1))
    assert any(message in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert str(plan.backend) == "big:big" and plan.selection.by is PRIORITY
    assert any(message in why for why in plan.selection.ignored)
    # tuning again replaces the damaged file with a whole one
    tuned(host, spec, clock, tmp_path)
    assert reader(host, tmp_path).resolve(spec.replace(max_tokens=1)).selection.by is MEASUREMENT


def test_a_layout_other_than_planned_is_not_used(clock, spec, tmp_path):
    host = crossover(clock)
    tuned(host, spec, clock, tmp_path)
    path = _file(host, tmp_path)
    path.write_text(path.read_text().replace('"layout": "standard"', '"layout": "masked"'))
    plan = reader(host, tmp_path).resolve(spec)
    assert plan.selection.by is PRIORITY
    assert any("measured in the masked layout; planned in the standard layout" in w
               for w in plan.selection.ignored)


def test_concurrent_writers_never_corrupt_or_lose_entries(tmp_path):
    body = {"device": {"name": "test"}, "plugins": {}}
    ctx = multiprocessing.get_context("spawn")
    workers, count = 6, 5
    procs = [ctx.Process(target=tuning_worker.write_entries,
                         args=(str(tmp_path), body, w, count, "shared")) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    cache = TuningCache(tmp_path)
    path = cache.file_for(fingerprint(body))
    data = json.loads(path.read_text())  # whole JSON
    assert len(data["entries"]) == workers * count + 1
    shared = data["entries"]["shared/1"]["candidates"]
    assert shared == {f"w{w}:v": {"ms": float(w), "layout": "standard"} for w in range(workers)}
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_the_default_source_is_the_user_cache_when_a_file_exists(clock, spec, tmp_path, monkeypatch,
                                                                 caplog):
    monkeypatch.setenv("MOE_TUNING_CACHE", str(tmp_path))
    host = crossover(clock)
    small = spec.replace(max_tokens=1)
    assert "no tuning measurements in use" in Host(host.registry).explain(small).plan.selection.reason
    tune(spec, host=host, buckets=[1], clock=clock, warmup=0, iters=1)  # the default cache
    assert (tmp_path / _file(host, tmp_path).name).is_file()
    plan = Host(host.registry).resolve(small)
    assert str(plan.backend) == "small:small" and plan.selection.by is MEASUREMENT
    monkeypatch.setenv("MOE_TUNING", "0")
    assert str(Host(host.registry).resolve(small).backend) == "big:big"
    monkeypatch.setenv("MOE_TUNING", "1")
    monkeypatch.setenv("MOE_TUNING_OBJECTIVE", "nonsense")
    with caplog.at_level("WARNING", logger="moe_core.tuning"):
        assert str(Host(host.registry).resolve(small).backend) == "small:small"
    assert "MOE_TUNING_OBJECTIVE: objective 'nonsense'" in caplog.text
    assert TuningCache(tmp_path).clear() == [_file(host, tmp_path)]
    assert TuningCache(tmp_path).files() == []


def test_no_tuning_file_imports_nothing_and_keeps_the_static_order():
    code = ("import sys, moe_core; from moe_core import MoESpec; "
            "p = moe_core.resolve(MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32)); "
            "print(p.selection.by.value, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["priority", "False"]


def test_a_failing_source_falls_back_to_the_static_order(clock, spec):
    class Bad:
        def order(self, spec, env, registry, built):
            return [0, 0], None

    class Raising:
        def order(self, spec, env, registry, built):
            raise OSError("disk gone")

    host = crossover(clock)
    for source, why in ((Bad(), "reordered 2 runners as [0, 0]; expected a permutation"),
                        (Raising(), "OSError: disk gone")):
        plan = Host(host.registry, host.env, measurements=source).resolve(spec)
        assert str(plan.backend) == "big:big" and plan.selection.by is PRIORITY
        assert why in plan.selection.reason


def test_plot_writes_a_png_or_names_what_is_missing(clock, spec, tmp_path, monkeypatch):
    report = tuned(crossover(clock), spec, clock, tmp_path, progress=True)
    out = plot(report, str(tmp_path / "tune.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(TuningError, match="needs matplotlib"):
        plot(report, str(tmp_path / "again.png"))


def test_tune_refuses_a_gpu_spec_without_a_gpu(spec, tmp_path):
    if torch.cuda.is_available():
        pytest.fail("this CPU test expects no CUDA device")
    with pytest.raises(TuningError, match="arch sm90 needs a CUDA device"):
        tune(spec.replace(arch="sm90"), cache=TuningCache(tmp_path))
    with pytest.raises(TuningError, match="at least one spec"):
        tune([], cache=TuningCache(tmp_path))


# -- the CLI ------------------------------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_explain_shows_the_measured_selection(clock, tmp_path, monkeypatch):
    host = crossover(clock)
    spec = moe_core.spec_for_model("Qwen/Qwen3-30B-A3B", arch="cpu", experts=8, max_tokens=4096)
    tuned(host, spec, clock, tmp_path)
    monkeypatch.setenv("MOE_TUNING_CACHE", str(tmp_path))
    monkeypatch.setattr(moe_core, "_default_host", Host(host.registry, host.env))
    args = ["explain", "-m", "Qwen/Qwen3-30B-A3B", "--arch", "cpu", "--experts", "8"]
    r = invoke(*args, "--tokens", "1")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "chosen small:small" in text and "selected by: measurement" in text
    assert "1 tokens: small:small 1.010 ms, big:big 2.001 ms" in text
    r = invoke(*args, "--json")
    sel = json.loads(r.output)["plan"]["selection"]
    assert sel["by"] == "measurement" and json.loads(r.output)["chosen"]["plugin"] == "big"
    assert sel["other_winners"] == {"1": "small:small", "64": "small:small"}
    text = " ".join(invoke(*args).output.split())
    assert "faster elsewhere: 1: small:small, 64: small:small" in text and "GiB more" in text


def test_tune_show_clear_on_the_reference_backend(tmp_path):
    cache = str(tmp_path / "cache")
    args = ["-m", "Qwen/Qwen3-30B-A3B", "--experts", "4", "--top-k", "2", "--arch", "cpu", "--tokens", "4"]
    r = invoke("tune", *args, "--buckets", "1,4", "--iters", "1", "--warmup", "0", "--cache", cache,
               "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    layer = d["layers"][0]
    assert sorted(layer["buckets"]) == ["1", "4"] and layer["chosen"] == "reference:loop"
    assert all(m["ms"] > 0 and m["timer"] == "wall_clock" for ms in layer["buckets"].values() for m in ms)
    assert d["compile_s"] > 0 and d["weights_s"] > 0 and d["environment"]["device"]["name"] == "cpu"
    assert d["tuning_s"] == pytest.approx(d["wall_s"] - d["compile_s"] - d["weights_s"])
    png = tmp_path / "t.png"
    r = invoke("tune", *args, "--buckets", "4", "--iters", "1", "--cache", cache, "--plot", str(png))
    assert r.exit_code == 0 and png.is_file(), r.output
    assert "load and first calls (compiles)" in " ".join(r.output.split())
    r = invoke("tune", "--show", "--cache", cache)
    assert r.exit_code == 0 and "this environment" in r.output and "reference:loop" in r.output
    r = invoke("tune", "--clear", "--cache", cache)
    assert r.exit_code == 0 and "removed 1 tuning file(s)" in r.output
    assert "0 file(s)" in invoke("tune", "--show", "--cache", cache).output


@pytest.mark.parametrize("args, message", [
    ([], "--model is required to tune"),
    (["-m", "Qwen/Qwen3-30B-A3B", "--arch", "cpu", "--buckets", "0"], "expected comma-separated positive"),
    (["-m", "Qwen/Qwen3-30B-A3B", "--arch", "cpu", "--objective", "4096"], "is not BUCKET:WEIGHT"),
    (["-m", "Qwen/Qwen3-30B-A3X"], "did you mean"),
])
def test_tune_bad_input_exits_2_with_the_reason(args, message):
    r = CliRunner().invoke(main, ["tune", *args])
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output


def test_an_unwritable_cache_is_an_error_not_a_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = CliRunner().invoke(main, ["tune", "-m", "Qwen/Qwen3-30B-A3B", "--experts", "4", "--top-k", "2", "--arch", "cpu",
                                  "--tokens", "1", "--iters", "1", "--cache", str(blocker / "sub")])
    assert r.exit_code == 2 and "cannot write the tuning cache" in " ".join(r.output.split())


def test_slow_runners_get_fewer_timed_calls_but_at_least_three(clock):
    from moe_core.tuning.timing import WallClock

    timer = WallClock(clock, warmup=0, iters=7, budget_s=2.0)
    assert [timer.count(e) for e in (0.0, 0.001, 0.5, 5.0)] == [7, 7, 4, 3]
    t = timer.measure(lambda: clock.spend(1000.0), estimate_s=1.0)
    assert (t.samples, t.ms, t.timer) == (3, pytest.approx(1000.0), "wall_clock")


def test_the_default_objective_weighs_every_bucket_of_the_plans_regime():
    """A decode plan serves 1 to max_tokens tokens: the default scores each runner by its mean
    slowdown over those buckets, so the runner fastest only at max_tokens no longer wins."""
    decode = MoESpec(num_experts=32, top_k=8, hidden_size=7168, intermediate_size=2048, max_tokens=256)
    mean, at_max = Objective(), Objective.parse("max_tokens")
    # whole-layer ms on an H200 (layer_bench, 2026-12-01, DeepSeek-V3 EP 8 bf16)
    ms = {"triton": (0.207, 0.478, 0.666, 0.690, 1.102), "cutlass": (0.305, 0.701, 0.994, 0.957, 0.882)}
    names = ["cutlass", "triton"]
    times = {b: {n: t[i] for n, t in ms.items()} for i, b in enumerate((1, 4, 16, 64, 256))}
    times |= {b: {n: 1.0 for n in names} for b in (512, 2048)}
    used, note = mean.buckets(decode, times, names)
    assert [b for b, _ in used] == [1, 4, 16, 64, 256] and not note
    assert [b for b, _ in mean.buckets(decode.replace(max_tokens=100), times, names)[0]] == [1, 4, 16, 64, 256]
    # a prefill plan: its own range only (the decode counts go to the decode plan)
    assert [b for b, _ in mean.buckets(decode.replace(max_tokens=2048), times, names)[0]] == [512, 2048]
    assert at_max.buckets(decode, times, names) == ([(256, 1.0)], "")
    # tiers (min_tokens): each plan scores its own range, so each range gets its winner
    low, high = decode.replace(max_tokens=64), decode.replace(min_tokens=64)
    assert [b for b, _ in mean.buckets(low, times, names)[0]] == [1, 4, 16, 64]
    assert [b for b, _ in mean.buckets(high, times, names)[0]] == [256]
    assert mean.scores(mean.buckets(low, times, names)[0], times, names)[1] == 1.0  # triton
    assert mean.scores([(256, 1.0)], times, names)[0] == 1.0  # cutlass
    weighted = Objective.parse("1:0.8,256:0.2")  # a stated objective keeps to the tier's range too
    assert weighted.buckets(high, times, names) == ([(256, 0.2)], "")
    assert weighted.buckets(decode.replace(max_tokens=512, min_tokens=256), times, names)[0] == []
    slow = mean.scores(used, times, names)
    assert slow[1] < slow[0] and slow[1] == pytest.approx((4 + 1.102 / 0.882) / 5)
    assert at_max.scores([(256, 1.0)], times, names) == [0.882, 1.102]
    # a runner with no time at a small bucket (it declined that size): the bucket is left
    # out, not the measurement; the max_tokens bucket stays required
    partial = {b: dict(ts) for b, ts in times.items()}
    del partial[4]["triton"]
    assert [b for b, _ in mean.buckets(decode, partial, names)[0]] == [1, 16, 64, 256]
    failed = {b: dict(ts) for b, ts in times.items()}
    failed[4]["triton"] = math.inf  # a runner that failed at one bucket ranks last
    assert math.isinf(mean.scores(used, failed, names)[1])
    failed[16] = {n: math.inf for n in names}  # a bucket where all failed ranks no one
    failed[4]["triton"] = 0.478
    assert mean.scores(used, failed, names)[1] == pytest.approx((3 + 1.102 / 0.882) / 5)
    zero = {1: {"cutlass": 0.0, "triton": 0.5}}  # a 0 ms fastest does not zero the others
    assert mean.scores([(1, 1.0)], zero, names) == [0.0, pytest.approx(0.5e9)]


def test_a_runner_that_declines_small_buckets_is_still_chosen_by_the_mean(clock, spec, tmp_path):
    """``fast`` says no below 16 tokens (an alignment it needs), so its decode buckets 1 and 4
    have no time: the mean slowdown scores the buckets both runners have, not the static order."""
    def answer(s):
        if s.max_tokens >= 16:
            return [Verdict.yes("fast", "fast runs it")]
        return [Verdict.no("fast", moe_core.Reason.SHAPE_UNALIGNED, "fast needs 16 tokens")]

    fast = make_plugin([Variant("fast", 1)], answer, runner=costing(clock, lambda t: 0.2))
    host = host_with(("big", plugin("big", clock, lambda t: 2 + t / 1000, priority=5)),
                     ("fast", fast), reference=False)
    decode = spec.replace(max_tokens=256)
    tuned(host, decode, clock, tmp_path, buckets=[1, 4, 16, 64, 256])
    plan = reader(host, tmp_path).resolve(decode)
    assert str(plan.backend) == "fast:fast" and plan.selection.by is MEASUREMENT
    assert "over 16, 64, 256 tokens" in plan.selection.reason
