"""The bytes ``torch:all_to_all`` moves: one row per (token, destination rank), holding the
token's activations in the wire format, its top-k ids and its top-k weights.

Packing (gather, quantize, write ids and weights) and unpacking (read, dequantize or keep
the FP8 tensors, scatter each row to every slot the runner's layout gives it) are one
Triton kernel each on CUDA; on CPU the same functions run in PyTorch (and the Triton
kernels run there under ``TRITON_INTERPRET=1``, which is how the tests compare the two).
Neither reads anything back to the host.

Row layout (bytes; every region 4-byte aligned, rows 16-byte aligned)::

    bf16:  x bf16 [H]                      | ids int32 [k] | weights fp32 [k] | pad
    fp8:   q e4m3 [H] | pad | scales fp32 [G] | ids int32 [k] | weights fp32 [k] | pad
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from ..kernels import interpreting, on_triton
from ..quant.fp8 import ACT_GROUP, dequantize_fp8_blockwise, quantize_fp8_blockwise
from ..sizes import cdiv, round_up
from ..tokens import Wire

#: Groups of 128 columns one Triton program handles.
_GROUPS_PER_PROGRAM = 4


@dataclass(frozen=True)
class RowFormat:
    hidden: int
    top_k: int
    wire: Wire

    def __post_init__(self) -> None:
        if self.wire not in (Wire.BF16, Wire.FP8, Wire.FP8_UE8M0):
            raise ValueError(f"torch:all_to_all moves bf16 or fp8 rows, not {self.wire}")

    @property
    def fp8(self) -> bool:
        return self.wire is not Wire.BF16

    @property
    def groups(self) -> int:
        return cdiv(self.hidden, ACT_GROUP)

    @property
    def scale_offset(self) -> int:
        """Byte offset of the fp32 scales (fp8 rows)."""
        return round_up(self.hidden, 4)

    @property
    def x_bytes(self) -> int:
        return self.scale_offset + 4 * self.groups if self.fp8 else 2 * self.hidden

    @property
    def ids_offset(self) -> int:
        return round_up(self.x_bytes, 4)

    @property
    def weights_offset(self) -> int:
        return self.ids_offset + 4 * self.top_k

    @property
    def row_bytes(self) -> int:
        return round_up(self.weights_offset + 4 * self.top_k, 16)

    # -- views of a buffer of rows ------------------------------------------------------
    def ids(self, buf: torch.Tensor) -> torch.Tensor:
        """``[N, k]`` int32 view of the rows' top-k ids."""
        o = self.ids_offset // 4
        return buf.view(torch.int32)[:, o:o + self.top_k]

    def weights(self, buf: torch.Tensor) -> torch.Tensor:
        """``[N, k]`` fp32 view of the rows' top-k weights."""
        o = self.weights_offset // 4
        return buf.view(torch.float32)[:, o:o + self.top_k]

    def wire_tensors(self, buf: torch.Tensor):
        """The rows' activations as they travel: ``x bf16 [N, H]`` or ``(q [N, H], scales [N, G])``."""
        if not self.fp8:
            return buf.view(torch.bfloat16)[:, :self.hidden]
        o = self.scale_offset // 4
        return (buf.view(torch.float8_e4m3fn)[:, :self.hidden],
                buf.view(torch.float32)[:, o:o + self.groups])


# -- packing -----------------------------------------------------------------------------
def pack(fmt: RowFormat, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
         dest: torch.Tensor, rows: int) -> torch.Tensor:
    """``x [T, H]`` with top-k ``ids``/``weights [T, k]`` -> ``[rows, row_bytes]`` uint8:
    token ``t``'s row written at every ``dest[t, r] >= 0`` (``dest [T, R]`` int32)."""
    buf = torch.empty(rows, fmt.row_bytes, dtype=torch.uint8, device=x.device)
    if rows and x.shape[0]:
        (_pack_triton if on_triton(x) else _pack_torch)(fmt, x, ids, weights, dest, buf)
    return buf


def _pack_torch(fmt, x, ids, weights, dest, buf) -> None:
    token, _ = (dest >= 0).nonzero(as_tuple=True)
    at = dest[dest >= 0].long()
    src = x.index_select(0, token)
    if fmt.fp8:
        q, s = quantize_fp8_blockwise(src, 1, ACT_GROUP, ue8m0=fmt.wire is Wire.FP8_UE8M0)
        wq, ws = fmt.wire_tensors(buf)
        wq[at] = q
        ws[at] = s.reshape(-1, fmt.groups)
    else:
        fmt.wire_tensors(buf)[at] = src.to(torch.bfloat16)
    fmt.ids(buf)[at] = ids.index_select(0, token).to(torch.int32)
    fmt.weights(buf)[at] = weights.index_select(0, token).to(torch.float32)


