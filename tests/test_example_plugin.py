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
