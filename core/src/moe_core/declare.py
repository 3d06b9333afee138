"""What plugins declare: their variants, and a verdict per variant for a given spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUNNER = "runner"
DISPATCHER = "dispatcher"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way a plugin can run (or dispatch) a layer.

    ``priority`` orders candidates across plugins (higher first; the reference backend
    uses 0 and 1, so kernel backends take 10 and up). It is static: per-spec preferences
    go in :attr:`Verdict.preference`.
    """

    name: str
    priority: int
    summary: str = ""
    kind: str = RUNNER


@dataclass(frozen=True, slots=True)
class Overlap:
    """The overlap the plan enables. The runner reads overlap results only when on."""

    sbo: bool = False
    down_gemm: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A variant's answer for one spec. Build with :meth:`yes` / :meth:`no`."""

    variant: str
    supported: bool
    reason: str
    preference: float = 0.0
    #: Per-partition intermediate size after the variant's padding (None: unpadded).
    padded_intermediate: int | None = None
    #: Overlap the variant will run with (None: the host's default, no down-GEMM overlap).
    overlap: Overlap | None = None
    #: Extra plan details for the variant's own later hooks, as sorted (key, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def yes(
        cls,
        variant: str,
        reason: str = "supported",
        *,
        preference: float = 0.0,
        padded_intermediate: int | None = None,
        overlap: Overlap | None = None,
        **options: Any,
    ) -> "Verdict":
        return cls(variant, True, reason, preference, padded_intermediate, overlap,
                   tuple(sorted(options.items())))

    @classmethod
    def no(cls, variant: str, reason: str) -> "Verdict":
        return cls(variant, False, reason)
