"""The tuning cache: measured runner times per (layer, token bucket, environment), and the
ordering the host takes from them.

One JSON file per environment fingerprint in the user cache directory
(``$MOE_TUNING_CACHE``, else platformdirs' user cache dir, else ``~/.cache``, under
``moe-core/tuning``). An entry is keyed by :func:`spec_key` and the token bucket and
carries the fingerprint it was measured under. The cache only *orders* runners that
already said yes (:meth:`TuningCache.order`): force and disable are applied before, and a
runner that said no is never offered to it.

Reading never breaks resolution: a corrupt or truncated file, an entry of another
environment or of another layout is ignored with its reason (shown by ``moe explain``), and
a file problem is also logged as a warning (logger ``moe_core.tuning``). Writers lock the file
(``fcntl.flock`` on a ``.lock`` beside it), re-read and merge, write a temporary file and
``os.replace`` it, so concurrent writers lose nothing and readers never see half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..environment import fingerprint_of as fingerprint
from ..errors import MoEError
from ..plan import SelectedBy, Selection
from ..registry import PluginStatus
from ..spec import DECODE_MAX_TOKENS, MoESpec, Regime

ENV_CACHE = "MOE_TUNING_CACHE"
ENV_TUNING = "MOE_TUNING"
ENV_OBJECTIVE = "MOE_TUNING_OBJECTIVE"
FORMAT = 1
#: Spec fields a measurement does not depend on: display only (``model``); the rank (every
#: rank of a layer has the same shapes and all must pick the same runner); the token count
#: (the bucket is the token axis: a layer resolved for ``max_tokens`` M is ordered by the
#: times measured at the bucket of M).
SPEC_KEY_EXCLUDED = ("model", "rank", "ep_rank", "max_tokens", "min_tokens", "token_regime")
#: Leading runners shown per bucket.
SHOWN = 3


class TuningError(MoEError, ValueError):
    """Bad tuning input (objective, buckets, cache path), with what was expected."""


#: Where unreadable tuning files are reported (a warning each, once per host).
log = logging.getLogger("moe_core.tuning")


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where tuning files live: ``path``, ``$MOE_TUNING_CACHE``, platformdirs' user cache
    dir + ``moe-core/tuning``, or ``~/.cache/moe-core/tuning``."""
    if path is None:
        path = os.environ.get(ENV_CACHE) or None
    if path is not None:
        return Path(path).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("moe-core")) / "tuning"
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "moe-core" / "tuning"


_KEYED = tuple(sorted(f.name for f in dataclasses.fields(MoESpec) if f.name not in SPEC_KEY_EXCLUDED))


@lru_cache(maxsize=4096)
def spec_key(spec: MoESpec) -> str:
    """sha256 of the spec's fields minus :data:`SPEC_KEY_EXCLUDED` (24 hex digits); the rest of
    ``to_dict`` derives from them. Stable across processes."""
    values = ((k, getattr(spec, k)) for k in _KEYED)
    text = ";".join(f"{k}={(v.value if isinstance(v, StrEnum) else v)!r}" for k, v in values)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_key(key: str, bucket: int) -> str:
    return f"{key}/{bucket}"


# -- the environment a measurement holds for --------------------------------------------
def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@cache
def machine() -> dict[str, str]:
    """The device timings depend on: GPU name, SM and CUDA (or the CPU model), the driver."""
    from ..environment import _probe_device

    dev = dict(_probe_device())
    for line in _read("/proc/driver/nvidia/version").splitlines():
        if "Kernel Module" in line:
            dev["driver"] = line.split("Kernel Module")[1].split()[0]
    if dev.get("name") == "cpu":
        models = [ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                  if ln.startswith("model name")]
        dev.update(cpu=models[0] if models else "unknown", cpus=str(os.cpu_count()))
    return dev


def environment_body(env, registry) -> dict[str, Any]:
    """What a measurement depends on: the host's frozen environment (torch, kernel library
    versions, plugins' facts), this machine's device and driver, every plugin's version."""
    body = {k: v for k, v in env.to_dict().items() if k != "fingerprint"}
    body["device"] = {**machine(), **body["device"]}
    body["plugins"] = {r.name: r.version or "unversioned" for r in registry
                       if r.status is PluginStatus.OK}
    return body


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """``"torch 2.12.0 -> 2.13.0, plugins.x 1 -> 2"``: what changed between two bodies."""
    if not isinstance(old, dict):
        return "its environment is not recorded"
    a, b = _flatten(old), _flatten(new)
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not changed:
        return "nothing recorded (another fingerprint scheme)"
    return ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")


