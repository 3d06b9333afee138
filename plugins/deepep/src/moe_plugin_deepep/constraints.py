"""What DeepEP's kernels accept, as pure functions of (spec, dispatch config).

Facts from DeepEP's sources: low-latency kernels are compiled for a fixed set of hidden
sizes and at most 1024 dispatch tokens per rank (its FINISHED_SUM_TAG); normal kernels run
on 2, 4 or 8 NVLink peers in a node, or on several nodes of 8 over RDMA; low-latency mode
needs every rank reachable through NVSHMEM with IBGDA (checked when the buffer is built).
"""

from __future__ import annotations

from moe_core import A2A
from moe_core.availability import missing_module
from moe_core.dispatch import CONTIGUOUS, MASKED, STANDARD

NORMAL, LOW_LATENCY = "normal", "low_latency"
LL_HIDDEN = (2048, 2560, 3072, 4096, 5120, 6144, 7168, 8192)
LL_MAX_TOKENS = 1024
NVL_PEERS = (2, 4, 8)
RDMA_NODES = (2, 4, 8, 16, 18, 20)
MODE = {NORMAL: A2A.DEEPEP_NORMAL, LOW_LATENCY: A2A.DEEPEP_LL}
LAYOUTS = {NORMAL: (STANDARD, CONTIGUOUS), LOW_LATENCY: (MASKED,)}
DTYPES = {NORMAL: ("bf16", "fp8"), LOW_LATENCY: ("bf16", "fp8", "nvfp4")}


def _ranks_reason(ep: int) -> str | None:
    if ep in NVL_PEERS or (ep % 8 == 0 and ep // 8 in RDMA_NODES):
        return None
    return (f"normal mode runs on {'/'.join(map(str, NVL_PEERS))} NVLink ranks or 8 x "
            f"{{{', '.join(map(str, RDMA_NODES))}}} RDMA ranks, not ep_size={ep}")


def reasons(variant: str, spec, dispatch) -> list[str]:
    """Every reason ``variant`` cannot deliver ``dispatch`` for ``spec`` (empty: it can)."""
    out = []
    if spec.a2a is not MODE[variant]:
        out.append(f"serves a2a {MODE[variant].value!r}; the spec asks {spec.a2a.value!r}")
    if not spec.is_nvidia:
        out.append(f"needs an NVIDIA GPU (arch {spec.arch})")
    if spec.act_dtype != "bf16":
        out.append(f"dispatches bf16 activations (activation dtype {spec.act_dtype})")
    if dispatch.layout not in LAYOUTS[variant]:
        out.append(f"delivers {'/'.join(LAYOUTS[variant])} layouts; the runner asked for {dispatch.layout}")
    if dispatch.dtype not in DTYPES[variant]:
        out.append(f"moves {'/'.join(DTYPES[variant])}; the runner asked for {dispatch.dtype}")
    if spec.moe_tp_size != 1:
        out.append(f"experts must be split by EP alone (moe_tp={spec.moe_tp_size})")
    if variant == LOW_LATENCY:
        if spec.hidden_size not in LL_HIDDEN:
            out.append(f"hidden {spec.hidden_size} is not one of the low-latency kernels' sizes {LL_HIDDEN}")
        if dispatch.max_tokens_per_rank > LL_MAX_TOKENS:
            out.append(f"max dispatch tokens per rank {dispatch.max_tokens_per_rank} > {LL_MAX_TOKENS}")
    else:
        why = _ranks_reason(spec.ep_size)
        if why:
            out.append(why)
        if (spec.hidden_size * 2) % 16:
            out.append(f"hidden {spec.hidden_size} rows must be 16-byte aligned")
    missing = missing_module("deep_ep")
    if missing:
        out.append(missing)
    return out
