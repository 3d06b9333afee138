"""transformers' own experts implementations as peers (``grouped_mm``, ``batched_mm``,
``deepgemm``: whichever the installed transformers registers).

One experts module of the model's family (its ``model_type`` from the bundled catalogue),
built on the meta device from the family's config class and given our canonical weights in
the module's own layout (transposed, interleaved, biased: read from the flags transformers
puts on it, through :mod:`moe_core.integrations.hf_experts`, the one reader of experts
modules). Each implementation is then called as transformers calls it:
``ALL_EXPERTS_FUNCTIONS[name](module, hidden_states, top_k_index, top_k_weights)``.
"""

from __future__ import annotations

import importlib

import torch

from moe_core.spec import MoESpec, Quant
from moe_core.weights import MoEWeights

from . import PeerUnavailable

#: transformers' experts implementations the benchmark compares (in this order).
IMPLEMENTATIONS = ("grouped_mm", "batched_mm", "deepgemm")


def implementations_here() -> dict[str, str | None]:
    """Implementation -> None where the installed transformers registers it, else why not."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as e:
        return {impl: f"transformers' ExpertsInterface is not importable ({e})" for impl in IMPLEMENTATIONS}
    have = list(ALL_EXPERTS_FUNCTIONS)
    return {impl: None if impl in ALL_EXPERTS_FUNCTIONS else
            f"not in this transformers' ExpertsInterface ({', '.join(have)})" for impl in IMPLEMENTATIONS}


def experts_class(model_type: str) -> type[torch.nn.Module]:
    """The family's experts class: the one its modeling module decorates with
    ``@use_experts_implementation`` (which gives it ``_apply_gate``)."""
    name = f"transformers.models.{model_type}.modeling_{model_type}"
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise PeerUnavailable(f"transformers has no {name} ({e})") from None
    found = [c for c in vars(module).values()
             if isinstance(c, type) and issubclass(c, torch.nn.Module) and c.__module__ == name
             and hasattr(c, "_apply_gate") and c.__name__.endswith("Experts")]
    if len(found) != 1:
        raise PeerUnavailable(f"{name} has {len(found)} experts classes decorated with "
                              f"@use_experts_implementation ({[c.__name__ for c in found]}); expected one")
    return found[0]


def family_config(model_type: str, spec: MoESpec):
    """The family's config with the spec's experts (``E`` local experts, top-k, sizes)."""
    from transformers import AutoConfig

    from moe_core.integrations.hf_experts import EXPERT_KEYS, TOP_K_KEYS

    cfg = AutoConfig.for_model(model_type)
    cfg.hidden_size = spec.hidden_size
    size_key = "moe_intermediate_size" if hasattr(cfg, "moe_intermediate_size") else "intermediate_size"
    setattr(cfg, size_key, spec.intermediate_per_partition)
    for key in EXPERT_KEYS:
        if hasattr(cfg, key):
            setattr(cfg, key, spec.local_experts)
    for key in TOP_K_KEYS:
        if hasattr(cfg, key):
            setattr(cfg, key, spec.top_k)
    if spec.swiglu_limit is not None and hasattr(cfg, "swiglu_limit"):
        cfg.swiglu_limit = spec.swiglu_limit
    return cfg


def module_tensors(weights: MoEWeights, layout) -> dict[str, torch.Tensor]:
    """Canonical bf16 ``weights`` in the module's layout (the inverse of
    :func:`moe_core.integrations.hf_experts.canonical_weights`), by parameter name."""
    gu, down = weights.w13, weights.w2
    b13, b2 = weights.w13_bias, weights.w2_bias
    if layout.interleaved:  # canonical [Gate; Up] -> gate at even rows, up at odd
        gu = torch.stack(gu.chunk(2, dim=1), dim=2).flatten(1, 2)
        if b13 is not None:
            b13 = torch.stack(b13.chunk(2, dim=1), dim=2).flatten(1, 2)
    if layout.transposed:
        gu, down = gu.transpose(1, 2), down.transpose(1, 2)
    out = {layout.up_name: gu.contiguous(), "down_proj": down.contiguous()}
    if layout.has_bias:
        out[f"{layout.up_name}_bias"] = b13.to(torch.bfloat16).contiguous()
        out["down_proj_bias"] = b2.to(torch.bfloat16).contiguous()
    return out


def build_module(model_type: str, spec: MoESpec, weights: MoEWeights) -> torch.nn.Module:
    """The family's experts module holding ``weights``; :class:`PeerUnavailable` where its
    computation is not the spec's (another activation, biases the spec lacks, ...)."""
    from moe_core.integrations.hf_experts import UnsupportedExperts, experts_activation, experts_layout

    if spec.quant is not Quant.BF16:
        raise PeerUnavailable(f"transformers' experts implementations run bf16 weights; the layer is "
                              f"{spec.quant.value}")
    cls = experts_class(model_type)
    with torch.device("meta"):
        module = cls(family_config(model_type, spec))
    try:
        layout = experts_layout(module)
        got = experts_activation(module, layout)
    except UnsupportedExperts as e:
        raise PeerUnavailable(str(e)) from None
    want = (spec.activation, spec.swiglu_limit, spec.swiglu_alpha)
    if got != want or layout.has_bias != spec.has_bias:
        raise PeerUnavailable(f"{cls.__name__} computes {got} with bias={layout.has_bias}; the layer is "
                              f"{want} with bias={spec.has_bias}")
    for name, tensor in module_tensors(weights, layout).items():
        old = getattr(module, name)
        if tuple(old.shape) != tuple(tensor.shape):
            raise PeerUnavailable(f"{cls.__name__}.{name} is {tuple(old.shape)}; the layer's weights "
                                  f"give {tuple(tensor.shape)}")
        setattr(module, name, torch.nn.Parameter(tensor, requires_grad=False))
    return module.eval()


def experts_call(impl: str, module: torch.nn.Module):
    """``call(x, topk_weights, topk_ids) -> [T, H]`` through transformers' ``impl``."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    fn = ALL_EXPERTS_FUNCTIONS[impl]

    def call(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(module, x, topk_ids, topk_weights)

    return call