def _pack_triton(fmt, x, ids, weights, dest, buf) -> None:
    import triton

    T, R = dest.shape
    k = fmt.top_k
    grid = (T, cdiv(fmt.groups, _GROUPS_PER_PROGRAM))
    _kernels()[0][grid](
        x.contiguous(), ids.contiguous(), weights.float().contiguous(), dest.contiguous(),
        buf.view(torch.bfloat16), buf.view(torch.float8_e4m3fn), buf.view(torch.float32),
        buf.view(torch.int32), fmt.hidden, fmt.groups, fmt.row_bytes, fmt.scale_offset // 4,
        fmt.ids_offset // 4, fmt.weights_offset // 4,
        R=R, K=k, KP=triton.next_power_of_2(k), FP8=fmt.fp8, UE8M0=fmt.wire is Wire.FP8_UE8M0,
        GPB=_GROUPS_PER_PROGRAM, INTERPRETED=interpreting())


# -- unpacking ---------------------------------------------------------------------------
def unpack(fmt: RowFormat, buf: torch.Tensor, dest: torch.Tensor, rows: int, *,
           keep_quantized: bool = False, batch_rows: int | None = None):
    """Received rows -> the runner's tokens: row ``i`` written at every ``dest[i, s] >= 0``
    (``dest [N, S]`` int32) of a ``[rows, H]`` output.

    Dequantized (bf16) unless ``keep_quantized`` (fp8 rows): then ``(q [rows, H], scales
    [rows, G])``; with ``batch_rows`` (``rows`` a multiple of it) the scales of each batch
    of that many rows are stored MN-major, shaped ``[rows / batch_rows, batch_rows, G]``
    (the layout DeepGEMM's masked kernels read). Rows no ``dest`` names are left unwritten.
    """
    H, G = fmt.hidden, fmt.groups
    keep = keep_quantized and fmt.fp8
    if keep:
        out = torch.empty(rows, H, dtype=torch.float8_e4m3fn, device=buf.device)
        if batch_rows:
            if rows % batch_rows:
                raise ValueError(f"{rows} rows are not whole batches of {batch_rows}")
            scales = torch.empty(rows // batch_rows, G, batch_rows, dtype=torch.float32,
                                 device=buf.device).transpose(1, 2)
        else:
            scales = torch.empty(rows, G, dtype=torch.float32, device=buf.device)
        result = (out, scales)
    else:
        result = torch.empty(rows, H, dtype=torch.bfloat16, device=buf.device)
    if rows and buf.shape[0]:
        (_unpack_triton if on_triton(buf) else _unpack_torch)(fmt, buf, dest, result, keep,
                                                               batch_rows or 0)
    return result


