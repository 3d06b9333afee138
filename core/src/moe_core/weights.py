"""The canonical weight layout every plugin's ``process_weights`` starts from.

Per rank, with ``E = spec.local_experts``, ``I = spec.intermediate_per_partition``,
``H = spec.hidden_size``, ``R = spec.w13_rows`` (``2*I`` gated, ``I`` for relu2):

* ``w13`` is ``[E, R, H]``: for gated activations rows ``[0, I)`` are the **gate**
  projection and rows ``[I, 2I)`` the **up** projection (``[Gate, Up]``, i.e. w1 then w3);
  for relu2 it is the up projection alone. ``w2`` is ``[E, H, I]`` (the down projection).
  Both are ``out x in`` (row-major ``N x K``), as in Hugging Face checkpoints.
* Scales dequantize as ``w = q * scale`` (``* global_scale`` for nvfp4):

  ============= ========== ===================================== ================== =================
  quant         w13, w2    w13_scale / w2_scale                  global scales      activations
  ============= ========== ===================================== ================== =================
  bf16          bfloat16   none                                  none               bf16
  fp8_block128  e4m3fn     fp32 [E, Rb, ceil(H/128)] /           none               fp8 1x128 groups
                           [E, ceil(H/128), ceil(I/128)];                           (dynamic)
                           Rb = ceil(I/128) per half (x2 gated)
  fp8_tensor    e4m3fn     fp32 [E] / [E]                        none               fp8 per tensor
  fp8_channel   e4m3fn     fp32 [E, R] / [E, H]                  none               fp8 per token
  nvfp4         uint8 [.., ceil(K/2)]  e4m3fn [.., ceil(K/16)]   fp32 [E] each      nvfp4 (dynamic)
  mxfp4         uint8 [.., ceil(K/2)]  uint8 e8m0 [.., ceil(K/32)] none             bf16
  ============= ========== ===================================== ================== =================

  fp4 values are e2m1 codes, two per byte, element ``2j`` in the low nibble. Block scales
  of a gated w13 restart at the up half (each half is blocked from its own row 0), so a
  checkpoint's separate gate/up tensors map onto it directly.
* Optional biases (``spec.has_bias``, e.g. gpt-oss): ``w13_bias`` fp32 ``[E, R]``,
  ``w2_bias`` fp32 ``[E, H]``.
* Every tensor lives on the spec's device (``cpu`` for arch cpu, ``cuda`` for sm*/gfx*).

:func:`expected_tensors` is the single source of these shapes; the host validates
canonical weights against it before ``process_weights`` runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import PluginError, WeightsError
from .sizes import cdiv
from .spec import MoESpec, Quant

CANONICAL = "canonical"
TENSOR_NAMES = ("w13", "w2", "w13_scale", "w2_scale", "w13_global_scale", "w2_global_scale",
                "w13_bias", "w2_bias")


@dataclass(frozen=True)
class MoEWeights:
    """The expert weights of one layer on one rank. ``layout`` tags who arranged them."""

    w13: Any
    w2: Any
    w13_scale: Any = None
    w2_scale: Any = None
    w13_global_scale: Any = None
    w2_global_scale: Any = None
    w13_bias: Any = None
    w2_bias: Any = None
    layout: str = CANONICAL
    #: Backend-specific extra tensors or values, as (key, value) pairs.
    extras: tuple[tuple[str, Any], ...] = ()

    def tensors(self) -> dict[str, Any]:
        """The named tensors that are set (extras excluded)."""
        return {n: getattr(self, n) for n in TENSOR_NAMES if getattr(self, n) is not None}

    def extra(self, key: str, default: Any = None) -> Any:
        return dict(self.extras).get(key, default)

    def replace(self, **changes: Any) -> "MoEWeights":
        return dataclasses.replace(self, **changes)

    @property
    def device(self):
        return self.w13.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def experts(self, first: int, count: int) -> "MoEWeights":
        """The weights of experts ``[first, first + count)`` (every tensor leads with experts):
        an expert-parallel rank's share of a layer's canonical weights."""
        total = self.w13.shape[0]
        if first < 0 or count < 0 or first + count > total:
            raise WeightsError(f"experts [{first}, {first + count}) are outside the {total} experts "
                               "these weights hold")
        return self.replace(**{n: t[first:first + count] for n, t in self.tensors().items()})


def expected_tensors(spec: MoESpec, intermediate: int | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, torch dtype name) of the canonical weights for ``spec``.

    ``intermediate`` overrides the per-partition intermediate size (for padded layouts
    that keep the canonical arrangement).
    """
    E, H = spec.local_experts, spec.hidden_size
    I = spec.intermediate_per_partition if intermediate is None else intermediate
    halves = 2 if spec.activation.gated else 1
    R = halves * I
    q = spec.quant
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    if q is Quant.BF16:
        out["w13"] = ((E, R, H), "bfloat16")
        out["w2"] = ((E, H, I), "bfloat16")
    elif q in (Quant.FP8_BLOCK128, Quant.FP8_TENSOR, Quant.FP8_CHANNEL):
        out["w13"] = ((E, R, H), "float8_e4m3fn")
        out["w2"] = ((E, H, I), "float8_e4m3fn")
        if q is Quant.FP8_BLOCK128:
            out["w13_scale"] = ((E, halves * cdiv(I, 128), cdiv(H, 128)), "float32")
            out["w2_scale"] = ((E, cdiv(H, 128), cdiv(I, 128)), "float32")
        elif q is Quant.FP8_TENSOR:
            out["w13_scale"] = ((E,), "float32")
            out["w2_scale"] = ((E,), "float32")
        else:
            out["w13_scale"] = ((E, R), "float32")
            out["w2_scale"] = ((E, H), "float32")
    else:
        group, scale_dtype = (16, "float8_e4m3fn") if q is Quant.NVFP4 else (32, "uint8")
        out["w13"] = ((E, R, cdiv(H, 2)), "uint8")
        out["w2"] = ((E, H, cdiv(I, 2)), "uint8")
        out["w13_scale"] = ((E, R, cdiv(H, group)), scale_dtype)
        out["w2_scale"] = ((E, H, cdiv(I, group)), scale_dtype)
        if q is Quant.NVFP4:
            out["w13_global_scale"] = ((E,), "float32")
            out["w2_global_scale"] = ((E,), "float32")
    if spec.has_bias:
        out["w13_bias"] = ((E, R), "float32")
        out["w2_bias"] = ((E, H), "float32")
    return out


