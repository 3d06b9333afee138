"""Routers of the bundled models: router logits -> (top-k weights, top-k expert ids)."""

from __future__ import annotations

import torch

from .models import RouterConfig

ROUTERS = ("softmax_topk", "softmax_topk_bias", "topk_softmax", "sigmoid_grouped_topk",
           "sigmoid_topk_bias", "top1_sigmoid", "sparsemixer")


def route(logits: torch.Tensor, router: RouterConfig, top_k: int,
          correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``top_k`` experts per token.

    :param logits: ``[T, E]`` router logits.
    :param correction_bias: ``[E]`` score bias of the sigmoid routers and of
        ``softmax_topk_bias`` (ERNIE-4.5), for the selection only.
    :return: ``(weights fp32 [T, k], ids int64 [T, k])``.
    """
    kind = router.kind
    if kind not in ROUTERS:
        raise ValueError(f"router {kind!r} is not one of {', '.join(ROUTERS)}")
    logits = logits.float()
    if kind in ("softmax_topk", "topk_softmax"):
        # topk_softmax (softmax over the selected logits) == softmax_topk renormalized.
        w, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
        if router.renormalize or kind == "topk_softmax":
            w = w / w.sum(-1, keepdim=True)
    elif kind == "softmax_topk_bias":
        probs = torch.softmax(logits, -1)
        choice = probs if correction_bias is None else probs + correction_bias.float()
        ids = choice.topk(top_k, dim=-1).indices
        w = probs.gather(1, ids)
        if router.renormalize:
            w = w / w.sum(-1, keepdim=True)
    elif kind == "top1_sigmoid":
        w, ids = logits.topk(top_k, dim=-1)
        w = torch.sigmoid(w)
    elif kind == "sparsemixer":
        w, ids = _sparsemixer(logits, top_k)
    else:
        w, ids = _sigmoid_grouped(logits, router, top_k, correction_bias)
    return w * (router.routed_scaling_factor or 1.0), ids


def _sigmoid_grouped(logits, router: RouterConfig, top_k, bias):
    """DeepSeek-V3 style: groups ranked by their best two biased scores, then top-k."""
    scores = torch.sigmoid(logits)
    choice = scores if bias is None else scores + bias.float()
    T, E = choice.shape
    n_group = router.n_group or 1
    if n_group > 1:
        groups = choice.view(T, n_group, E // n_group)
        group_score = groups.topk(min(2, E // n_group), dim=-1).values.sum(-1)
        keep = group_score.topk(router.topk_group or n_group, dim=-1).indices
        mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~mask.repeat_interleave(E // n_group, dim=1), float("-inf"))
    ids = choice.topk(top_k, dim=-1).indices
    w = scores.gather(1, ids)
    if router.renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


def _sparsemixer(logits, top_k, eps: float = 0.01):
    """Phi-3.5-MoE's sparsemixer at inference: each pick is a softmax over the experts
    within ``2*eps`` (relative) of the best remaining one."""
    ws, idss = [], []
    masked = logits.clone()
    for _ in range(top_k):
        best, idx = masked.max(dim=-1, keepdim=True)
        factor = logits.abs().clamp(min=best.abs())
        near = ((best - logits) / factor) <= 2 * eps
        p = torch.softmax(masked.masked_fill(~near, float("-inf")), dim=-1)
        ws.append(p.gather(1, idx))
        idss.append(idx)
        masked = masked.scatter(1, idx, float("-inf"))
    return torch.cat(ws, 1), torch.cat(idss, 1)
