"""The install story: ``pip install moe-plugin-cutedsl`` next to the core, and the CLI sees
it with no change to the core; uninstalling removes it cleanly. A real wheel build and a
fresh virtual environment (without torch: listing and explaining need none)."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CORE_DEPS = ["pluggy>=1.5", "click>=8.1", "rich>=13", "jinja2>=3.1"]


def _run(*cmd, **kw) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
         ROOT / "core", ROOT / "plugins" / "flashinfer_cutedsl")
    venv.create(tmp / "venv", with_pip=True)
    bindir = tmp / "venv" / "bin"
    pip = [bindir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(*pip, *CORE_DEPS)
    _run(*pip, "--no-deps", next(wheels.glob("moe_core-*.whl")))
    return bindir, next(wheels.glob("moe_plugin_cutedsl-*.whl"))


def _plugins(bindir) -> dict:
    return {p["name"]: p for p in json.loads(_run(bindir / "moe", "plugins", "--json"))}


def test_install_explain_uninstall(env):
    bindir, wheel = env
    assert "flashinfer_cutedsl" not in _plugins(bindir)
    assert {"reference", "torch"} <= set(_plugins(bindir))

    _run(bindir / "python", "-m", "pip", "install", "-q", "--no-deps", wheel)
    found = _plugins(bindir)["flashinfer_cutedsl"]
    assert found["distribution"] == "moe-plugin-cutedsl" and found["status"] == "ok"
    out = json.loads(_run(bindir / "moe", "explain", "-m", "nvidia/DeepSeek-V3.1-NVFP4", "--tp", "8",
                          "--ep", "8", "--a2a", "deepep_ll", "--arch", "sm100", "--tokens", "128",
                          "--assume-installed", "flashinfer", "--json"))
    assert out["chosen"] == {"plugin": "flashinfer_cutedsl", "variant": "v1"}
    assert out["plan"]["dispatch"]["wire"] == "bf16"

    _run(bindir / "python", "-m", "pip", "uninstall", "-q", "-y", "moe-plugin-cutedsl")
    assert "flashinfer_cutedsl" not in _plugins(bindir)
    leftovers = list((bindir.parent / "lib").glob("python*/site-packages/moe_plugin_cutedsl*"))
    assert leftovers == []
