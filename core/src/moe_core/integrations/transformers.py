"""moe-core inside Hugging Face ``transformers`` (``pip install 'moe-core[transformers]'``):
an experts implementation named ``"moe_core"`` and, on transformers >= 5.2x, an
expert-parallel token exchange of the same name. Importing this module registers both with
transformers' own interfaces (``ExpertsInterface.register``,
``EPImplementationInterface.register``); nothing of transformers is patched::

    import moe_core.integrations.transformers    # registers "moe_core"
    model = AutoModelForCausalLM.from_pretrained(name, experts_implementation="moe_core")

Each MoE layer's experts module is then resolved through the host on its first call, from
the module's own shapes and layout flags and the model's config (the model's router, shared
experts and everything else stay the model's): the spec on this rank, the plan, the weights
processed once per backend and cached on the module until its weights change. Calls of at
most ``decode_tokens`` tokens run the decode plan, larger ones the prefill plan (``tiers``
adds plans for narrower token ranges).

Sharded by transformers (``distributed_config=DistributedConfig(...)``), each rank runs its
shard: expert tensor parallelism (``tp_size``; transformers all-reduces the partial sums) and
expert parallelism (``ep_size``) with transformers' token exchange, or with moe-core's
(``ep_implementation="moe_core"``: the dispatcher the host resolves, DeepEP where it can
serve the layer, else ``torch:all_to_all``).

:func:`report` gives, per layer, the ``moe explain`` trace of each plan; :func:`configure`
sets the host, force/disable and token limits; :func:`apply` switches a loaded model over,
loads every layer at once and can undo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.integrations.moe import ExpertsInterface

from ..errors import InputError, ModelConfigError
from ..plan import Plan, Resolution
from ..spec import A2A
from .hf_experts import (EP_ATTR, EXPERT_KEYS, ExpertsLayout, Options, Sharding, UnsupportedExperts,
                         canonical_weights, check_experts, exchange_of, experts_activation,
                         experts_layout, experts_modules, held_bytes, layer_spec, load_for,
                         regime_name, release, resolve_for, set_options, sharding_of, state_of)

try:  # transformers >= 5.2x: transformers.distributed.expert_parallel
    from .hf_ep import MoECoreEP
except ImportError:  # e.g. 5.17: EP through the ep_router plan only (the experts forward runs it)
    MoECoreEP = None

IMPLEMENTATION = "moe_core"
__all__ = ["IMPLEMENTATION", "ExpertsLayout", "LayerReport", "ModelReport", "MoECoreEP", "Options",
           "TESTED_FAMILIES", "UnsupportedExperts", "apply", "canonical_weights", "configure",
           "experts_activation", "experts_forward", "experts_layout", "layer_spec", "register",
           "release_model", "report", "tiny_config"]


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``"moe_core"`` experts implementation: ``self`` is the model's experts module.

    Under transformers' expert parallelism the module holds this rank's experts and is
    called with their local ids (another rank's expert: an id >= the local count, or -1);
    they become global ids outside this rank's range, which its runner skips. Inference
    only: no gradients flow through it."""
    state = state_of(self)
    T, k = top_k_index.shape
    with torch.no_grad():
        layer = load_for(self, state, max_tokens=state.options.max_tokens_for(T), top_k=k).layer
        spec = layer.plan.spec
        ids = top_k_index
        if spec.ep_size > 1:
            n, first = spec.local_experts, spec.first_expert
            ids = torch.where((ids >= 0) & (ids < n), ids + first, (first + n) % spec.num_experts)
        out = layer(hidden_states.to(layer.dtype), top_k_weights, ids)
    return out.to(hidden_states.dtype)


def _fp8_experts_forward(self, *args, **kwargs):
    raise InputError(f'{type(self).__name__}: experts_implementation="{IMPLEMENTATION}" runs bf16 '
                     "experts (gate_up_proj/down_proj); transformers' FP8-quantized experts are "
                     "not supported yet (load the checkpoint dequantized, or use another experts "
                     "implementation)")


def register() -> None:
    """Register ``"moe_core"`` with transformers (done when this module is imported)."""
    ExpertsInterface.register(IMPLEMENTATION, experts_forward)
    try:
        from transformers.integrations.finegrained_fp8 import FP8ExpertsInterface
    except ImportError:
        pass
    else:  # without it, an FP8 model would fail on a KeyError instead of this reason
        FP8ExpertsInterface.register(IMPLEMENTATION, _fp8_experts_forward)
    if MoECoreEP is not None:
        from transformers.distributed.expert_parallel import EPImplementationInterface

        EPImplementationInterface.register(IMPLEMENTATION, MoECoreEP)


register()


# -- the report -------------------------------------------------------------------------

