"""DeepEP v1.2.1's buffer sizing and queue-pair rule, as pure functions (tested on CPU;
the GPU test checks them against ``deep_ep.Buffer``'s own hints).

Read from v1.2.1's ``csrc/config.hpp`` (``Config::get_nvl_buffer_size_hint``,
``get_rdma_buffer_size_hint``, ``LowLatencyLayout``) and ``deep_ep/buffer.py``
(``get_dispatch_config``/``get_combine_config``, ``num_sms = 20``). The plugin uses them to
say, at resolution, how much memory a dispatcher will hold, and where a buffer would
break one of DeepEP's host assertions.
"""

from __future__ import annotations

from dataclasses import dataclass

NVL_PEERS = 8  # NUM_MAX_NVL_PEERS: GPUs of one NVLink domain (node)
MAX_RDMA_PEERS = 20  # NUM_MAX_RDMA_PEERS
ALIGN = 128  # NUM_BUFFER_ALIGNMENT_BYTES
NUM_SMS = 20  # Buffer.num_sms: SMs of the normal-mode kernels (channels = num_sms / 2)
SOURCE_META_BYTES = 8  # internode::SourceMeta: two ints
MAX_TOPK_SLOTS = 128  # kNumMaxTopK of the normal-mode buffer hints
MAX_SCALES = 128  # kNumMaxScales: fp8 scale groups per token in normal mode
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Config:
    """``deep_ep.Config(num_sms, nvl_send, nvl_recv, rdma_send, rdma_recv)`` (chunk sizes in tokens)."""

    nvl_send: int
    nvl_recv: int
    rdma_send: int
    rdma_recv: int
    num_sms: int = NUM_SMS

    @property
    def channels(self) -> int:
        return self.num_sms // 2


#: ``Buffer.get_dispatch_config`` / ``get_combine_config`` of v1.2.1, per EP size.
DISPATCH_CONFIG = {2: Config(24, 256, 6, 128), 4: Config(6, 256, 6, 128), 8: Config(6, 256, 6, 128),
                   16: Config(36, 288, 20, 128), 24: Config(8, 288, 32, 128),
                   32: Config(32, 288, 32, 128), 64: Config(20, 288, 28, 128),
                   128: Config(20, 560, 32, 128), 144: Config(32, 720, 12, 128),
                   160: Config(28, 720, 12, 128)}
COMBINE_CONFIG = {2: Config(10, 256, 6, 128), 4: Config(9, 256, 6, 128), 8: Config(4, 256, 6, 128),
                  16: Config(4, 288, 12, 128), 24: Config(1, 288, 8, 128),
                  32: Config(1, 288, 8, 128), 64: Config(1, 288, 20, 128),
                  128: Config(1, 560, 12, 128), 144: Config(2, 720, 8, 128),
                  160: Config(2, 720, 8, 128)}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def nvl_bytes(cfg: Config, hidden_bytes: int, ranks: int) -> int:
    """``Config::get_nvl_buffer_size_hint``: the NVLink buffer of normal mode."""
    rdma_ranks, nvl_ranks = max(ranks // NVL_PEERS, 1), min(ranks, NVL_PEERS)
    per_token = (hidden_bytes + SOURCE_META_BYTES + MAX_TOPK_SLOTS * 8 + MAX_TOPK_SLOTS * 4
                 + MAX_SCALES * 4)
    n = cfg.channels * nvl_ranks * (2 * rdma_ranks + 3) * 4
    n += cfg.channels * nvl_ranks * cfg.nvl_recv * per_token
    return _aligned(n)


def rdma_bytes(cfg: Config, hidden_bytes: int, ranks: int) -> int:
    """``Config::get_rdma_buffer_size_hint``: the RDMA buffer of normal mode (0 within a node)."""
    if ranks <= NVL_PEERS:
        return 0
    rdma_ranks = ranks // NVL_PEERS
    per_token = (hidden_bytes + SOURCE_META_BYTES + MAX_TOPK_SLOTS * 8 + MAX_TOPK_SLOTS * 4
                 + MAX_SCALES * 4 + 16) * 2
    n = cfg.channels * rdma_ranks * (NVL_PEERS * 2 + 2) * 2 * 4
    n += cfg.channels * rdma_ranks * cfg.rdma_recv * per_token
    return _aligned(n)


def normal_buffer_bytes(hidden: int, ranks: int) -> tuple[int, int]:
    """``(nvl, rdma)`` bytes the plugin allocates for normal mode: the larger of the dispatch
    and combine hints for bf16 rows (FP8 rows are smaller), as DeepEP's tests do."""
    cfgs = (DISPATCH_CONFIG[ranks], COMBINE_CONFIG[ranks])
    return (max(nvl_bytes(c, hidden * 2, ranks) for c in cfgs),
            max(rdma_bytes(c, hidden * 2, ranks) for c in cfgs))


def low_latency_bytes(max_tokens_per_rank: int, hidden: int, ranks: int, experts: int) -> int:
    """``get_low_latency_rdma_size_hint`` (``LowLatencyLayout``): two send, two receive and
    two signalling buffers, each sized for the larger of dispatch and combine."""
    scales = hidden // 128
    dispatch_msg = 16 + max(hidden * 2, hidden + scales * 4)
    combine_msg = scales * 4 + hidden * 2
    send = max(max_tokens_per_rank * dispatch_msg, experts * max_tokens_per_rank * combine_msg)
    recv = experts * max_tokens_per_rank * max(dispatch_msg, combine_msg)
    signal = _aligned(experts * 4)
    total = 2 * (send + recv + signal)
    return (total + ALIGN) // ALIGN * ALIGN  # sic: one alignment more when already aligned


def qps_per_rank(local_experts: int) -> int:
    """Queue pairs per peer for low-latency mode: at least one per local expert (the
    dispatch kernel asserts ``num_rc_per_pe >= num_local_experts``; DeepEP's docs ask for
    exactly that many)."""
    return max(1, local_experts)


def buffer_limits(nvl: int, rdma: int, low_latency: bool) -> str | None:
    """Why ``deep_ep_cpp.Buffer(...)`` would refuse these sizes (its host assertions), or None."""
    if nvl % ALIGN or rdma % ALIGN:
        return f"buffer sizes {nvl} / {rdma} are not multiples of {ALIGN} bytes"
    if nvl > INT_MAX and rdma:
        return f"NVLink buffer {nvl} bytes > 2^31 - 1 with an RDMA buffer"
    if not low_latency and rdma > INT_MAX:
        return f"normal-mode RDMA buffer {rdma} bytes > 2^31 - 1"
    return None