def device_type(spec: MoESpec) -> str:
    """The torch device type tensors for ``spec`` live on."""
    if spec.arch == "cpu":
        return "cpu"
    return "npu" if spec.arch == "npu" else "cuda"


def validate_weights(spec: MoESpec, weights: MoEWeights, intermediate: int | None = None) -> None:
    """Raise :class:`WeightsError` naming the first tensor that does not fit ``spec``."""
    if not isinstance(weights, MoEWeights):
        raise WeightsError(f"expected moe_core.MoEWeights, got {type(weights).__name__}")
    expected = expected_tensors(spec, intermediate)
    given = weights.tensors()
    for name in given:
        if name not in expected:
            raise WeightsError(
                f"{name} is set but {spec.quant.value} weights"
                f"{'' if spec.has_bias else ' without bias'} take only: {', '.join(expected)}")
    want_device = device_type(spec)
    for name, (shape, dtype) in expected.items():
        t = given.get(name)
        if t is None:
            raise WeightsError(f"{name} is missing: {spec.quant.value} weights need {', '.join(expected)}")
        if tuple(t.shape) != shape:
            raise WeightsError(
                f"{name} has shape {tuple(t.shape)}; expected {shape} for {spec.describe()}")
        got = str(t.dtype).removeprefix("torch.")
        if got != dtype:
            raise WeightsError(f"{name} has dtype {got}; expected {dtype} for {spec.quant.value}")
        if t.device.type != want_device:
            raise WeightsError(
                f"{name} is on {t.device}; expected a {want_device} tensor for arch {spec.arch}")


def fingerprint(weights: MoEWeights, *, full: bool) -> dict[str, Any]:
    """What :func:`changed` compares: each tensor's in-place version counter (cheap: catches
    every in-place torch op), and with ``full`` a pristine copy too (catches writes that
    bypass the counter, e.g. through ``.data`` or a kernel's raw pointer)."""
    return {n: (t._version, t.detach().clone() if full else None) for n, t in weights.tensors().items()}


def changed(weights: MoEWeights, before: dict[str, Any]) -> list[str]:
    """The names of ``weights``' tensors that differ from the :func:`fingerprint` ``before``."""
    out = []
    for name, t in weights.tensors().items():
        version, copy = before.get(name, (None, None))
        if t._version != version or (copy is not None and not torch_equal_bits(copy, t)):
            out.append(name)
    return out


def torch_equal_bits(a, b) -> bool:
    """Bit-for-bit equality (NaNs included), whatever the dtype."""
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def validate_processed(spec: MoESpec, weights: Any, intermediate: int, owner: str) -> None:
    """Raise :class:`PluginError` unless ``process_weights``' output fits the plan: the same
    tensors as the canonical layout at the padded ``intermediate`` size, on the spec's device,
    w13 and w2 holding exactly the padded number of elements (any arrangement of them)."""
    if not isinstance(weights, MoEWeights):
        raise PluginError(f"process_weights of {owner!r} returned {type(weights).__name__}; "
                           "expected MoEWeights or None")
    expected = expected_tensors(spec, intermediate)
    given = weights.tensors()
    missing = [n for n in expected if n not in given]
    if missing:
        raise PluginError(f"process_weights of {owner!r} dropped {', '.join(missing)}")
    want_device = device_type(spec)
    for name, t in given.items():
        if getattr(t, "device", None) is None or t.device.type != want_device:
            raise PluginError(f"process_weights of {owner!r} put {name} on "
                               f"{getattr(t, 'device', type(t).__name__)}; expected {want_device}")
    for name in ("w13", "w2"):
        shape = expected[name][0]
        want = shape[0] * shape[1] * shape[2]
        if given[name].numel() != want:
            raise PluginError(
                f"process_weights of {owner!r} made {name} {tuple(given[name].shape)} "
                f"({given[name].numel()} elements); the plan's padded intermediate {intermediate} "
                f"needs {want} ({shape} in the canonical arrangement)")