@dataclass
class LayerReport:
    """One experts module: how it is sharded, who moves its tokens, and the trace of each plan."""

    name: str
    module_class: str
    #: The experts implementation the module runs (``config._experts_implementation``).
    implementation: str | None
    sharding: Sharding
    #: Who moves tokens between expert-parallel ranks (None: they stay on the rank).
    exchange: str | None
    #: "decode" / "prefill" (with tiers: "decode 1-64", "decode 65-256", ...) -> the
    #: ``moe explain`` trace of that plan on this rank.
    resolutions: dict[str, Resolution]
    #: The layers loaded so far (their repr: backend, dispatcher, spec with its token limit).
    loaded: list[str] = field(default_factory=list)
    #: Bytes of processed weights the loaded plans hold beyond the module's own parameters.
    held_bytes: int = 0

    @property
    def resolution(self) -> Resolution:
        return self.resolutions["prefill"]

    @property
    def plan(self) -> Plan | None:
        return self.resolution.plan

    def dispatcher(self, regime: str = "prefill") -> str | None:
        """Who dispatches this layer's tokens in ``regime``: moe-core's dispatcher, transformers'
        exchange, or None."""
        plan = self.resolutions[regime].plan
        if plan is not None and plan.dispatcher is not None:
            return str(plan.dispatcher)
        return self.exchange if self.exchange != "moe_core" else None

    def line(self, regime: str) -> str:
        res = self.resolutions[regime]
        spec, plan = res.spec, res.plan
        head = f"{regime} ({spec.tokens_range()}/rank): "
        if plan is None:
            return head + "no backend: " + "; ".join(
                f"{c.backend} {c.reason}" for c in res.candidates)
        via = self.dispatcher(regime)
        tail = f" via {via}" if via else (
            ", partial sums all-reduced by transformers" if spec.tp_size > 1 else "")
        return head + f"{plan.backend}{tail}: {plan.reason}"


