"""The SM100 kernel path, written against FlashInfer's CuTe-DSL API.

**Never run**: the project's GPU machines are Hopper (SM90), where resolution declines both
variants before this module is imported. Two NVFP4 masked grouped GEMMs
(``flashinfer.cute_dsl.blockscaled_gemm.grouped_gemm_nt_masked``) with the activation
between them; v2 first lays the standard tokens out masked, v1 gets them from DeepEP.
"""

from __future__ import annotations

import torch

from moe_core.runner import GroupedRunner, masked_layout, valid_rows

from .constraints import V2
from .layouts import INTERLEAVE, mma_view, swizzle_scales

GEMM_ARGS = dict(ab_dtype="float4_e2m1fn", sf_dtype="float8_e4m3fn", c_dtype="bfloat16",
                 sf_vec_size=16)


class CuteDslRunner(GroupedRunner):
    def __init__(self, plan, weights):
        super().__init__(plan, weights)
        from flashinfer import fp4_quantize
        from flashinfer.cute_dsl.blockscaled_gemm import grouped_gemm_nt_masked

        self._quantize, self._gemm = fp4_quantize, grouped_gemm_nt_masked
        w = weights
        # The kernels take (data, scales) with the scales in the MMA view.
        self.s13 = w.w13_scale if plan.variant == V2 else mma_view(w.w13_scale)
        self.s2 = w.w2_scale if plan.variant == V2 else mma_view(w.w2_scale)
        self.g13, self.g2 = w.w13_global_scale.float(), w.w2_global_scale.float()

    def _act_quant(self, x: torch.Tensor, global_scale: torch.Tensor):
        """bf16 ``[E, M, K]`` -> NVFP4 data ``[E, M, K/2]`` and MMA-view scales."""
        E, M, K = x.shape
        q, s = self._quantize(x.reshape(E * M, K), global_scale, 16, False, True)
        s = swizzle_scales(s.view(torch.float8_e4m3fn).reshape(E, M, K // 16))
        return q.reshape(E, M, K // 2), mma_view(s)

    def _gemm_masked(self, a, sfa, b, sfb, alpha, masked_m, n):
        E, M = a.shape[0], a.shape[1]
        out = torch.empty(E, M, n, dtype=torch.bfloat16, device=a.device)
        self._gemm((a.permute(1, 2, 0), sfa), (b.permute(1, 2, 0), sfb), out.permute(1, 2, 0),
                   masked_m.int(), alpha=alpha.reshape(1, 1, E), alpha_dtype="float32",
                   **GEMM_ARGS)
        return out

    def _experts(self, a, sfa, x_scale, masked_m):
        I = self.plan.intermediate_padded
        h = self._gemm_masked(a, sfa, self.weights.w13, self.s13, self.g13 / x_scale, masked_m, 2 * I)
        if self.plan.variant == V2:  # interleaved (up, gate) groups of 64 columns
            pair = h.unflatten(-1, (-1, 2, INTERLEAVE))
            up, gate = pair[..., 0, :].flatten(-2), pair[..., 1, :].flatten(-2)
        else:
            gate, up = h[..., :I], h[..., I:]
        act = (torch.nn.functional.silu(gate.float()) * up.float()).bfloat16()
        a2, sfa2 = self._act_quant(act, x_scale)
        return self._gemm_masked(a2, sfa2, self.weights.w2, self.s2, self.g2 / x_scale, masked_m,
                                 self.spec.hidden_size)

    def run_masked(self, x, masked_m):
        """BF16 tokens (S3: DeepEP moved BF16), quantized here with a unit global scale."""
        x_scale = torch.ones(1, device=x.device)
        a, sfa = self._act_quant(x, x_scale)
        return self._experts(a, sfa, x_scale, masked_m)

    def run_masked_quantized(self, quantized, masked_m):
        """NVFP4 tokens from DeepEP: ``(data [E, M, H/2], swizzled scales, input global scale)``."""
        data, scales, x_scale = quantized
        E, M = data.shape[:2]
        sfa = mma_view(scales.view(torch.float8_e4m3fn).reshape(E, M, -1))
        return self._experts(data, sfa, x_scale.float(), masked_m)

    def run_contiguous(self, x, offsets):
        buf, counts = masked_layout(x, offsets)
        out = self.run_masked(buf, counts)
        return out[valid_rows(counts, out.shape[1])]
