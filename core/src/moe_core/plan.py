"""The outcome of resolution: the trace of every candidate and the immutable plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .declare import Overlap
from .dispatch import DispatchConfig
from .spec import MoESpec

# Candidate statuses, in the order `moe explain` sorts them.
CHOSEN = "chosen"
SUPPORTED = "supported"  # would run, ranked below the chosen one
DECLINED = "declined"  # the variant said no, with its reason
DISABLED = "disabled"  # forbidden by the user (MOE_DISABLE / disable=)
NOT_FORCED = "not forced"  # the user forced another backend (MOE_BACKEND / force=)
BROKEN = "broken"  # the plugin failed to load or broke a hook's contract


@dataclass(frozen=True, slots=True)
class Candidate:
    plugin: str
    variant: str
    priority: int
    status: str
    reason: str
    preference: float = 0.0

    @property
    def backend(self) -> str:
        return f"{self.plugin}:{self.variant}"

    @property
    def supported(self) -> bool:
        return self.status in (CHOSEN, SUPPORTED)

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "variant": self.variant, "priority": self.priority,
                "status": self.status, "supported": self.supported, "reason": self.reason}


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
    #: ``plugin:variant`` of the token dispatcher (None when tokens stay on this rank).
    dispatcher: str | None = None
    candidates: tuple[Candidate, ...] = field(default=(), compare=False)
    #: The dispatcher resolution trace (empty when tokens stay on this rank).
    dispatchers: tuple[Candidate, ...] = field(default=(), compare=False)

    @property
    def backend(self) -> str:
        return f"{self.plugin}:{self.variant}"

    @property
    def dispatcher_plugin(self) -> str | None:
        return self.dispatcher.partition(":")[0] if self.dispatcher else None

    @property
    def padded(self) -> bool:
        return self.intermediate_padded != self.spec.intermediate_per_partition

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        d = self.dispatch
        return {
            "plugin": self.plugin, "variant": self.variant, "reason": self.reason,
            "intermediate_padded": self.intermediate_padded,
            "overlap": {"sbo": self.overlap.sbo, "down_gemm": self.overlap.down_gemm,
                        "reason": self.overlap.reason},
            "dispatch": {"mode": d.mode.value, "layout": d.layout, "dtype": d.dtype,
                         "max_tokens_per_rank": d.max_tokens_per_rank, "round_scale": d.round_scale,
                         "use_ue8m0": d.use_ue8m0, "nvfp4_global_scale": d.nvfp4_global_scale},
            "dispatcher": self.dispatcher,
            "dispatchers": [c.to_dict() for c in self.dispatchers],
            "options": dict(self.options),
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    """The full trace for one spec: what `moe explain` prints. ``plan`` is None if none fit."""

    spec: MoESpec
    candidates: tuple[Candidate, ...]
    plan: Plan | None
    force: str | None = None
    disable: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "chosen": ({"plugin": self.plan.plugin, "variant": self.plan.variant}
                       if self.plan else None),
            "plan": self.plan.to_dict() if self.plan else None,
            "force": self.force,
            "disable": list(self.disable),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def summary(self) -> str:
        """One line per candidate: status, backend, reason."""
        return "\n".join(f"  [{c.status}] {c.backend}: {c.reason}" for c in self.candidates)
