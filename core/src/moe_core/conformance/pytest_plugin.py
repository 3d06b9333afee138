"""pytest entry point of the conformance kit (``pytest11``): off unless ``--moe-conformance``.

Imports nothing heavy at pytest start-up; the checks module is added to the run only
when the option names plugins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

KIT = Path(__file__).with_name("kit_tests.py")


def pytest_addoption(parser):
    group = parser.getgroup("moe-conformance", "moe-core backend conformance kit")
    group.addoption("--moe-conformance", default="", metavar="NAMES",
                    help="check these moe-core plugins (comma separated, or 'all')")
    group.addoption("--moe-conformance-host", default="", metavar="MODULE:FUNC",
                    help="a function returning the moe_core.Host to check (default: the "
                         "installed plugins)")
    group.addoption("--moe-conformance-examples", type=int, default=25, metavar="N",
                    help="random specs per plugin and arch (hypothesis max_examples)")


def pytest_configure(config):
    if config.getoption("moe_conformance") and str(KIT) not in config.args:
        config.args.append(str(KIT))


def _host(config):
    from moe_core import Host

    target = config.getoption("moe_conformance_host")
    if not target:
        return Host()
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func or "host")()


def pytest_generate_tests(metafunc):
    if "moe_plugin" not in metafunc.fixturenames:
        return
    config = metafunc.config
    names = [n.strip() for n in config.getoption("moe_conformance").split(",") if n.strip()]
    if names == ["all"]:
        names = [r.name for r in _host(config).registry]
    metafunc.parametrize("moe_plugin", names)


@pytest.fixture(scope="session")
def moe_host(pytestconfig):
    """The host under test (installed plugins, or ``--moe-conformance-host``)."""
    return _host(pytestconfig)
