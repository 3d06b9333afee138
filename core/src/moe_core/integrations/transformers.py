"""Resolve the MoE layers of a Hugging Face ``transformers`` model at load
(``pip install moe-core[transformers]``).

:func:`apply` finds every routed-expert module (transformers >= 5 keeps each layer's experts
as one module with 3-D ``gate_up_proj`` / ``down_proj``), builds that layer's spec from the
model's own config, takes its weights into the canonical layout, resolves, processes the
weights and swaps the module for one that calls the resolved runner. The router, shared
experts and everything else stay the model's. :meth:`ApplyReport.undo` puts the original
modules back.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..arch import detect_arch
from ..errors import InputError, ModelConfigError
from ..host import Host
from ..layer import TORCH_DTYPES
from ..plan import Plan, Resolution
from ..spec import Activation, MoESpec
from ..weights import MoEWeights

_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


class UnsupportedExperts(InputError):
    """An experts module that computes something moe-core does not; ``feature`` names it."""

    def __init__(self, where: str, feature: str, detail: str):
        self.feature = feature
        super().__init__(f"{where}: {feature}: {detail}")


@dataclass(frozen=True)
class ExpertsLayout:
    """How one transformers experts module stores its weights and what it computes: the
    flags ``@use_experts_implementation`` puts on the module, read generically."""

    #: ``gate_up_proj`` is ``[E, H, 2I]`` (in x out) rather than ``[E, 2I, H]``.
    transposed: bool = False
    #: Gate and up alternate (gate at even columns) rather than ``[Gate; Up]``.
    interleaved: bool = False
    #: ``gate_up_proj_bias`` / ``down_proj_bias`` are added.
    has_bias: bool = False
    #: ``gate_up_proj`` holds gate and up (False: ``up_proj`` only, a non-gated MLP).
    gated: bool = True
    #: DBRX's ``mlp.w1 / v1 / w2`` 2-D stacks instead of 3-D parameters.
    dbrx: bool = False


def _param3(module: torch.nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, torch.Tensor) and p.dim() == 3


def _is_experts(module: torch.nn.Module) -> bool:
    return (_param3(module, "down_proj") and (_param3(module, "gate_up_proj") or _param3(module, "up_proj"))) \
        or isinstance(getattr(getattr(module, "mlp", None), "w1", None), torch.Tensor)


def experts_layout(module: torch.nn.Module, where: str = "") -> ExpertsLayout:
    """The module's layout, or :class:`UnsupportedExperts` naming what moe-core cannot run."""
    where = where or type(module).__name__
    if getattr(module, "has_post_expert_norm", False):
        raise UnsupportedExperts(where, "has_post_expert_norm",
                                 "a norm after each expert's down projection; expected none")
    params = list(inspect.signature(module.forward).parameters)
    if len(params) < 3:
        raise UnsupportedExperts(where, "forward", f"forward({', '.join(params)}) takes tokens "
                                 "already grouped per expert (the router's weights applied by the "
                                 "caller); expected forward(hidden_states, top_k_index, top_k_weights)")
    if isinstance(getattr(getattr(module, "mlp", None), "w1", None), torch.Tensor):
        return ExpertsLayout(dbrx=True)
    gated = _param3(module, "gate_up_proj")
    if not gated and not _param3(module, "up_proj"):
        raise UnsupportedExperts(where, "gate_up_proj", "expected 3-D gate_up_proj (or up_proj) "
                                 "and down_proj expert stacks")
    w = module.gate_up_proj if gated else module.up_proj
    E, a, b = w.shape
    transposed = getattr(module, "is_transposed", None)
    if transposed is None:  # not decorated: the down projection's shape tells
        transposed = module.down_proj.shape[1] == b // (2 if gated else 1) != a
    return ExpertsLayout(transposed=bool(transposed),
                         interleaved=not getattr(module, "is_concatenated", True),
                         has_bias=bool(getattr(module, "has_bias", False)) or
                         isinstance(getattr(module, "gate_up_proj_bias", None), torch.Tensor),
                         gated=gated)


def _act_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


