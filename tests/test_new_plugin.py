"""`moe new-plugin`: the package it writes installs into a fresh virtual environment and
passes the conformance kit (and its own tests) as generated."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from moe_core.cli import main
from moe_core.cli.new_plugin import FILES, render

NAME = "tmpl_check"


def new_plugin(*args):
    return CliRunner().invoke(main, ["new-plugin", *args], catch_exceptions=False)


@pytest.mark.parametrize("name, message", [
    ("1fast", "not a Python identifier"),
    ("my-plugin", "not a Python identifier"),
    ("class", "not a Python identifier"),
    ("café", "not a Python identifier"),
    ("reference", "is the name of an installed plugin"),
])
def test_bad_names_exit_2_with_the_reason(tmp_path, name, message):
    r = new_plugin(name, "--dir", str(tmp_path / "out"))
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_never_written_into(tmp_path):
    (tmp_path / "taken").mkdir()
    r = new_plugin(NAME, "--dir", str(tmp_path / "taken"))
    assert r.exit_code == 2 and "already exists" in r.output, r.output
    assert list((tmp_path / "taken").iterdir()) == []


def test_default_directory_and_every_placeholder_filled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = new_plugin("fast_bf16")
    assert r.exit_code == 0, r.output
    root = tmp_path / "moe-plugin-fast-bf16"
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted(["pyproject.toml", "README.md", "src/moe_plugin_fast_bf16/__init__.py",
                              "src/moe_plugin_fast_bf16/runner.py", "tests/test_fast_bf16.py"])
    pyproject = (root / "pyproject.toml").read_text()
    entry_point = '[project.entry-points."moe_core.plugins"]\nfast_bf16 = "moe_plugin_fast_bf16"'
    assert entry_point in pyproject
    assert 'name = "moe-plugin-fast-bf16"' in pyproject
    assert all("{{" not in text for text in render("fast_bf16").values())
    assert len(render("x")) == len(FILES)


def _purelib(python: str | Path) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([str(python), "-c", code],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_generated_plugin_installs_and_passes_the_kit(tmp_path):
    """Generate, install into a fresh venv that sees this environment's moe-core (a .pth),
    and run its own tests plus the kit's declaration and CPU checks."""
    pkg = tmp_path / "pkg"
    assert new_plugin(NAME, "--dir", str(pkg)).exit_code == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    here = sysconfig.get_paths()["purelib"]
    Path(_purelib(python), "_moe_dev.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(pkg)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    where = subprocess.run([str(python), "-c", f"import moe_plugin_{NAME} as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv)), f"imported from {where}, not the fresh environment"

    kit = subprocess.run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-v", f"--moe-conformance={NAME}",
         "--moe-conformance-examples=5", "-k", "not sm90 and not sm100"],
        capture_output=True, text=True, cwd=pkg)
    out = kit.stdout + kit.stderr
    assert kit.returncode == 0, out[-4000:]
    passed = set(re.findall(r"::(test_\w+)\[?[^\s]*\s+PASSED", out))
    expected = {"test_declarations", "test_honest_on_random_specs",
                "test_honest_on_bundled_model_slices", "test_installed_under_its_entry_point",
                "test_every_layout_matches_the_reference"}
    assert expected <= passed, out[-4000:]
    assert re.search(rf"test_honest_on_random_specs\[{NAME}-cpu-bf16\] PASSED", out), out[-4000:]
