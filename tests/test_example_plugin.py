"""The demo plugin in examples/ passes the conformance kit. It is not installed by `make dev`
(it would take part in every resolution); this test registers it from its sources."""

from __future__ import annotations

import textwrap
from pathlib import Path

pytest_plugins = ["pytester"]

SRC = Path(__file__).parents[1] / "examples" / "moe-plugin-example" / "src"


def test_the_example_plugin_passes_the_kit(pytester):
    pytester.makepyfile(example_host=textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import moe_plugin_example
        from moe_core import Host
        from moe_core.registry import Registry

        def host():
            reg = Registry.builtin()
            reg.register(moe_plugin_example, "example")
            return Host(reg)
    '''))
    result = pytester.runpytest_subprocess(
        "--moe-conformance=example", "--moe-conformance-host=example_host:host",
        "--moe-conformance-examples=10", "-k", "cpu or declarations", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("passed", 0) >= 8 and not outcomes.get("failed"), \
        result.stdout.str()[-3000:]


def test_make_dev_does_not_install_it():
    from importlib.metadata import entry_points

    assert "example" not in {ep.name for ep in entry_points(group="moe_core.plugins")}


def _host_with_the_demo():
    import sys

    sys.path.insert(0, str(SRC))
    try:
        import moe_plugin_example
    finally:
        sys.path.remove(str(SRC))
    import moe_plugin_deepep
    import moe_plugin_deepgemm
    from moe_core import Host
    from moe_core.registry import Registry

    reg = Registry.builtin()
    for name, mod in (("example", moe_plugin_example), ("deepgemm", moe_plugin_deepgemm),
                      ("deepep", moe_plugin_deepep)):
        reg.register(mod, name)
    return Host(reg)


def test_the_masked_case_with_the_demo_installed_moves_bf16():
    """Issue #15: on 2 x H200 with DeepEP built (and DeepGEMM not built in that run), the
    masked bf16 case of tests/ep_worker.py ran on the demo ``example:chunked`` with FP8 on the
    wire. Two causes, both gone: the GPU carry folder installed the demo plugin (priority 5,
    every layout: the best runner left without deep_gemm), and the host then proposed FP8 for
    every DeepEP low-latency layer, which only DeepGEMM's ``configure_dispatcher`` undid (S4).
    Now the demo is neither installed nor carried, and the wire is derived: a bf16 layer's
    only lossless wire is bf16, whoever runs it."""
    from moe_core import Wire, assume_installed
    from moe_core.spec import MoESpec

    spec = MoESpec(num_experts=16, top_k=8, hidden_size=7168, intermediate_size=2048, arch="sm90",
                   tp_size=2, ep_size=2, a2a="deepep_ll", max_tokens=128)
    with assume_installed("deep_ep"):
        plan = _host_with_the_demo().resolve(spec)
        assert (str(plan.backend), str(plan.dispatcher)) == ("example:chunked", "deepep:low_latency")
        assert plan.dispatch.wire is Wire.BF16 and not plan.dispatch.deliver_quantized
    with assume_installed("deep_ep,deep_gemm"):
        plan = _host_with_the_demo().resolve(spec)
        assert (str(plan.backend), plan.dispatch.wire) == ("deepgemm:masked", Wire.BF16)
        fp8 = _host_with_the_demo().resolve(spec.replace(quant="fp8_block128"))
        assert fp8.plugin == "deepgemm" and fp8.dispatch.wire is Wire.FP8 and fp8.dispatch.deliver_quantized


def test_the_gpu_carry_folder_leaves_the_demo_out():
    script = (Path(__file__).parents[1] / "scripts" / "build_carry.sh").read_text()
    assert "examples" not in script.split("pip wheel", 1)[1].splitlines()[0]