_GATED_ACTS = {"SiLUActivation": Activation.SILU_GATED, "SiLU": Activation.SILU_GATED,
               "silu": Activation.SILU_GATED, "PytorchGELUTanh": Activation.GELU_GATED,
               "GELUTanh": Activation.GELU_GATED, "NewGELUActivation": Activation.GELU_GATED}
_PLAIN_ACTS = {"ReLUSquaredActivation": Activation.RELU2}


def experts_activation(module: torch.nn.Module, layout: ExpertsLayout,
                       where: str = "") -> tuple[Activation, float | None, float | None]:
    """``(activation, swiglu_limit, swiglu_alpha)`` the module computes."""
    where = where or type(module).__name__
    act = getattr(module, "act_fn", None) or getattr(getattr(module, "mlp", None), "activation_fn", None)
    if not layout.gated:
        kind = _PLAIN_ACTS.get(_act_name(act))
        if kind is None:
            raise UnsupportedExperts(where, "act_fn", f"non-gated experts with {_act_name(act)}; "
                                     "expected relu2")
        return kind, None, None
    gate = getattr(type(module), "_apply_gate", None)
    custom = gate is not None and gate.__module__ != "transformers.integrations.moe"
    limit = next((getattr(module, k) for k in ("limit", "swiglu_limit")
                  if isinstance(getattr(module, k, None), (int, float))), None)
    alpha = next((getattr(module, k) for k in ("alpha", "swiglu_alpha")
                  if isinstance(getattr(module, k, None), (int, float))), None)
    if getattr(module, "_fp8_experts_clamp_after_activation", False) and limit is not None \
            and limit != float("inf"):
        raise UnsupportedExperts(where, "swiglu_limits", "a clamp after the activation; expected "
                                 "a clamp of the gate and up inputs (swiglu_limit)")
    if custom and limit is not None and limit != float("inf"):
        if alpha is None and _act_name(act) not in ("SiLUActivation", "SiLU", "silu", "NoneType"):
            raise UnsupportedExperts(where, "act_fn", f"a clamped {_act_name(act)}; expected SiLU")
        return Activation.SWIGLU_LIMIT, float(limit), None if alpha is None else float(alpha)
    kind = _GATED_ACTS.get(_act_name(act))
    if kind is None:
        raise UnsupportedExperts(where, "act_fn", f"{_act_name(act)} between the projections; "
                                 f"expected one of {sorted(_GATED_ACTS)}")
    return kind, None, None


def canonical_weights(module: torch.nn.Module, layout: ExpertsLayout) -> MoEWeights:
    """The module's experts in moe-core's canonical layout (bf16 weights, fp32 biases)."""
    if layout.dbrx:
        mlp = module.mlp
        E = module.num_experts
        w1, v1, w2 = (t.detach().view(E, -1, t.shape[-1]) for t in (mlp.w1, mlp.v1, mlp.w2))
        gu, down = torch.cat([w1, v1], dim=1), w2.transpose(1, 2)
    else:
        gu = (module.gate_up_proj if layout.gated else module.up_proj).detach()
        down = module.down_proj.detach()
    if layout.transposed:
        gu, down = gu.transpose(1, 2), down.transpose(1, 2)
    b13 = b2 = None
    if layout.interleaved:
        gu = torch.cat([gu[:, 0::2], gu[:, 1::2]], dim=1)
    if layout.has_bias:
        b = module.gate_up_proj_bias.detach()
        b13 = (torch.cat([b[:, 0::2], b[:, 1::2]], dim=1) if layout.interleaved else b).float().contiguous()
        b2 = module.down_proj_bias.detach().float().contiguous()
    return MoEWeights(w13=gu.to(torch.bfloat16).contiguous(), w2=down.to(torch.bfloat16).contiguous(),
                      w13_bias=b13, w2_bias=b2)


_TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token", "moe_k",
               "moe_top_k")


