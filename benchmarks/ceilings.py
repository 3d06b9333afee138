"""The ceilings a benchmark divides by, measured on its own device in the same run.

* HBM copy bandwidth: one large device-to-device copy, bytes read plus written per second.
* HBM read bandwidth: one large reduction (``amax``) that reads every byte and writes one
  value: what a decode layer does to its weights. On the H200 (2026-12-01) the copy measured
  2.77 TB/s while MoE kernels read weights at 4.15 TB/s, so the copy is no decode ceiling.
* Dense bf16 matmul rate: an 8192^3 ``torch.mm`` (NT, as weights are stored).
* Dense fp8 matmul rate: an 8192^3 ``torch._scaled_mm`` on e4m3 with rowwise scales
  (tensorwise where this torch has no rowwise kernel; the result says which).

Random data, never zeros (power and clocks depend on the bits). Every measurement goes
through :func:`common.time_call` (CUDA-graph replays where they capture). On a CPU only a
copy is measured (``--smoke`` runs), and the matmul ceilings are None with the reason.

    python benchmarks/ceilings.py           # prints them; --out ceilings.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import time_call  # noqa: E402

from moe_core.spec import Quant  # noqa: E402

#: Bytes copied for the HBM ceiling (read and written once each: 2x this moves).
GPU_COPY_BYTES = 2 * 2**30
CPU_COPY_BYTES = 64 * 2**20
MATMUL_N = 8192


class MatmulKind(StrEnum):
    """The matmul ceiling that bounds a weight format's GEMMs."""

    BF16 = "bf16"
    FP8 = "fp8"


#: weight format -> the matmul ceiling its GEMMs run against (None: no dense ceiling here).
QUANT_MATMUL = {Quant.BF16: MatmulKind.BF16, Quant.FP8_BLOCK128: MatmulKind.FP8,
                Quant.FP8_TENSOR: MatmulKind.FP8, Quant.FP8_CHANNEL: MatmulKind.FP8}


@dataclass(frozen=True)
class Ceilings:
    device: str
    #: TB/s of a device-to-device copy (bytes read + bytes written).
    hbm_copy_tbps: float
    #: TB/s of a read-only stream (None: not measured, e.g. an older JSON).
    hbm_read_tbps: float | None = None
    bf16_tflops: float | None = None
    fp8_tflops: float | None = None
    #: How the fp8 GEMM was scaled: "rowwise", "tensorwise" (None: not measured).
    fp8_scaling: str | None = None
    #: How each number was measured, or why one is missing.
    notes: tuple[str, ...] = field(default=())

    @property
    def hbm_tbps(self) -> float:
        """The HBM ceiling a layer's weight bytes per second are divided by: the faster of the
        read stream (a layer reads its weights and writes little) and the copy."""
        return max(self.hbm_read_tbps or 0.0, self.hbm_copy_tbps)

    def matmul_tflops(self, quant: Quant | str) -> float | None:
        """The dense matmul ceiling of ``quant``'s GEMMs (None: not measured here)."""
        kind = QUANT_MATMUL.get(Quant(quant))
        return {MatmulKind.BF16: self.bf16_tflops, MatmulKind.FP8: self.fp8_tflops}.get(kind)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["hbm_tbps"] = self.hbm_tbps
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Ceilings":
        fields = {k: v for k, v in d.items() if k != "hbm_tbps"}
        return cls(**{**fields, "notes": tuple(d.get("notes", ()))})


def fraction(value: float | None, ceiling: float | None) -> float | None:
    """``value / ceiling``, or None where either is unknown."""
    if value is None or not ceiling:
        return None
    return value / ceiling


def _copy_tbps(nbytes: int, device: str) -> tuple[float, str]:
    gen = torch.Generator(device=device).manual_seed(0)
    src = torch.randint(-2**31, 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device=device, generator=gen)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), flush_l2=False)
    how = f"copy of {nbytes / 2**30:.2f} GiB, {t.timer}, median of {t.samples}"
    return 2 * nbytes / (t.ms * 1e-3) / 1e12, how


