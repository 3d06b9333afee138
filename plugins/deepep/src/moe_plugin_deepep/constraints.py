"""What DeepEP's kernels accept, as declarations and pure functions of (spec, dispatch config).

Facts from DeepEP's sources: low-latency kernels are compiled for a fixed set of hidden
sizes and at most 1024 dispatch tokens per rank (its FINISHED_SUM_TAG); normal kernels run
on 2, 4 or 8 NVLink peers in a node, or on several nodes of 8 over RDMA; low-latency mode
needs every rank reachable through NVSHMEM with IBGDA (checked when the buffer is built).
Which a2a mode, layouts and wire formats each mode serves is declared on its
:class:`moe_core.Variant` (see ``__init__``); the host checks those.
"""

from __future__ import annotations

from moe_core import A2A, Reason
from moe_core.tokens import MODE_LAYOUTS, Wire

NORMAL, LOW_LATENCY = "normal", "low_latency"
LL_HIDDEN = (2048, 2560, 3072, 4096, 5120, 6144, 7168, 8192)
LL_MAX_TOKENS = 1024
NVL_PEERS = (2, 4, 8)
RDMA_NODES = (2, 4, 8, 16, 18, 20)
MODE = {NORMAL: A2A.DEEPEP_NORMAL, LOW_LATENCY: A2A.DEEPEP_LL}
#: Each mode delivers its a2a mode's layouts (the mode is DeepEP's).
LAYOUTS = {v: MODE_LAYOUTS[m] for v, m in MODE.items()}
WIRE = {NORMAL: (Wire.BF16, Wire.FP8, Wire.FP8_UE8M0),
        LOW_LATENCY: (Wire.BF16, Wire.FP8, Wire.FP8_UE8M0, Wire.NVFP4)}


def _ranks_reason(ep: int) -> str | None:
    if ep in NVL_PEERS or (ep % 8 == 0 and ep // 8 in RDMA_NODES):
        return None
    return (f"normal mode runs on {'/'.join(map(str, NVL_PEERS))} NVLink ranks or 8 x "
            f"{{{', '.join(map(str, RDMA_NODES))}}} RDMA ranks, not ep_size={ep}")


def reasons(variant: str, spec, dispatch) -> list[tuple[Reason, str]]:
    """Every (code, detail) why ``variant`` cannot deliver ``dispatch`` for ``spec`` (empty: it can)."""
    out = []
    if not spec.is_nvidia:
        out.append((Reason.ARCH_UNSUPPORTED, f"needs an NVIDIA GPU (arch {spec.arch})"))
    if spec.act_dtype != "bf16":
        out.append((Reason.ACT_DTYPE_UNSUPPORTED,
                    f"dispatches bf16 activations (activation dtype {spec.act_dtype})"))
    if spec.moe_tp_size != 1:
        out.append((Reason.PARALLEL_UNSUPPORTED,
                    f"experts must be split by EP alone (moe_tp={spec.moe_tp_size})"))
    if variant == LOW_LATENCY:
        if spec.hidden_size not in LL_HIDDEN:
            out.append((Reason.SHAPE_UNSUPPORTED, f"hidden {spec.hidden_size} is not one of the "
                                                  f"low-latency kernels' sizes {LL_HIDDEN}"))
        if dispatch.max_tokens_per_rank > LL_MAX_TOKENS:
            out.append((Reason.LIMIT_EXCEEDED, f"max dispatch tokens per rank "
                                               f"{dispatch.max_tokens_per_rank} > {LL_MAX_TOKENS}"))
    else:
        why = _ranks_reason(spec.ep_size)
        if why:
            out.append((Reason.PARALLEL_UNSUPPORTED, why))
        if (spec.hidden_size * 2) % 16:
            out.append((Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size} rows must be 16-byte aligned"))
    return out
