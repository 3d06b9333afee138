"""The outcome of resolution: the trace of every candidate and the immutable plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .declare import Overlap, Reason
from .dispatch import DispatchConfig
from .spec import MoESpec

if TYPE_CHECKING:
    from .environment import Environment


class Status(StrEnum):
    """A candidate's outcome, in the order ``moe explain`` lists them."""

    CHOSEN = "chosen"
    SUPPORTED = "supported"  # would run, ranked below the chosen one
    DECLINED = "declined"  # said no (or the host did, e.g. no dispatcher), with a code
    DISABLED = "disabled"  # forbidden by the user (MOE_DISABLE / disable=)
    NOT_FORCED = "not forced"  # the user forced another backend (MOE_BACKEND / force=)
    BROKEN = "broken"  # the plugin failed to load or broke a hook's contract


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    """A variant of a plugin; shown as ``plugin:variant``."""

    plugin: str
    variant: str

    def __str__(self) -> str:
        return f"{self.plugin}:{self.variant}"


@dataclass(frozen=True, slots=True)
class Candidate:
    plugin: str
    variant: str
    priority: int
    status: Status
    reason: str
    preference: float = 0.0
    #: Why it does not run (None for chosen and supported candidates).
    code: Reason | None = None
    #: The failing hook's traceback, kept in debug mode (``MOE_DEBUG=1``).
    debug: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.code is None) != (self.status in (Status.CHOSEN, Status.SUPPORTED)):
            raise ValueError(f"candidate {self.plugin}:{self.variant} is {self.status.value} with "
                             f"code {self.code}; a candidate that does not run needs a code")

    @property
    def backend(self) -> Backend:
        return Backend(self.plugin, self.variant)

    @property
    def supported(self) -> bool:
        return self.status in (Status.CHOSEN, Status.SUPPORTED)

    def to_dict(self) -> dict[str, Any]:
        out = {"plugin": self.plugin, "variant": self.variant, "priority": self.priority,
               "status": self.status.value, "supported": self.supported,
               "code": self.code.value if self.code else None, "reason": self.reason}
        if self.debug:
            out["traceback"] = self.debug
        return out


class SelectedBy(StrEnum):
    """How the chosen runner was picked among those that would run."""

    MEASUREMENT = "measurement"  # fastest by the tuning cache's times (moe_core.tuning)
    PRIORITY = "priority"  # (-priority, -preference, plugin, variant)


@dataclass(frozen=True, slots=True)
class Selection:
    """Why the chosen runner leads the runners that would run (``moe explain``).

    Measurements only reorder runners that already said yes and survived force/disable.
    """

    by: SelectedBy
    reason: str
    #: The stated objective (one choice per layer; see docs/design.md), when measurements exist.
    objective: str | None = None
    #: ``(bucket, ((backend, ms), ...))``: the leading runners' measured times, fastest first.
    times: tuple[tuple[int, tuple[tuple[str, float], ...]], ...] = ()
    #: ``(bucket, backend)`` where another runner than the chosen one was fastest.
    other_winners: tuple[tuple[int, str], ...] = ()
    #: Processed-weight bytes one more runner per layer would hold to serve those buckets.
    other_winners_bytes: int = 0
    #: Measurements that exist but were not used, each with its reason.
    ignored: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by.value, "reason": self.reason, "objective": self.objective,
                "times": {str(b): dict(ts) for b, ts in self.times},
                "other_winners": {str(b): w for b, w in self.other_winners},
                "other_winners_bytes": self.other_winners_bytes, "ignored": list(self.ignored)}


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything decided for one layer. Weights, runner and dispatcher all follow it."""

    spec: MoESpec
    plugin: str
    variant: str
    reason: str
    #: Per-partition intermediate size the processed weights will have (>= the spec's).
    intermediate_padded: int
    overlap: Overlap
    dispatch: DispatchConfig
    options: tuple[tuple[str, Any], ...] = ()
    #: The token dispatcher (None when tokens stay on this rank).
    dispatcher: Backend | None = None
    candidates: tuple[Candidate, ...] = field(default=(), compare=False)
    #: The dispatcher resolution trace (empty when tokens stay on this rank).
    dispatchers: tuple[Candidate, ...] = field(default=(), compare=False)
    #: How the runner was picked among those that would run (measured or static order).
    selection: Selection | None = field(default=None, compare=False)
    #: The runner's standard-layout call may be captured in a CUDA graph (its variant says so).
    graph_safe: bool = False

    @property
    def backend(self) -> Backend:
        return Backend(self.plugin, self.variant)

    @property
    def padded(self) -> bool:
        return self.intermediate_padded != self.spec.intermediate_per_partition

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin, "variant": self.variant, "reason": self.reason,
            "intermediate_padded": self.intermediate_padded,
            "overlap": {"sbo": self.overlap.sbo, "down_gemm": self.overlap.down_gemm,
                        "reason": self.overlap.reason},
            "dispatch": self.dispatch.to_dict(),
            "dispatcher": ({"plugin": self.dispatcher.plugin, "variant": self.dispatcher.variant}
                           if self.dispatcher else None),
            "dispatchers": [c.to_dict() for c in self.dispatchers],
            "options": dict(self.options),
            "graph_safe": self.graph_safe,
            "selection": self.selection.to_dict() if self.selection else None,
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    """The full trace for one spec: what `moe explain` prints. ``plan`` is None if none fit."""

    spec: MoESpec
    candidates: tuple[Candidate, ...]
    plan: Plan | None
    force: str | None = None
    disable: tuple[str, ...] = ()
    environment: "Environment | None" = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "environment": self.environment.to_dict() if self.environment else None,
            "chosen": ({"plugin": self.plan.plugin, "variant": self.plan.variant}
                       if self.plan else None),
            "plan": self.plan.to_dict() if self.plan else None,
            "force": self.force,
            "disable": list(self.disable),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def summary(self) -> str:
        """One line per candidate: status, backend, code, reason."""
        return "\n".join(f"  [{c.status.value}] {c.backend}: "
                         f"{'(' + c.code.value + ') ' if c.code else ''}{c.reason}"
                         for c in self.candidates)
