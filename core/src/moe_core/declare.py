"""What plugins declare: their variants, and a verdict per variant for a given spec.

A variant declares, as data, the token layouts it takes and the wire formats it accepts
(runners) or delivers (dispatchers), and the kernel modules it needs; the host derives
every plan's dispatch settings and the "not installed" answers from these, once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .spec import A2A
from .tokens import Layout, Wire


class VariantKind(StrEnum):
    RUNNER = "runner"  # computes the experts
    DISPATCHER = "dispatcher"  # moves tokens between expert-parallel ranks


RUNNER, DISPATCHER = VariantKind.RUNNER, VariantKind.DISPATCHER


class Reason(StrEnum):
    """Why a candidate does not run: a closed list. Every "no" carries one code and a detail."""

    SHAPE_UNALIGNED = "shape_unaligned"  # a size is off a multiple the kernel needs
    SHAPE_UNSUPPORTED = "shape_unsupported"  # a size outside what the kernel was built for
    QUANT_UNSUPPORTED = "quant_unsupported"  # the weight format
    ACTIVATION_UNSUPPORTED = "activation_unsupported"  # the expert activation function
    ACT_DTYPE_UNSUPPORTED = "act_dtype_unsupported"  # the activation dtype (fp16/fp32)
    BIAS_UNSUPPORTED = "bias_unsupported"  # expert biases
    PARALLEL_UNSUPPORTED = "parallel_unsupported"  # the TP/EP split or rank count
    ARCH_UNSUPPORTED = "arch_unsupported"  # the GPU architecture
    NUMERICS_DIFFER = "numerics_differ"  # it would run, but compute something else
    DEPENDENCY_MISSING = "dependency_missing"  # a kernel module is not importable
    LAYOUT_UNSUPPORTED = "layout_unsupported"  # the token layout the a2a mode delivers
    MODE_UNSUPPORTED = "mode_unsupported"  # a dispatcher: the a2a mode
    WIRE_UNSUPPORTED = "wire_unsupported"  # a dispatcher/runner: the wire format
    NO_DISPATCHER = "no_dispatcher"  # no dispatcher delivers what the runner takes
    LIMIT_EXCEEDED = "limit_exceeded"  # tokens per rank or another capacity
    NOT_IMPLEMENTED = "not_implemented"  # declared, not built (e.g. no machine to verify on)
    BUILD_PENDING = "build_pending"  # needs a build that has not happened
    DISABLED = "disabled"  # forbidden by the user (MOE_DISABLE / disable=)
    NOT_FORCED = "not_forced"  # the user forced another backend (MOE_BACKEND / force=)
    BROKEN = "broken"  # the plugin failed to load or broke a hook's contract
    #: ``Verdict.no(variant, text)`` without a code (deprecated; a plugin should pick one).
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way a plugin can run (or dispatch) a layer.

    ``priority`` orders the candidates that said yes, higher first, runners against
    runners and dispatchers against dispatchers; ties go to :attr:`Verdict.preference`,
    then to the plugin and variant names. The bands (the guide's "Priorities" section,
    docs/writing-a-backend.md, lists the same):

    * runners 0-1: the reference backend (``reference:loop`` 0, ``reference:grouped_mm`` 1);
    * runners 2-19: portable runners that beat the reference and yield to tuned kernels
      (``example:chunked`` 5, the ``moe new-plugin`` template 5);
    * runners 20-39: kernels tuned for a GPU (in-repo: ``triton`` 22, ``flashinfer_cutedsl`` 25,
      ``deepgemm`` 30-31, ``flashinfer_cutlass`` 31);
    * runners 40 and up: a kernel meant to win over every in-repo one where both say yes;
    * dispatchers: ``torch:all_to_all`` 10 (serves every mode: the fallback), ``deepep`` 20.

    It is static: per-spec preferences go in :attr:`Verdict.preference`. A measured order
    (planned: ``moe tune``) will only reorder candidates that said yes, never run a "no".

    Runners: ``layouts`` are the token layouts it takes from a dispatcher, best first
    (with tokens on the rank it is always called in the standard layout); ``wire`` the
    formats tokens may travel in for it, best first (see :class:`moe_core.tokens.Wire`).
    Dispatchers: ``modes`` the a2a modes it serves, ``layouts`` and ``wire`` what it can
    deliver. ``requires``: kernel modules the variant needs; the host declines it with
    ``dependency_missing`` where one is not importable, after the plugin said yes.
    ``graph_safe``: its standard-layout call neither synchronises with the host nor sizes
    a tensor from data, so a loaded layer may be captured in a CUDA graph and replayed.
    ``quantized_input`` (runners): it consumes quantized tokens with their scales, so
    dispatchers hand it the wire tensors in the contiguous and masked layouts
    (``run_contiguous_quantized`` / ``run_masked_quantized``) instead of dequantizing them;
    a runner that takes the NVFP4 wire must say so (NVFP4 cannot be dequantized on arrival).
    """

    name: str
    priority: int
    summary: str = ""
    kind: VariantKind = VariantKind.RUNNER
    layouts: tuple[Layout, ...] = (Layout.CONTIGUOUS, Layout.MASKED, Layout.STANDARD)
    wire: tuple[Wire, ...] = (Wire.BF16,)
    requires: tuple[str, ...] = ()
    modes: tuple[A2A, ...] = ()
    graph_safe: bool = False
    quantized_input: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name or ":" in self.name or "," in self.name:
            raise ValueError(f"variant name {self.name!r}: expected a non-empty string without ':' or ','")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"variant {self.name}: priority {self.priority!r}; expected an int")
        set_(self, "kind", VariantKind(self.kind))
        set_(self, "layouts", tuple(Layout(x) for x in self.layouts))
        set_(self, "wire", tuple(Wire(x) for x in self.wire))
        set_(self, "modes", tuple(A2A(x) for x in self.modes))
        set_(self, "requires", tuple(self.requires))
        if self.kind is VariantKind.DISPATCHER and not self.modes:
            raise ValueError(f"dispatcher variant {self.name}: declares no a2a modes it serves")
        if not isinstance(self.quantized_input, bool):
            raise ValueError(f"variant {self.name}: quantized_input {self.quantized_input!r}; expected a bool")
        if self.kind is VariantKind.RUNNER and not self.quantized_input and \
                any(not w.dequantizable for w in self.wire):
            raise ValueError(f"runner variant {self.name} takes the "
                             f"{'/'.join(w.value for w in self.wire if not w.dequantizable)} wire, which "
                             "arrives only quantized: declare quantized_input=True")


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
    #: Why (a "no": what is missing, specifically; a "yes": what will run).
    reason: str
    #: Set exactly when ``supported`` is False.
    code: Reason | None = None
    preference: float = 0.0
    #: Per-partition intermediate size after the variant's padding (None: unpadded).
    padded_intermediate: int | None = None
    #: Overlap the variant will run with (None: the host's default, no down-GEMM overlap).
    overlap: Overlap | None = None
    #: Narrows the variant's declared ``layouts`` for this spec (None: as declared).
    layouts: tuple[Layout, ...] | None = None
    #: Extra plan details for the variant's own later hooks, as sorted (key, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.supported, bool):
            raise TypeError(f"verdict of {self.variant!r}: supported {self.supported!r}; expected a bool")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError(f"verdict of {self.variant!r}: expected a non-empty reason")
        if self.supported != (self.code is None):
            raise ValueError(f"verdict of {self.variant!r}: a 'no' needs a Reason code, a 'yes' none")
        if self.code is not None:
            object.__setattr__(self, "code", Reason(self.code))
        p = self.preference
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise TypeError(f"verdict of {self.variant!r}: preference {p!r}; expected a finite number")
        if self.layouts is not None:
            object.__setattr__(self, "layouts", tuple(Layout(x) for x in self.layouts))

    @classmethod
    def yes(
        cls,
        variant: str,
        reason: str = "supported",
        *,
        preference: float = 0.0,
        padded_intermediate: int | None = None,
        overlap: Overlap | None = None,
        layouts: tuple[Layout, ...] | None = None,
        **options: Any,
    ) -> "Verdict":
        return cls(variant, True, reason, None, preference, padded_intermediate, overlap, layouts,
                   tuple(sorted(options.items())))

    @classmethod
    def no(cls, variant: str, code: Reason | str, detail: str | None = None) -> "Verdict":
        """``Verdict.no(variant, Reason.SHAPE_UNALIGNED, "hidden 200 is not a multiple of 64")``.

        The older ``Verdict.no(variant, text)`` still works: its code is
        :attr:`Reason.UNSPECIFIED`, with a :class:`DeprecationWarning`.
        """
        if detail is None and isinstance(code, Reason):
            raise TypeError(f"Verdict.no({variant!r}, {code.value}): expected a detail after the code")
        if detail is None:
            warnings.warn(f"Verdict.no({variant!r}, text) without a Reason code is deprecated: "
                          "use Verdict.no(variant, Reason.<CODE>, text)", DeprecationWarning,
                          stacklevel=2)
            return cls(variant, False, str(code), Reason.UNSPECIFIED)
        if not isinstance(code, Reason):
            raise TypeError(f"Verdict.no({variant!r}, ...): code {code!r}; expected a moe_core.Reason")
        return cls(variant, False, detail, code)
