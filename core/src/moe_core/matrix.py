"""The compatibility matrix: resolve real model configs over parallel layouts and archs.

Resolution only (no weights, no kernel imports), so the whole matrix takes seconds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Callable, Iterable

from .errors import MoEError
from .host import Host
from .models import ModelConfig, bundled_models, spec_for_model

TPS = (1, 2, 4, 8)
EPS = (1, 8)
A2AS = ("none", "deepep_normal", "deepep_ll")
ARCHS = ("sm90", "sm100")


class CellStatus(StrEnum):
    CHOSEN = "chosen"  # a backend runs it
    NONE = "none"  # no backend fits
    INVALID = "invalid"  # not a valid parallel layout for the model
    ERROR = "error"  # resolution raised: a bug somewhere


CHOSEN, NONE, INVALID, ERROR = CellStatus
#: Tokens per rank a cell is resolved for: decode-sized for low-latency dispatch.
TOKENS = {"deepep_ll": 128}
DEFAULT_TOKENS = 4096


@dataclass(frozen=True)
class Cell:
    model: str
    quant: str
    arch: str
    tp: int
    ep: int
    a2a: str
    status: CellStatus
    backend: str | None
    reason: str
    #: (backend, code, reason) of every candidate that did not win, best ranked first.
    others: tuple[tuple[str, str | None, str], ...] = ()

    @property
    def column(self) -> str:
        return f"tp{self.tp} ep{self.ep} {self.a2a}"


def _quants(model: ModelConfig) -> list[str]:
    return list(dict.fromkeys([model.quant.value, "bf16"]))


def layouts(models: Iterable[ModelConfig], archs=ARCHS, tps=TPS, eps=EPS, a2as=A2AS):
    """Every (model, quant, arch, tp, ep, a2a) combination the matrix covers."""
    for model in models:
        for quant, arch, tp, ep, a2a in itertools.product(_quants(model), archs, tps, eps, a2as):
            yield model, quant, arch, tp, ep, a2a


def resolve_cell(host: Host, model: ModelConfig, quant: str, arch: str, tp: int, ep: int, a2a: str) -> Cell:
    key = dict(model=model.name, quant=quant, arch=arch, tp=tp, ep=ep, a2a=a2a)
    try:
        spec = spec_for_model(model, tp=tp, ep=ep, quant=quant, a2a=a2a, arch=arch,
                              max_tokens=TOKENS.get(a2a, DEFAULT_TOKENS))
    except MoEError as e:
        return Cell(**key, status=INVALID, backend=None, reason=str(e))
    try:
        res = host.explain(spec)
    except Exception as e:  # a bug somewhere: counted, shown, never hidden
        return Cell(**key, status=ERROR, backend=None, reason=f"{type(e).__name__}: {e}")
    others = tuple((str(c.backend), c.code.value if c.code else None, c.reason)
                   for c in res.candidates if res.plan is None or c.backend != res.plan.backend)
    if res.plan is None:
        return Cell(**key, status=NONE, backend=None, reason="no backend fits", others=others)
    return Cell(**key, status=CHOSEN, backend=str(res.plan.backend), reason=res.plan.reason,
                others=others)


def run_matrix(host: Host | None = None, models: Iterable[ModelConfig] | None = None,
               progress: Callable[[int, int], None] | None = None, **dims) -> list[Cell]:
    host = host or Host()
    combos = list(layouts(models or bundled_models().values(), **dims))
    cells = []
    for i, combo in enumerate(combos):
        cells.append(resolve_cell(host, *combo))
        if progress:
            progress(i + 1, len(combos))
    return cells


def summarize(cells: list[Cell], top: int = 8) -> dict:
    """Per arch: cells per backend, which spec field made cells invalid, declines by reason
    code, and why cells fell to the reference backend (the reasons of the candidates that
    declined them)."""
    out = {}
    for arch in sorted({c.arch for c in cells}):
        mine = [c for c in cells if c.arch == arch]
        counts = Counter(c.backend if c.status == CHOSEN else c.status for c in mine)
        fallbacks = Counter(
            (backend, reason) for c in mine if c.backend and c.backend.startswith("reference:")
            for backend, _, reason in c.others if not backend.startswith("reference:"))
        by_code = Counter(code for c in mine for _, code, _ in c.others if code)
        invalid = Counter(c.reason.split(":", 1)[0] for c in mine if c.status == INVALID)
        out[arch] = {
            "cells": len(mine),
            "by_backend": dict(counts.most_common()),
            "invalid_by_field": dict(invalid.most_common()),
            "declined_by_code": dict(by_code.most_common()),
            "reference_because": [{"backend": b, "reason": r, "cells": n}
                                  for (b, r), n in fallbacks.most_common(top)],
        }
    return out


def to_json(cells: list[Cell], seconds: float) -> dict:
    return {"seconds": seconds, "summary": summarize(cells), "cells": [asdict(c) for c in cells]}


# matplotlib's tab10, so backends keep distinct, familiar colours.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#aec7e8")


def to_html(cells: list[Cell], seconds: float) -> str:
    """One self-contained page (inline CSS, no scripts or network), a heatmap per arch."""
    from jinja2 import Environment, PackageLoader

    backends = sorted({c.backend for c in cells if c.backend})
    colors = {b: _PALETTE[i % len(_PALETTE)] for i, b in enumerate(backends)}
    tables = {}
    for arch in sorted({c.arch for c in cells}):
        mine = [c for c in cells if c.arch == arch]
        columns = list(dict.fromkeys(c.column for c in mine if c.status != INVALID))
        rows = {}
        for c in mine:
            row = rows.setdefault((c.model, c.quant), {})
            if c.status == INVALID or c.column not in columns:
                continue
            lines = [f"{c.backend or c.status}: {c.reason}"] + [
                f"{b}: {'(' + code + ') ' if code else ''}{r}" for b, code, r in c.others]
            label = (c.backend or c.status).replace("reference:", "ref:")
            row[c.column] = {"status": c.status, "backend": c.backend, "label": label,
                             "title": "\n".join(lines)}
        tables[arch] = {"columns": columns, "rows": [
            {"model": m, "quant": q, "cells": [r.get(col) for col in columns]}
            for (m, q), r in rows.items()]}
    # autoescape always: reasons and model names (config paths) end up in attributes
    env = Environment(loader=PackageLoader("moe_core", "templates"), autoescape=True)
    return env.get_template("matrix.html.j2").render(
        tables=tables, colors=colors, seconds=seconds, total=len(cells))