@dataclass
class ModelReport:
    """Every experts module of a model, as :func:`report` found it."""

    model_class: str
    layers: list[LayerReport] = field(default_factory=list)
    _restore: Any = field(default=None, repr=False)

    def summary(self) -> str:
        lines = [f"{self.model_class}: {len(self.layers)} MoE layers"]
        for r in self.layers:
            exchange = f", tokens moved by {r.exchange}" if r.exchange else ""
            lines.append(f"  {r.name} ({r.module_class}, experts_implementation="
                         f"{r.implementation!r}, {r.sharding.describe()}{exchange})")
            lines += [f"    {r.line(regime)}" for regime in r.resolutions]
            if r.loaded:
                lines.append(f"    weights held beyond the module's own: {r.held_bytes / 2**20:.1f} MiB")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_class, "layers": [
            {"name": r.name, "module": r.module_class, "implementation": r.implementation,
             "sharding": {"tp": r.sharding.tp, "ep": r.sharding.ep, "rank": r.sharding.rank},
             "exchange": r.exchange, "dispatcher": {g: r.dispatcher(g) for g in r.resolutions},
             "loaded": list(r.loaded), "held_bytes": r.held_bytes,
             "plans": {g: res.to_dict() for g, res in r.resolutions.items()}}
            for r in self.layers]}

    def layer_errors(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Run ``model(*args, **kwargs)`` and compare each whole (unsharded) experts module's
        output with transformers' eager experts loop on the very same inputs: relative error
        per layer. (Logits can move more than any layer: a near-tie in a later router may flip.)"""
        from ..reference.oracle import relative_error

        modules = dict(experts_modules(model))
        seen: dict[str, tuple] = {}

        def keep(name):
            def hook(mod, inp, out):  # returns None: the output is left as it is
                seen.setdefault(name, (inp, out))
            return hook

        names = [r.name for r in self.layers if r.sharding.tp == 1]
        hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
        try:
            with torch.no_grad():
                model(*args, **kwargs)
                out = {}
                for n in names:
                    eager = getattr(type(modules[n]).forward, "__wrapped__", None)
                    if eager is None:
                        raise InputError(f"{n}: {type(modules[n]).__name__} has no eager forward "
                                         "to compare with (not a @use_experts_implementation class)")
                    inp, got = seen[n]
                    out[n] = relative_error(got, eager(modules[n], *inp))
        finally:
            for h in hooks:
                h.remove()
        return out

    def undo(self) -> None:
        """After :func:`apply`: the experts implementation the model had before, and the loaded
        layers dropped."""
        if self._restore is None:
            raise InputError("undo() reverts apply(); this report was made by report()")
        model, previous = self._restore
        model.set_experts_implementation(previous)
        release_model(model)
        self._restore = None


def _found(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    found = experts_modules(model)
    if not found:
        raise InputError(f"{type(model).__name__} has no MoE experts module (expected modules with "
                         "3-D gate_up_proj and down_proj, as transformers >= 5 builds them)")
    return found


def report(model: torch.nn.Module, *, load: bool = False) -> ModelReport:
    """Every experts module of ``model`` on this rank: sharding, token exchange and the trace
    of each of its plans (decode, prefill and any tiers; resolution only, cached by the host).

    :param load: also load every plan now (process the weights, build runners and
        dispatchers) instead of on first call; under ``ep_implementation="moe_core"`` every
        rank must then call it (building a dispatcher may be collective).
    """
    config = getattr(model, "config", None)
    out = ModelReport(type(model).__name__)
    for name, module in _found(model):
        state = state_of(module, name)
        ep = module.__dict__.get(EP_ATTR)
        cfg = getattr(module, "config", config)
        sharding = ep.sharding if ep is not None else sharding_of(module, state.layout, cfg, name)
        opts = state.options
        resolutions = {}
        for max_tokens in opts.plan_max_tokens:
            a2a = opts.a2a_for(max_tokens) if ep is not None else A2A.NONE
            kw = dict(max_tokens=max_tokens, sharding=sharding, a2a=a2a)
            if load:
                load_for(module, state, group=ep.ep_group if ep is not None else None, **kw)
            resolutions[regime_name(max_tokens, opts)] = resolve_for(module, state, **kw)[1]
        loaded = [repr(v.layer) for v in state.loaded.values()]
        out.layers.append(LayerReport(
            name, type(module).__name__, getattr(cfg, "_experts_implementation", None), sharding,
            exchange_of(module, cfg, sharding), resolutions, loaded, held_bytes(module, state)))
    return out


def configure(model: torch.nn.Module, *, host=None, force: str | None = None, disable=None,
              decode_tokens: int | None = None, max_tokens: int | None = None,
              a2a: str | None = None, tiers: tuple[int, ...] | None = None) -> Options:
    """How every experts module of ``model`` is resolved (see :class:`Options`); drops the
    layers loaded so far. Without it: the installed plugins, ``$MOE_BACKEND``/``$MOE_DISABLE``."""
    defaults = Options()  # None only: 0 tokens is an error, not a default
    opts = Options(host=host, force=force, disable=disable,
                   decode_tokens=defaults.decode_tokens if decode_tokens is None else decode_tokens,
                   max_tokens=defaults.max_tokens if max_tokens is None else max_tokens, a2a=a2a,
                   tiers=defaults.tiers if tiers is None else tiers)
    problem = opts.the_host().selector_problem(force) if force else None
    if problem:  # now, not at the first forward: the host knows its plugins already
        raise InputError(f"force={force!r}: {problem[0]}")
    for _, module in _found(model):
        set_options(module, opts)
    return opts


def release_model(model: torch.nn.Module) -> None:
    """Drop every layer moe-core loaded for ``model`` and its :func:`configure` options."""
    for _, module in experts_modules(model):
        release(module, options=True)


def apply(model: torch.nn.Module, **options: Any) -> ModelReport:
    """``model.set_experts_implementation("moe_core")`` on a loaded model, with every layer
    loaded now (an unsupported layer fails here, not on the first forward); returns the
    report, whose ``undo()`` switches back. ``options``: as for :func:`configure`."""
    if not hasattr(model, "set_experts_implementation"):
        raise InputError(f"{type(model).__name__} is not a transformers PreTrainedModel "
                         "(expected set_experts_implementation)")
    found = _found(model)
    for name, module in found:
        check_experts(module, name)  # what it computes is what moe-core runs
    previous = model.config._experts_implementation
    configure(model, **options)
    model.set_experts_implementation(IMPLEMENTATION)
    stuck = [f"{n} ({type(m).__name__})" for n, m in found
             if getattr(getattr(m, "config", None), "_experts_implementation", None) != IMPLEMENTATION]
    if stuck:
        model.set_experts_implementation(previous)
        raise InputError(f"{type(model).__name__} did not switch {', '.join(stuck)} to "
                         f'"{IMPLEMENTATION}" (expected experts classes decorated with transformers\' '
                         "@use_experts_implementation)")
    out = report(model, load=True)
    out._restore = (model, previous)
    return out


_TINY = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=512,
             max_position_embeddings=256, sliding_window=16,
             # DeepSeek's MLA and grouped routing, shrunk
             q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
             v_head_dim=32, n_group=1, topk_group=1, first_k_dense_replace=0)
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
    kw.update({k: experts for k in EXPERT_KEYS if hasattr(base, k)})
    if "qk_rope_head_dim" in kw:  # MLA: rotary dims are the head_dim
        kw["head_dim"] = kw["qk_rope_head_dim"]
    if getattr(base, "layer_types", None):
        kw["layer_types"] = list(base.layer_types[:layers])
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)