# -- the objective: one choice per layer ------------------------------------------------
class ObjectiveKind(StrEnum):
    """How the times of one layer's runners over token buckets make one choice."""

    #: Mean over the buckets of the plan's token range (``(min_tokens, max_tokens]`` where
    #: the spec is one tier of several; else its regime's: decode 1 to ``max_tokens``,
    #: prefill above the decode range up to ``max_tokens``) of each runner's time / the
    #: fastest time there. A plan serves every count of its range, so a runner 20% slower at
    #: 1-64 tokens does not win by being 2% faster at 256 (the default).
    MEAN_SLOWDOWN = "mean_slowdown"
    #: The time at the bucket of ``max_tokens`` alone.
    MAX_TOKENS = "max_tokens"
    #: A weighted sum of the times at stated buckets.
    WEIGHTED = "weighted"


@dataclass(frozen=True)
class Objective:
    """How one runner is chosen per layer from its times over token buckets (see
    :class:`ObjectiveKind`). The bucket of ``max_tokens`` is the smallest measured bucket
    >= it, else the largest below; buckets above ``max_tokens`` are otherwise left out (the
    layer never sees them)."""

    kind: ObjectiveKind = ObjectiveKind.MEAN_SLOWDOWN
    #: (bucket, weight) pairs of a WEIGHTED objective.
    weights: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ObjectiveKind(self.kind))
        if (self.kind is ObjectiveKind.WEIGHTED) != bool(self.weights):
            raise TuningError(f"objective {self.kind}: weights {self.weights!r} (expected weights "
                              "exactly for a weighted objective)")

    @classmethod
    def parse(cls, text: str | None) -> "Objective":
        """``""``/``"mean_slowdown"``, ``"max_tokens"``, or ``"BUCKET:WEIGHT,..."`` (e.g.
        ``1:0.8,4096:0.2``)."""
        text = (text or "").strip()
        if text in ("", ObjectiveKind.MEAN_SLOWDOWN, "mean"):
            return cls()
        if text in (ObjectiveKind.MAX_TOKENS, "max"):
            return cls(ObjectiveKind.MAX_TOKENS)
        weights = []
        for part in text.split(","):
            bucket, sep, weight = part.partition(":")
            try:
                b, w = int(bucket), float(weight)
            except ValueError:
                b, w = 0, -1.0
            if not sep or b < 1 or not w > 0 or not math.isfinite(w):
                raise TuningError(f"objective {text!r}: {part!r} is not BUCKET:WEIGHT (expected "
                                  "'mean_slowdown', 'max_tokens' or e.g. '1:0.8,4096:0.2', "
                                  "positive tokens and weights)")
            weights.append((b, w))
        return cls(ObjectiveKind.WEIGHTED, tuple(sorted(weights)))

    def describe(self) -> str:
        if self.kind is ObjectiveKind.MEAN_SLOWDOWN:
            return "mean slowdown against the fastest over the buckets of the plan's token range"
        if self.kind is ObjectiveKind.MAX_TOKENS:
            return "time at the max_tokens bucket"
        return "weighted sum of times: " + " + ".join(f"{w:g} x t({b})" for b, w in self.weights)

    def buckets(self, spec: MoESpec, times: dict[int, dict[str, float]],
                names: list[str]) -> tuple[list[tuple[int, float]], str]:
        """``([(bucket, weight)], note)`` for a layer of ``spec`` from ``times[bucket][name]``
        (what was measured); an empty list when a needed bucket is unmeasured. The mean
        slowdown leaves out a regime bucket where one of ``names`` has no time (a runner that
        declines a size it never serves, e.g. below its token alignment); the bucket of
        ``max_tokens`` is always needed."""
        measured = sorted(times)
        max_tokens = spec.max_tokens
        if self.kind is ObjectiveKind.WEIGHTED:
            used = [(b, w) for b, w in self.weights if spec.min_tokens < b <= max_tokens]
            if not used:
                return [], (f"no bucket of the objective lies in the plan's range "
                            f"({spec.min_tokens}, {max_tokens}]")
            gone = [b for b, _ in used if b not in measured]
            if gone:
                return [], (f"the objective needs bucket(s) {', '.join(map(str, gone))}; measured: "
                            f"{', '.join(map(str, measured))}")
            return used, ""
        above = [b for b in measured if b >= max_tokens]
        top = [(above[0], 1.0)] if above else [(measured[-1], 1.0)]
        note = "" if above else f"largest measured bucket {measured[-1]} < max_tokens {max_tokens}"
        if self.kind is ObjectiveKind.MAX_TOKENS:
            return top, note
        low = spec.min_tokens or (0 if spec.token_regime is Regime.DECODE else DECODE_MAX_TOKENS)
        below = [(b, 1.0) for b in measured if low < b < top[0][0] and all(n in times[b] for n in names)]
        return below + top, note

    def scores(self, used: list[tuple[int, float]], times: dict[int, dict[str, float]],
               names: list[str]) -> list[float]:
        """One score per runner of ``names`` (lower is better) from ``times[bucket][name]``
        (every name present at every used bucket; inf where the runner failed)."""
        if self.kind is not ObjectiveKind.MEAN_SLOWDOWN:
            return [sum(w * times[b][n] for b, w in used) for n in names]
        out = [0.0] * len(names)
        for b, _ in used:
            fastest = min(times[b][n] for n in names)
            if not math.isfinite(fastest):
                continue  # every runner failed here: the bucket ranks no one
            for i, n in enumerate(names):  # a 0 ms fastest (a trivial layer) must not zero the rest
                out[i] += times[b][n] / max(fastest, 1e-9)
        return [v / len(used) for v in out]

    def unit(self) -> str:
        """What a score is, for the reason a selection gives."""
        return "x the fastest" if self.kind is ObjectiveKind.MEAN_SLOWDOWN else "ms"


