"""The weight layouts the CuTe-DSL NVFP4 kernels read, as plain PyTorch (tested on CPU).

* **Swizzled block scales** (v1, and the storage of v2's): per expert, scales ``[M, K]``
  (``K`` = columns / 16) are padded to ``[ceil(M/128)*128, ceil(K/4)*4]`` and stored as
  tiles ``(m_tile, k_tile, m % 32, (m % 128) // 32, k % 4)``, the layout NVFP4 tensor-core
  MMAs fetch 128x4 scale tiles in.
* **MMA view** (v2): the same storage seen as the 6-D ``(32, 4, m_tiles, 4, k_tiles,
  experts)`` tensor CuTe-DSL grouped GEMMs take; a view, no data moves.
* **Interleaved w13 halves** (v2): rows in groups of 64, up first:
  ``up[0:64], gate[0:64], up[64:128], gate[64:128], ...``.
"""

from __future__ import annotations

import torch

from moe_core.errors import WeightsError
from moe_core.sizes import round_up

ROW_TILE, COL_TILE = 128, 4
INTERLEAVE = 64


def swizzle_scales(scale: torch.Tensor) -> torch.Tensor:
    """``[E, M, K]`` block scales -> swizzled ``[E, M_pad, K_pad]`` (padding is zero)."""
    E, M, K = scale.shape
    Mp, Kp = round_up(M, ROW_TILE), round_up(K, COL_TILE)
    padded = scale.new_zeros(E, Mp, Kp)
    padded[:, :M, :K] = scale
    tiles = padded.reshape(E, Mp // ROW_TILE, 4, 32, Kp // COL_TILE, COL_TILE)
    return tiles.permute(0, 1, 4, 3, 2, 5).contiguous().reshape(E, Mp, Kp)


def unswizzle_scales(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_scales`: ``[E, M_pad, K_pad]`` -> ``[E, rows, cols]``."""
    E, Mp, Kp = swizzled.shape
    tiles = swizzled.reshape(E, Mp // ROW_TILE, Kp // COL_TILE, 32, 4, COL_TILE)
    return tiles.permute(0, 1, 4, 3, 2, 5).reshape(E, Mp, Kp)[:, :rows, :cols]


def mma_view(swizzled: torch.Tensor) -> torch.Tensor:
    """Swizzled ``[E, M_pad, K_pad]`` -> the 6-D MMA view ``(32, 4, m_tiles, 4, k_tiles, E)``."""
    E, Mp, Kp = swizzled.shape
    return swizzled.view(E, Mp // ROW_TILE, Kp // COL_TILE, 32, 4, COL_TILE).permute(3, 4, 1, 5, 2, 0)


def from_mma_view(view: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mma_view` (back to swizzled ``[E, M_pad, K_pad]`` storage)."""
    m32, m4, mt, k4, kt, E = view.shape
    return view.permute(5, 2, 4, 0, 1, 3).reshape(E, mt * m32 * m4, kt * k4)


def _check_halves(t: torch.Tensor, dim: int) -> int:
    rows = t.shape[dim]
    if rows % (2 * INTERLEAVE):
        raise WeightsError(f"w13 has {rows} rows; interleaving halves in groups of {INTERLEAVE} "
                           f"needs a multiple of {2 * INTERLEAVE}")
    return rows // 2


def interleave_halves(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``[Gate; Up]`` along ``dim`` -> ``up[0:64], gate[0:64], up[64:128], ...``."""
    half = _check_halves(t, dim)
    t = t.movedim(dim, 0)
    gate, up = t[:half], t[half:]
    groups = half // INTERLEAVE
    pair = torch.stack([up.reshape(groups, INTERLEAVE, *t.shape[1:]),
                        gate.reshape(groups, INTERLEAVE, *t.shape[1:])], dim=1)
    return pair.reshape(t.shape).movedim(0, dim).contiguous()


def deinterleave_halves(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`interleave_halves`."""
    half = _check_halves(t, dim)
    t = t.movedim(dim, 0)
    pair = t.reshape(half // INTERLEAVE, 2, INTERLEAVE, *t.shape[1:])
    up, gate = pair[:, 0].reshape(half, *t.shape[1:]), pair[:, 1].reshape(half, *t.shape[1:])
    return torch.cat([gate, up]).movedim(0, dim).contiguous()
