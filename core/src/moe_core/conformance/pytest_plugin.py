"""pytest entry point of the conformance kit (``pytest11``): off unless ``--moe-conformance``.

Imports nothing heavy at pytest start-up; the checks module is added to the run only
when the option names plugins.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KIT = Path(__file__).with_name("kit_tests.py")
#: The seed of every random draw in a kit run unless ``--moe-conformance-seed`` says otherwise.
DEFAULT_SEED = 0
_KIT_KEY = pytest.StashKey["Kit"]()


@dataclass
class Kit:
    """One kit run's settings, its host, and what it ran (for the terminal summary)."""

    factory: str
    seed: int
    examples: int
    debug: bool
    host: Any = field(default=None, repr=False)
    #: plugin -> [round trips run, dispatches declared-only (not runnable here)]
    round_trips: dict[str, list[int]] = field(default_factory=dict)

    def get_host(self):
        if self.host is None:
            from .round_trip import make_host

            self.host = make_host(self.factory, self.debug)
        return self.host

    @contextlib.contextmanager
    def reported(self):
        """Adds the one-line reproduction to a :class:`checks.ConformanceError`."""
        from .checks import ConformanceError, reproduction

        try:
            yield
        except ConformanceError as e:
            if e.call and not getattr(e, "reproduced", False):
                e.args = (f"{e.args[0]}\nreproduce: "
                          f"{reproduction(e.call, self.factory, self.debug)}",)
                e.reproduced = True
            raise


def pytest_addoption(parser):
    group = parser.getgroup("moe-conformance", "moe-core backend conformance kit")
    group.addoption("--moe-conformance", default="", metavar="NAMES",
                    help="check these moe-core plugins (comma separated, or 'all')")
    group.addoption("--moe-conformance-host", default="", metavar="MODULE:FUNC",
                    help="a function returning the moe_core.Host to check (default: the "
                         "installed plugins)")
    group.addoption("--moe-conformance-examples", type=int, default=25, metavar="N",
                    help="random specs per plugin and arch (hypothesis max_examples)")
    group.addoption("--moe-conformance-seed", type=int, default=DEFAULT_SEED, metavar="N",
                    help=f"seed of the random specs, weights and tokens (default {DEFAULT_SEED}: "
                         "every run checks the same cases)")
    group.addoption("--moe-conformance-debug", action="store_true", default=False,
                    help="show a failing hook's traceback, file and line (as MOE_DEBUG=1 does)")


def pytest_configure(config):
    if not config.getoption("moe_conformance"):
        return
    if str(KIT) not in config.args:
        config.args.append(str(KIT))
    from ..isolation import debug_from_env

    config.stash[_KIT_KEY] = Kit(
        factory=config.getoption("moe_conformance_host"),
        seed=config.getoption("moe_conformance_seed"),
        examples=config.getoption("moe_conformance_examples"),
        debug=config.getoption("moe_conformance_debug") or debug_from_env())


def pytest_report_header(config):
    kit = config.stash.get(_KIT_KEY, None)
    if kit is None:
        return None
    return (f"moe-conformance: {config.getoption('moe_conformance')} on "
            f"{kit.factory or 'the installed plugins'}; seed {kit.seed} "
            f"(--moe-conformance-seed), {kit.examples} random specs per check, "
            f"debug {'on' if kit.debug else 'off (--moe-conformance-debug or MOE_DEBUG=1)'}")


def pytest_terminal_summary(terminalreporter, config):
    kit = config.stash.get(_KIT_KEY, None)
    if kit is None or not kit.round_trips:
        return
    terminalreporter.section("moe-conformance dispatcher round trips")
    for plugin, (ran, declared) in sorted(kit.round_trips.items()):
        terminalreporter.write_line(
            f"{plugin}: {ran} round trips on a 2-process gloo group; {declared} supported "
            "dispatches checked on declarations only" if ran or declared else
            f"{plugin}: said yes to no dispatch here (declarations checked)")


def _plugin_names(config) -> list[str]:
    names = [n.strip() for n in config.getoption("moe_conformance").split(",") if n.strip()]
    if names == ["all"]:
        names = [r.name for r in config.stash[_KIT_KEY].get_host().registry]
    return names


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "moe_plugin" in metafunc.fixturenames:
        metafunc.parametrize("moe_plugin", _plugin_names(config))
    elif "moe_dispatcher_plugin" in metafunc.fixturenames:
        records = config.stash[_KIT_KEY].get_host().registry.records
        names = [n for n in _plugin_names(config)
                 if n not in records or records[n].dispatcher_variants]
        metafunc.parametrize("moe_dispatcher_plugin", names or [pytest.param(
            None, marks=pytest.mark.skip(reason="none of the plugins checked declares "
                                                "dispatcher variants"))])


@pytest.fixture(scope="session")
def moe_kit(pytestconfig) -> Kit:
    """The kit run: settings, and the host under test."""
    kit = pytestconfig.stash[_KIT_KEY]
    kit.get_host()
    return kit


@pytest.fixture(scope="session")
def moe_host(moe_kit):
    """The host under test (installed plugins, or ``--moe-conformance-host``)."""
    return moe_kit.get_host()