# -- reading and writing ----------------------------------------------------------------
def _valid_measurement(m: Any) -> bool:
    if not isinstance(m, dict):
        return False
    if "error" in m:
        return isinstance(m["error"], str)
    ms = m.get("ms")
    return (isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms)
            and ms >= 0 and isinstance(m.get("layout"), str))


def _valid_entry(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("bucket"), int) and e["bucket"] > 0
            and isinstance(e.get("spec_key"), str) and isinstance(e.get("fingerprint"), str)
            and isinstance(e.get("candidates"), dict)
            and all(isinstance(k, str) and _valid_measurement(m) for k, m in e["candidates"].items()))


@dataclass
class Loaded:
    """One tuning file as read: its environment, usable entries and what was wrong."""

    path: Path
    fingerprint: str | None = None
    environment: dict[str, Any] | None = None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_file(path: Path, *, warn: bool = True) -> Loaded:
    """A tuning file, never raising: unreadable parts become ``problems`` (and a logged warning)."""
    out = Loaded(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as e:
        out.problems.append(f"tuning file {path} unreadable ({e}); its measurements are ignored")
    else:
        try:
            data = json.loads(text)  # bytes: json detects the UTF encoding, else raises
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            data = None
            out.problems.append(f"tuning file {path} is not valid JSON (truncated or corrupt: {e}); "
                                "its measurements are ignored")
        if data is not None and not (isinstance(data, dict) and data.get("format") == FORMAT
                                     and isinstance(data.get("entries"), dict)):
            out.problems.append(f"tuning file {path} is not a format-{FORMAT} tuning file "
                                f"(expected {{format, fingerprint, environment, entries}}); ignored")
        elif data is not None:
            out.fingerprint = data.get("fingerprint") if isinstance(data.get("fingerprint"), str) else None
            out.environment = data.get("environment") if isinstance(data.get("environment"), dict) else None
            bad = [k for k, e in data["entries"].items() if not _valid_entry(e)]
            out.entries = {k: e for k, e in data["entries"].items() if k not in bad}
            if bad:
                out.problems.append(f"tuning file {path}: {len(bad)} malformed entr"
                                    f"{'y' if len(bad) == 1 else 'ies'} ignored ({bad[0]}...)")
    if warn:
        for p in out.problems:
            log.warning("warning: %s", p)
    return out


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path``.lock (where fcntl exists; elsewhere re-read-merge-replace
    alone still never corrupts, but a concurrent writer's entries may be lost)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _replace(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


@contextmanager
def _suppress():
    try:
        yield
    except OSError:
        pass


def _by_layer(entries: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["spec_key"], []).append(e)
    return out


@dataclass
class _View:
    """What one environment sees: its fingerprint and body, its file's entries by layer, and
    (read when first needed) other environments' files."""

    fingerprint: str
    body: dict[str, Any]
    loaded: Loaded
    layers: dict[str, list[dict[str, Any]]]
    others: list[tuple[Loaded, dict[str, list[dict[str, Any]]]]] | None = None


class TuningCache:
    """The tuning files of one directory, and the measurement source the host asks.

    Each environment's file is read once per instance (a snapshot: a host sees measurements
    written after its first resolution only through a new host or cache).
    """

    def __init__(self, path: str | os.PathLike | None = None, objective: Objective | str | None = None):
        self.path = cache_dir(path)
        self.objective = objective if isinstance(objective, Objective) else Objective.parse(objective)
        self._views: dict[Any, _View] = {}

    def __repr__(self) -> str:
        return f"TuningCache({str(self.path)!r}, {self.objective.describe()!r})"

    def file_for(self, fp: str) -> Path:
        return self.path / f"{fp}.json"

    def files(self) -> list[Path]:
        try:
            return sorted(self.path.glob("*.json"))
        except OSError:
            return []

    def ensure(self) -> Path:
        """The directory, created; a :class:`TuningError` where it cannot be."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TuningError(f"cannot write the tuning cache {self.path}: {e} (expected a writable "
                              f"directory; set ${ENV_CACHE} or --cache)") from None
        return self.path

    def record(self, body: dict[str, Any], entries: Iterable[dict[str, Any]]) -> Path:
        """Merge ``entries`` (measured under ``body``) into that environment's file, under its
        lock: a runner's newer time replaces its older one, other runners' times stay."""
        fp = fingerprint(body)
        path = self.file_for(fp)
        self.ensure()
        try:
            with _locked(path):
                old = read_file(path)
                merged = dict(old.entries) if old.fingerprint == fp else {}
                for e in entries:
                    k = entry_key(e["spec_key"], e["bucket"])
                    prev = merged.get(k)
                    if prev is not None and prev.get("fingerprint") == fp:
                        e = {**e, "candidates": {**prev["candidates"], **e["candidates"]}}
                    merged[k] = {**e, "fingerprint": fp}
                _replace(path, {"format": FORMAT, "fingerprint": fp, "environment": body,
                                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "entries": merged})
        except OSError as e:
            raise TuningError(f"cannot write the tuning cache {path}: {e} (expected a writable "
                              f"directory; set ${ENV_CACHE} or --cache)") from None
        self._views.clear()
        return path

    def clear(self) -> list[Path]:
        """Remove every tuning file here (and its lock); returns the tuning files removed."""
        gone = []
        for p in self.files():
            with _suppress():
                p.unlink()
                gone.append(p)
            with _suppress():
                p.with_suffix(".lock").unlink()
        return gone

    # -- the host's measurement source ---------------------------------------------------
    def view(self, env, registry) -> _View:
        key = (env, tuple((r.name, r.version, r.status) for r in registry))
        if key not in self._views:
            body = environment_body(env, registry)
            fp = fingerprint(body)
            loaded = read_file(self.file_for(fp))
            self._views[key] = _View(fp, body, loaded, _by_layer(loaded.entries.values()))
        return self._views[key]

    def measured(self, view: _View, key: str) -> tuple[dict[int, dict[str, Any]], list[str]]:
        """Entries of layer ``key`` usable in ``view``, and why others were ignored."""
        ignored = list(view.loaded.problems)
        usable: dict[int, dict[str, Any]] = {}
        for e in view.layers.get(key, ()):
            if e["fingerprint"] != view.fingerprint:
                ignored.append(f"{e['bucket']} tokens: measured under environment {e['fingerprint']}; "
                               f"this one is {view.fingerprint}")
            else:
                usable[e["bucket"]] = e
        if not usable:
            ignored += self._elsewhere(view, key)
        return usable, ignored

    def _elsewhere(self, view: _View, key: str) -> list[str]:
        """Why measurements of layer ``key`` in other environments' files do not count."""
        if view.others is None:
            view.others = [(o, _by_layer(o.entries.values())) for o in
                           (read_file(p, warn=False) for p in self.files() if p != view.loaded.path)]
        out = []
        for other, layers in view.others:
            buckets = sorted(e["bucket"] for e in layers.get(key, ()))
            if buckets:
                out.append(f"measured at {', '.join(map(str, buckets))} tokens under environment "
                           f"{other.fingerprint}, ignored: it differs in "
                           f"{differences(other.environment, view.body)}")
        return out

    def order(self, spec, env, registry, built) -> tuple[list[int], Selection]:
        """Order ``built`` (``(candidate, plan)`` pairs, static order, all would run) by the
        objective where every one of them was measured; else keep the static order."""
        view = self.view(env, registry)
        usable, ignored = self.measured(view, spec_key(spec))
        identity = list(range(len(built)))
        objective = self.objective.describe()
        if not usable:
            why = (f"static priority: this layer was not tuned in environment {view.fingerprint} "
                   f"({self.file_for(view.fingerprint)}); run `moe tune`")
            return identity, Selection(SelectedBy.PRIORITY, why, objective, ignored=tuple(ignored))
        names = [str(c.backend) for c, _ in built]
        times: dict[int, dict[str, float]] = {}
        for b, e in sorted(usable.items()):
            times[b] = {}
            for name, (_, plan) in zip(names, built):
                m = e["candidates"].get(name)
                if m is None:
                    continue
                if "error" in m:
                    times[b][name] = math.inf
                    ignored.append(f"{name} failed at {b} tokens when tuned: {m['error']}")
                elif m["layout"] != plan.dispatch.layout.value:
                    ignored.append(f"{name} at {b} tokens: measured in the {m['layout']} layout; "
                                   f"planned in the {plan.dispatch.layout} layout here")
                else:
                    times[b][name] = float(m["ms"])
        weights, note = self.objective.buckets(spec, times, names)
        missing = [f"{n} at {b}" for b, _ in weights for n in names if n not in times[b]]
        shown_upto = max([b for b, _ in weights] or [spec.max_tokens])
        shown = tuple((b, tuple(sorted(((n, t) for n, t in ts.items() if math.isfinite(t)),
                                       key=lambda nt: nt[1])[:SHOWN]))
                      for b, ts in times.items() if b <= shown_upto)
        common = dict(objective=objective, times=shown, ignored=tuple(ignored))
        if not weights or missing:
            why = note or (f"not every runner that would run was measured ({', '.join(missing[:4])} "
                           "tokens); run `moe tune` again")
            return identity, Selection(SelectedBy.PRIORITY, f"static priority: {why}", **common)
        score = self.objective.scores(weights, times, names)
        order = sorted(identity, key=lambda i: (score[i], i))
        first = names[order[0]]
        others = self._other_winners(spec, times, first, names, shown_upto)
        if len(built) == 1:
            return identity, Selection(SelectedBy.PRIORITY, f"static priority: only {first} would run",
                                       **common, **others)
        at = f"at {weights[0][0]} tokens" if len(weights) == 1 else \
            f"over {', '.join(str(b) for b, _ in weights)} tokens"
        ranking = ", ".join(f"{names[i]} {score[i]:.4g} {self.objective.unit()}" for i in order[:SHOWN])
        agree = ("static priority agrees" if order[0] == 0
                 else f"static priority would pick {names[0]}")
        why = f"fastest by {objective} ({at}: {ranking}); {agree}" + (f"; {note}" if note else "")
        return order, Selection(SelectedBy.MEASUREMENT, why, **common, **others)

    @staticmethod
    def _other_winners(spec, times, chosen: str, names: list[str], upto: int) -> dict[str, Any]:
        wins = []
        for b, ts in times.items():
            finite = {n: t for n, t in ts.items() if math.isfinite(t) and n in names}
            if spec.min_tokens < b <= upto and finite:  # another tier serves the buckets below
                best = min(finite, key=finite.get)
                if best != chosen:
                    wins.append((b, best))
        if not wins:
            return {}
        from ..synthetic import weight_bytes

        extra = len({w for _, w in wins}) * weight_bytes(spec)
        return {"other_winners": tuple(wins), "other_winners_bytes": extra}


def default_cache() -> TuningCache | None:
    """The host's default source: this machine's tuning cache, when it holds a file and
    ``$MOE_TUNING`` is not ``0``; the objective from ``$MOE_TUNING_OBJECTIVE``."""
    if os.environ.get(ENV_TUNING, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    try:
        objective = Objective.parse(os.environ.get(ENV_OBJECTIVE))
    except TuningError as e:
        log.warning("warning: $%s: %s; using the default objective", ENV_OBJECTIVE, e)
        objective = Objective()
    tc = TuningCache(None, objective)
    return tc if tc.files() else None