def layer_spec(module: torch.nn.Module, layout: ExpertsLayout, config: Any, *, max_tokens: int,
               name: str = "", act_dtype: str | None = None) -> MoESpec:
    """The spec of one experts module, from the module's shapes and the model's config."""
    where = f"{name} ({type(module).__name__})" if name else type(module).__name__
    w13 = canonical_weights(module, layout).w13 if layout.dbrx else None
    if w13 is not None:
        E, R, H = w13.shape
    else:
        w = module.gate_up_proj if layout.gated else module.up_proj
        E = w.shape[0]
        H, R = w.shape[1:] if layout.transposed else w.shape[:0:-1]
    config = getattr(module, "config", None) or config
    top_k = None
    for c in (config, getattr(config, "text_config", None), getattr(config, "ffn_config", None)):
        top_k = top_k or next((getattr(c, k) for k in _TOP_K_KEYS if isinstance(getattr(c, k, None), int)),
                              None)
    if not isinstance(top_k, int):
        raise ModelConfigError(f"{type(config).__name__} has no num_experts_per_tok; expected the "
                               "experts per token")
    dtype = (w13 if w13 is not None else module.down_proj).dtype
    if dtype not in _DTYPE_NAMES:
        raise InputError(f"{name}: {type(module).__name__} weights are {dtype}; expected bf16, "
                         "fp16 or fp32 (quantized transformers checkpoints are not supported yet)")
    activation, limit, alpha = experts_activation(module, layout, where)
    device = module.down_proj.device if w13 is None else module.mlp.w1.device
    return MoESpec(num_experts=E, top_k=top_k, hidden_size=H,
                   intermediate_size=R // 2 if layout.gated else R, activation=activation,
                   swiglu_limit=limit, swiglu_alpha=alpha, has_bias=layout.has_bias,
                   act_dtype=act_dtype or _DTYPE_NAMES[dtype], max_tokens=max_tokens,
                   arch="cpu" if device.type == "cpu" else detect_arch(),
                   model=getattr(config, "_name_or_path", None) or getattr(config, "model_type", None))


class MoECoreExperts(torch.nn.Module):
    """Stands in for a transformers experts module: same call, the resolved runner inside."""

    def __init__(self, layer, original: torch.nn.Module):
        super().__init__()
        self.layer = layer
        self.__dict__["original"] = original  # kept for undo, outside the module tree

    def extra_repr(self) -> str:
        return f"{self.layer.plan.backend}, {self.layer.plan.spec.describe()}"

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden_states, top_k_weights, top_k_index).to(hidden_states.dtype)


@dataclass
class LayerReport:
    name: str
    module_class: str
    resolution: Resolution

    @property
    def plan(self) -> Plan:
        return self.resolution.plan