def _unpack_torch(fmt, buf, dest, result, keep, batch_rows) -> None:
    row, _ = (dest >= 0).nonzero(as_tuple=True)
    at = dest[dest >= 0].long()
    wire = fmt.wire_tensors(buf)
    if keep:
        result[0][at] = wire[0].index_select(0, row)
        scales = wire[1].index_select(0, row)
        if batch_rows:
            result[1][at // batch_rows, at % batch_rows] = scales
        else:
            result[1][at] = scales
    elif fmt.fp8:
        q, s = wire[0].index_select(0, row), wire[1].index_select(0, row)
        result[at] = dequantize_fp8_blockwise(q, s, 1, ACT_GROUP).to(torch.bfloat16)
    else:
        result[at] = wire.index_select(0, row)


def _unpack_triton(fmt, buf, dest, result, keep, batch_rows) -> None:
    N, S = dest.shape
    grid = (N, cdiv(fmt.groups, _GROUPS_PER_PROGRAM))
    if keep:
        out_x, out_q, out_s = result[0], result[0], result[1]
    else:
        out_x, out_q, out_s = result, buf.view(torch.float8_e4m3fn), buf.view(torch.float32)
    _kernels()[1][grid](
        buf.view(torch.bfloat16), buf.view(torch.float8_e4m3fn), buf.view(torch.float32),
        dest.contiguous(), out_x, out_q, out_s, fmt.hidden, fmt.groups, fmt.row_bytes,
        fmt.scale_offset // 4, batch_rows, S=S, FP8=fmt.fp8, KEEP=keep,
        GPB=_GROUPS_PER_PROGRAM)


# -- Triton --------------------------------------------------------------------------------
@cache
def _kernels():
    import triton
    import triton.language as tl

    # Module globals, not locals: Triton's interpreter runs a kernel against its module's
    # globals (a closure's names are not seen), and these kernels are defined in a function.
    global fp8_grid_values, fp8_group_scales
    from ..kernels.triton_fp8 import fp8_grid_values, fp8_group_scales

    @triton.jit
    def pack_rows(x_ptr, ids_ptr, w_ptr, dest_ptr, ob_ptr, oq_ptr, of_ptr, oi_ptr,
                  H, G, ROW_B, S_OFF, I_OFF, W_OFF, R: tl.constexpr, K: tl.constexpr,
                  KP: tl.constexpr, FP8: tl.constexpr, UE8M0: tl.constexpr, GPB: tl.constexpr,
                  INTERPRETED: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        g = blk * GPB + tl.arange(0, GPB)
        cols = g[:, None] * 128 + tl.arange(0, 128)[None, :]
        in_h = cols < H
        x = tl.load(x_ptr + t * H + cols, mask=in_h, other=0.0).to(tl.float32)
        if FP8:  # the arithmetic of quantize_fp8_blockwise, spelled once in triton_fp8
            scale = fp8_group_scales(x, AXIS=1, UE8M0=UE8M0)
            q = fp8_grid_values(x, scale, AXIS=1, INTERPRETED=INTERPRETED).to(tl.float8e4nv)
        kk = tl.arange(0, KP)
        for r in tl.static_range(R):
            d = tl.load(dest_ptr + t * R + r)
            if d >= 0:
                row = d.to(tl.int64)
                if FP8:
                    tl.store(oq_ptr + row * ROW_B + cols, q, mask=in_h)
                    tl.store(of_ptr + row * (ROW_B // 4) + S_OFF + g, scale, mask=g < G)
                else:
                    tl.store(ob_ptr + row * (ROW_B // 2) + cols, x.to(tl.bfloat16), mask=in_h)
                if blk == 0:
                    ids = tl.load(ids_ptr + t * K + kk, mask=kk < K, other=0).to(tl.int32)
                    wts = tl.load(w_ptr + t * K + kk, mask=kk < K, other=0.0)
                    tl.store(oi_ptr + row * (ROW_B // 4) + I_OFF + kk, ids, mask=kk < K)
                    tl.store(of_ptr + row * (ROW_B // 4) + W_OFF + kk, wts, mask=kk < K)

    @triton.jit
    def unpack_rows(b_ptr, q_ptr, f_ptr, dest_ptr, ox_ptr, oq_ptr, os_ptr, H, G, ROW_B, S_OFF,
                    BATCH, S: tl.constexpr, FP8: tl.constexpr, KEEP: tl.constexpr,
                    GPB: tl.constexpr):
        i = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1) * GPB + tl.arange(0, GPB)
        cols = g[:, None] * 128 + tl.arange(0, 128)[None, :]
        in_h = cols < H
        in_g = g < G
        if FP8:
            q = tl.load(q_ptr + i * ROW_B + cols, mask=in_h, other=0.0)
            sc = tl.load(f_ptr + i * (ROW_B // 4) + S_OFF + g, mask=in_g, other=0.0)
            if not KEEP:
                v = (q.to(tl.float32) * sc[:, None]).to(tl.bfloat16)
        else:
            v = tl.load(b_ptr + i * (ROW_B // 2) + cols, mask=in_h, other=0.0)
        for s in tl.static_range(S):
            d = tl.load(dest_ptr + i * S + s)
            if d >= 0:
                row = d.to(tl.int64)
                if KEEP:
                    tl.store(oq_ptr + row * H + cols, q, mask=in_h)
                    if BATCH > 0:  # MN-major scales per batch of BATCH rows
                        at = (row // BATCH) * G * BATCH + g * BATCH + row % BATCH
                    else:
                        at = row * G + g
                    tl.store(os_ptr + at, sc, mask=in_g)
                else:
                    tl.store(ox_ptr + row * H + cols, v, mask=in_h)

    return pack_rows, unpack_rows
