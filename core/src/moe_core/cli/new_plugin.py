"""``moe new-plugin NAME``: write an installable backend plugin that passes the kit as generated."""

from __future__ import annotations

import keyword
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path

import click

from .. import __version__
from ..hookspecs import ENTRY_POINT_GROUP

VARIANT = "bf16"
#: template file (under moe_core/templates/plugin) -> path in the new package
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "plugin.py.tmpl": "src/{package}/__init__.py",
    "runner.py.tmpl": "src/{package}/runner.py",
    "test_plugin.py.tmpl": "tests/test_{name}.py",
}


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a new plugin, or None."""
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name):
        return (f"{name!r} is not a Python identifier; the plugin name is the entry-point name "
                "and the package is moe_plugin_<name> (e.g. 'fast_bf16')")
    taken = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in taken:
        return f"{name!r} is the name of an installed plugin; pick another"
    return None


def render(name: str) -> dict[str, str]:
    """Relative path -> text of every file of the plugin package ``name``."""
    major, minor = (int(p) for p in __version__.split(".")[:2])
    requirement = f"moe-core>={major}.{minor},<{major}.{minor + 1}"
    values = {"name": name, "package": f"moe_plugin_{name}", "variant": VARIANT,
              "dist": f"moe-plugin-{name.replace('_', '-')}",
              "moe_core_requirement": requirement,
              "moe_core_requirement_conformance":
                  requirement.replace("moe-core", "moe-core[conformance]")}
    folder = files("moe_core") / "templates" / "plugin"
    out = {}
    for template, path in FILES.items():
        text = (folder / template).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        if "{{" in text:
            raise RuntimeError(f"template {template} has a placeholder render() does not fill")
        out[path.format(**values)] = text
    return out


@click.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to create (default: ./moe-plugin-NAME); it must not exist.")
def new_plugin(name, directory):
    """Write a complete backend plugin package named NAME: a pyproject with the
    moe_core.plugins entry point, a bf16 runner for every token layout and its tests.
    It passes the conformance kit as generated.

    Exits 2 when NAME is not an identifier or is taken, or the directory exists.
    """
    why = check_name(name)
    if why:
        raise click.BadParameter(why, param_hint="NAME")
    target = directory or Path(f"moe-plugin-{name.replace('_', '-')}")
    if target.exists():
        raise click.BadParameter(f"{str(target)!r} already exists; choose a new directory",
                                 param_hint="--dir")
    written = render(name)
    for rel, text in written.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {len(written)} files to {target}/: " + ", ".join(written))
    click.echo(f"next: pip install -e {target} (where moe-core is installed); moe plugins lists "
               f"{name!r}; in {target}: pytest && pytest --moe-conformance={name}. "
               "Hooks, types, priorities: docs/writing-a-backend.md in moe-core.")