def _read_tbps(nbytes: int, device: str) -> tuple[float, str]:
    gen = torch.Generator(device=device).manual_seed(3)
    src = torch.randn(nbytes // 2, device=device, generator=gen).to(torch.bfloat16)
    t = time_call(lambda: torch.amax(src), flush_l2=False)
    how = f"amax over {nbytes / 2**30:.2f} GiB, {t.timer}, median of {t.samples}"
    return nbytes / (t.ms * 1e-3) / 1e12, how


def _bf16_tflops(n: int) -> tuple[float, str]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(n, n, device="cuda", generator=gen).to(torch.bfloat16)
    b = torch.randn(n, n, device="cuda", generator=gen).to(torch.bfloat16)
    t = time_call(lambda: torch.mm(a, b.t()), flush_l2=False)
    return 2 * n**3 / (t.ms * 1e-3) / 1e12, f"bf16 mm {n}^3 NT, {t.timer}, median of {t.samples}"


def _fp8_tflops(n: int) -> tuple[float | None, str | None, str]:
    gen = torch.Generator(device="cuda").manual_seed(2)
    a = torch.randn(n, n, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda", generator=gen).to(torch.float8_e4m3fn)  # [N, K]
    scalings = {
        "rowwise": (torch.rand(n, 1, device="cuda", generator=gen) + 0.5,
                    torch.rand(1, n, device="cuda", generator=gen) + 0.5),
        "tensorwise": (torch.tensor(0.75, device="cuda"), torch.tensor(1.25, device="cuda")),
    }
    failed = []
    for name, (sa, sb) in scalings.items():
        def mm(sa=sa, sb=sb):
            return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        try:
            mm()
        except (RuntimeError, NotImplementedError) as e:
            failed.append(f"{name}: {type(e).__name__}: {str(e)[:160]}")
            continue
        t = time_call(mm, flush_l2=False)
        note = f"fp8 e4m3 _scaled_mm {n}^3 {name} scales, {t.timer}, median of {t.samples}"
        if failed:
            note += f" ({'; '.join(failed)})"
        return 2 * n**3 / (t.ms * 1e-3) / 1e12, name, note
    return None, None, f"fp8 not measured: {'; '.join(failed)}"


def measure(device: str | None = None) -> Ceilings:
    """The ceilings of ``device`` (default: CUDA where present, else the CPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        tbps, how = _copy_tbps(CPU_COPY_BYTES, "cpu")
        read, read_how = _read_tbps(CPU_COPY_BYTES, "cpu")
        return Ceilings("cpu", tbps, read, notes=(f"cpu {how}", f"cpu {read_how}",
                                                  "matmul ceilings are not measured on the CPU"))
    tbps, copy_note = _copy_tbps(GPU_COPY_BYTES, device)
    read, read_note = _read_tbps(GPU_COPY_BYTES, device)
    bf16, bf16_note = _bf16_tflops(MATMUL_N)
    fp8, scaling, fp8_note = _fp8_tflops(MATMUL_N)
    torch.cuda.empty_cache()
    return Ceilings(torch.cuda.get_device_name(), tbps, read, bf16, fp8, scaling,
                    (copy_note, read_note, bf16_note, fp8_note))


def describe(c: Ceilings) -> str:
    """One line for a benchmark's header."""
    parts = [f"HBM copy {c.hbm_copy_tbps:.3g} TB/s"]
    if c.hbm_read_tbps:
        parts.append(f"HBM read {c.hbm_read_tbps:.3g} TB/s")
    if c.bf16_tflops:
        parts.append(f"bf16 mm {c.bf16_tflops:.0f} TFLOP/s")
    if c.fp8_tflops:
        parts.append(f"fp8 mm {c.fp8_tflops:.0f} TFLOP/s ({c.fp8_scaling})")
    return f"measured ceilings on {c.device}: " + ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda where present)")
    ap.add_argument("--out", default=None, help="JSON of the ceilings")
    a = ap.parse_args()
    c = measure(a.device)
    print(describe(c))
    for note in c.notes:
        print(f"  {note}")
    if a.out:
        Path(a.out).write_text(json.dumps(c.to_dict(), indent=1))


if __name__ == "__main__":
    main()
