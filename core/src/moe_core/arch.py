"""Device architecture names: ``cpu``, ``sm90``/``sm100``/... (NVIDIA), ``gfx942`` (AMD), ``npu``."""

from __future__ import annotations

import re

from .errors import SpecError

_ARCH = re.compile(r"^(cpu|npu|sm\d{2,3}[a-z]?|gfx\d{3,4}[a-z]?)$")


def check_arch(arch: str) -> str:
    """Return ``arch`` normalised (lower case) or raise :class:`SpecError`."""
    norm = str(arch).strip().lower()
    if not _ARCH.match(norm):
        raise SpecError(
            "arch",
            f"{arch!r} is not an architecture name; expected 'cpu', 'smNN' (NVIDIA compute "
            "capability, e.g. sm90, sm100), 'gfxNNN' (AMD) or 'npu', or 'auto' to detect",
        )
    return norm


def sm_version(arch: str) -> int | None:
    """The NVIDIA compute capability as an int (``sm90`` -> 90), or None for other devices."""
    if arch.startswith("sm"):
        return int(re.sub(r"[a-z]$", "", arch[2:]))
    return None


def detect_arch() -> str:
    """The architecture of CUDA device 0, or ``cpu`` when no CUDA/HIP device is present.

    Imports torch, so it is only called when a spec asks for ``arch="auto"``.
    """
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if getattr(torch.version, "hip", None):
        name = torch.cuda.get_device_properties(0).gcnArchName
        return check_arch(name.split(":")[0])
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm{major}{minor}"