@dataclass
class ApplyReport:
    """What :func:`apply` did, per MoE layer: the same trace ``moe explain`` shows."""

    model_class: str
    layers: list[LayerReport] = field(default_factory=list)
    _swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        lines = [f"{self.model_class}: {len(self.layers)} MoE layers"]
        for r in self.layers:
            p = r.plan
            lines.append(f"  {r.name} ({r.module_class}) -> {p.backend}: {p.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_class,
                "layers": [{"name": r.name, "module": r.module_class, **r.resolution.to_dict()}
                           for r in self.layers]}

    def layer_errors(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Run ``model(*args, **kwargs)`` and compare each swapped layer's output with the
        original module's on the very same inputs: relative error per layer. (Logits can
        move more than any layer: a near-tie in a later router may flip.)"""
        from ..reference.oracle import relative_error

        seen: dict[int, tuple] = {}

        def keep(i):
            def hook(mod, inp, out):  # returns None: the output is left as it is
                seen.setdefault(i, (inp, out))
            return hook

        hooks = [getattr(parent, attr).register_forward_hook(keep(i))
                 for i, (parent, attr, _) in enumerate(self._swapped)]
        try:
            with torch.no_grad():
                model(*args, **kwargs)
                out = {}
                for i, ((_, _, original), r) in enumerate(zip(self._swapped, self.layers)):
                    inp, got = seen[i]
                    out[r.name] = relative_error(got, original(*inp))
        finally:
            for h in hooks:
                h.remove()
        return out

    def undo(self) -> None:
        """Put every original experts module back."""
        for parent, attr, original in reversed(self._swapped):
            setattr(parent, attr, original)
        self._swapped.clear()


def apply(model: torch.nn.Module, *, tp: int = 1, ep: int = 1, host: Host | None = None,
          force: str | None = None, disable=None, max_tokens: int = 65536) -> ApplyReport:
    """Resolve and swap in a backend for every MoE layer of ``model``; returns the report.

    :param tp, ep: must be 1: the whole layer runs in this process (sharding the experts
        needs the model's own collectives).
    :param host: the host to resolve with (default: the installed plugins).
    :param force, disable: as for :meth:`moe_core.Host.resolve`, for every layer.
    :param max_tokens: tokens per forward the plans are resolved for.
    """
    if tp != 1 or ep != 1:
        raise InputError(f"apply() runs each layer whole in this process (tp=1, ep=1); got tp={tp} "
                         f"ep={ep}. Shard with your engine's parallel layers and a per-rank spec.")
    if host is None:
        from .. import default_host
        host = default_host()
    config = getattr(model, "config", None)
    report = ApplyReport(type(model).__name__)
    found = [(n, m) for n, m in model.named_modules() if n and _is_experts(m)]
    if not found:
        raise InputError(f"{type(model).__name__} has no MoE experts module that moe-core knows "
                         "(expected 3-D gate_up_proj / down_proj expert stacks)")
    for name, module in found:
        cls = type(module).__name__
        layout = experts_layout(module, f"{name} ({cls})")
        spec = layer_spec(module, layout, config, max_tokens=max_tokens, name=name)
        res = host.explain(spec, force=force, disable=disable)
        plan = host.resolve(spec, force=force, disable=disable)  # raises with the trace if none
        weights = canonical_weights(module, layout)
        layer = host.load(plan, weights)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, MoECoreExperts(layer, module))
        report._swapped.append((parent, attr, module))
        report.layers.append(LayerReport(name, cls, res))
    return report


_TINY = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=512,
             max_position_embeddings=256, sliding_window=16,
             # DeepSeek's MLA and grouped routing, shrunk
             q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
             v_head_dim=32, n_group=1, topk_group=1, first_k_dense_replace=0)
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
#: Families whose tiny models are tested against transformers' own MoE blocks.
TESTED_FAMILIES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "deepseek_v3", "gpt_oss")


def tiny_config(model_type: str, *, layers: int = 2, experts: int = 8, top_k: int = 2,
                hidden: int = 128, intermediate: int = 64, **overrides):
    """A few-layer, few-expert config of a transformers MoE family, for CPU runs and tests.

    :param model_type: a transformers ``model_type`` (e.g. ``"qwen3_moe"``, ``"mixtral"``).
    :param hidden, intermediate: the model width and each expert's intermediate size.
    """
    from transformers import AutoConfig

    if model_type not in TESTED_FAMILIES:
        raise ModelConfigError(f"model_type {model_type!r} is not a family this integration covers "
                               f"(tested: {', '.join(TESTED_FAMILIES)})")
    try:
        base = AutoConfig.for_model(model_type)
    except (KeyError, ValueError) as e:
        raise ModelConfigError(f"transformers has no model_type {model_type!r}: {e}") from None
    kw = {k: v for k, v in _TINY.items() if hasattr(base, k)}
    kw.update(num_hidden_layers=layers, num_experts_per_tok=min(top_k, experts), hidden_size=hidden)
    # Families name the experts' size differently; dense MLPs (shared experts) get 2x.
    kw["moe_intermediate_size" if hasattr(base, "moe_intermediate_size") else "intermediate_size"] = intermediate
    if hasattr(base, "moe_intermediate_size"):
        kw["intermediate_size"] = 2 * intermediate
    if hasattr(base, "shared_expert_intermediate_size"):
        kw["shared_expert_intermediate_size"] = 2 * intermediate
    kw.update({k: experts for k in _EXPERT_KEYS if hasattr(base, k)})
    if "qk_rope_head_dim" in kw:  # MLA: rotary dims are the head_dim
        kw["head_dim"] = kw["qk_rope_head_dim"]
    if getattr(base, "layer_types", None):
        kw["layer_types"] = list(base.layer_types[:layers])
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)
