"""What DeepEP v1.2.1's kernels accept, as declarations and pure functions of (spec, dispatch
config). Each fact names where in DeepEP's sources it comes from (tag v1.2.1):

* low-latency (``csrc/kernels/internode_ll.cu``, ``csrc/deep_ep.cpp``): hidden sizes of
  ``SWITCH_HIDDEN`` in ``launch.cuh`` (2048, 2560, 4096, 5120, 6144, 7168, 8192; no 3072 in
  v1.2.1); FP8 casting needs ``hidden % 512 == 0`` (all of them); top-k at most 11
  (``kNumMaxTopK`` of dispatch and combine); ``ranks x max tokens per rank`` a multiple of 4
  (TMA of the scales); at most 1024 tokens per rank (``FINISHED_SUM_TAG``: a larger per-expert
  count makes the send-completion counter ambiguous); every rank reachable over NVSHMEM (P2P
  over NVLink, IBGDA across nodes: checked when the buffer is built); one queue pair per
  local expert (:func:`.sizing.qps_per_rank`).
* normal (``intranode.cu`` / ``internode.cu``): 2, 4 or 8 NVLink ranks (``SWITCH_RANKS``), or
  8 x {2, 4, 8, 16, 18, 20} ranks over RDMA (``SWITCH_RDMA_RANKS``, at most 160); rows of
  16-byte multiples (bf16: hidden % 8, fp8: hidden % 16); at most 128 FP8 scale groups per
  token (hidden <= 16384); at most 1024 local experts (``NUM_MAX_LOCAL_EXPERTS``).

Which a2a mode, layouts and wire formats each mode serves is declared on its
:class:`moe_core.Variant` (see ``__init__``); the host checks those.
"""

from __future__ import annotations

from moe_core import A2A, Reason
from moe_core.tokens import MODE_LAYOUTS, Wire

from .sizing import MAX_SCALES, buffer_limits, low_latency_bytes, normal_buffer_bytes

NORMAL, LOW_LATENCY = "normal", "low_latency"
#: The DeepEP release the plugin is written and tested against (its Buffer API).
DEEPEP_VERSION = "1.2.1"
LL_HIDDEN = (2048, 2560, 4096, 5120, 6144, 7168, 8192)
LL_MAX_TOKENS = 1024
LL_MAX_TOPK = 11
LL_FP8_HIDDEN_ALIGN = 512
LL_TMA_ROWS = 4
NVL_PEERS = (2, 4, 8)
RDMA_NODES = (2, 4, 8, 16, 18, 20)
MAX_LOCAL_EXPERTS = 1024
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
        elif dispatch.wire.quantized and spec.hidden_size % LL_FP8_HIDDEN_ALIGN:
            out.append((Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size}: quantized low-latency "
                                                f"dispatch needs a multiple of {LL_FP8_HIDDEN_ALIGN}"))
        if spec.top_k > LL_MAX_TOPK:
            out.append((Reason.SHAPE_UNSUPPORTED, f"top-k {spec.top_k} > {LL_MAX_TOPK}, the "
                                                  "low-latency kernels' most"))
        if dispatch.max_tokens_per_rank > LL_MAX_TOKENS:
            out.append((Reason.LIMIT_EXCEEDED, f"max dispatch tokens per rank "
                                               f"{dispatch.max_tokens_per_rank} > {LL_MAX_TOKENS}"))
        if (spec.ep_size * dispatch.max_tokens_per_rank) % LL_TMA_ROWS:
            out.append((Reason.SHAPE_UNALIGNED, f"ep_size {spec.ep_size} x {dispatch.max_tokens_per_rank} "
                                                f"tokens per rank is not a multiple of {LL_TMA_ROWS} "
                                                "(the low-latency scales' TMA rows)"))
    else:
        why = _ranks_reason(spec.ep_size)
        if why:
            out.append((Reason.PARALLEL_UNSUPPORTED, why))
        row = 1 if dispatch.wire.quantized else 2
        if (spec.hidden_size * row) % 16:
            out.append((Reason.SHAPE_UNALIGNED, f"hidden {spec.hidden_size} {dispatch.wire} rows "
                                                "must be 16-byte multiples"))
        if dispatch.wire.quantized and -(-spec.hidden_size // 128) > MAX_SCALES:
            out.append((Reason.SHAPE_UNSUPPORTED, f"hidden {spec.hidden_size} has more than "
                                                  f"{MAX_SCALES} FP8 scale groups per token"))
        if spec.local_experts > MAX_LOCAL_EXPERTS:
            out.append((Reason.LIMIT_EXCEEDED, f"{spec.local_experts} local experts > "
                                               f"{MAX_LOCAL_EXPERTS}"))
    if not out:
        why = buffer_limits(*buffer_bytes(variant, spec, dispatch), variant == LOW_LATENCY)
        if why:
            out.append((Reason.LIMIT_EXCEEDED, why))
    return out


def buffer_bytes(variant: str, spec, dispatch) -> tuple[int, int]:
    """``(nvl, rdma)`` bytes of the buffer the dispatcher allocates on each rank."""
    if variant == LOW_LATENCY:
        return 0, low_latency_bytes(dispatch.max_tokens_per_rank, spec.hidden_size, spec.ep_size,
                                    spec.num_experts)
    return normal_buffer_bytes(spec.hidden_size, spec.ep_size)
