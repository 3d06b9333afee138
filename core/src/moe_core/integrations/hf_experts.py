"""One transformers experts module seen from moe-core: its layout, how transformers sharded
it, its spec on this rank, its canonical weights, and the layers loaded for it.

transformers >= 5 keeps each MoE layer's routed experts as one module with 3-D
``gate_up_proj`` / ``down_proj`` and calls it as ``experts(hidden_states, top_k_index,
top_k_weights)`` after the model's own router. Classes decorated with transformers'
``@use_experts_implementation`` declare their layout on the instance (``is_transposed``,
``is_concatenated``, ``has_bias``, ``has_gate``); everything here is read from the module,
its parameters and the model config, never from a table of model names.

Under transformers' sharding the parameters the experts forward sees are this rank's shard
(transformers swaps the DTensors for their local tensors around the call): expert
parallelism (``grouped_gemm``: whole experts, dim 0) or expert tensor parallelism
(``packed_colwise`` / ``rowwise``: a slice of every expert's intermediate dimension).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..arch import detect_arch
from ..errors import InputError, ModelConfigError
from ..host import Host
from ..layer import TORCH_DTYPES
from ..plan import Resolution
from ..spec import A2A, DECODE_MAX_TOKENS, Activation, MoESpec
from ..weights import MoEWeights

_ACTIVATIONS = {"silu": Activation.SILU_GATED, "swish": Activation.SILU_GATED,
                "gelu": Activation.GELU_GATED, "gelu_pytorch_tanh": Activation.GELU_GATED}
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
#: gpt-oss's clamped SwiGLU, the one custom gate moe-core knows (``Activation.SWIGLU_LIMIT``).
_SWIGLU_GATE = "GptOssExperts._apply_gate"


@dataclass(frozen=True)
class ExpertsLayout:
    """How one transformers experts class stores its weights."""

    #: ``gate_up_proj`` is ``[E, H, 2I]`` (in x out) rather than ``[E, 2I, H]``.
    transposed: bool = False
    #: Gate and up alternate (gate at even columns) rather than ``[Gate; Up]``.
    interleaved: bool = False
    #: gpt-oss's clamped SwiGLU (``limit``/``alpha`` on the module) with biases.
    swiglu_limit: bool = False


#: The experts classes tested against transformers' own implementations (tests/), by class
#: name. Other classes decorated with ``@use_experts_implementation`` are read from their
#: declared flags; an undecorated class must be one of these.
KNOWN: dict[str, ExpertsLayout] = {
    "Qwen3MoeExperts": ExpertsLayout(), "Qwen2MoeExperts": ExpertsLayout(),
    "MixtralExperts": ExpertsLayout(), "OlmoeExperts": ExpertsLayout(),
    "DeepseekV3Experts": ExpertsLayout(), "DeepseekV2Experts": ExpertsLayout(),
    "Qwen3NextExperts": ExpertsLayout(), "Glm4MoeExperts": ExpertsLayout(),
    "GptOssExperts": ExpertsLayout(transposed=True, interleaved=True, swiglu_limit=True),
}


def is_experts(module: torch.nn.Module) -> bool:
    """A routed-experts module: 3-D ``gate_up_proj`` and ``down_proj`` parameters."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3


def experts_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every routed-experts module of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if n and is_experts(m)]


def _at(name: str) -> str:
    """``"name: "`` to start an error about the module called ``name`` (nothing if unnamed)."""
    return f"{name}: " if name else ""


def layout_of(module: torch.nn.Module, name: str = "") -> ExpertsLayout:
    """The module's layout, from the flags ``@use_experts_implementation`` put on it; an
    :class:`InputError` naming the class when moe-core cannot run what it computes."""
    cls = type(module).__name__
    where = _at(name)
    if not hasattr(module, "is_transposed"):  # not decorated: only the tested classes
        if cls not in KNOWN:
            raise InputError(f"{where}experts module {cls} has a layout moe-core does not know "
                             f"(known: {', '.join(sorted(KNOWN))}; classes decorated with "
                             "transformers' @use_experts_implementation declare theirs)")
        return KNOWN[cls]
    if not getattr(module, "has_gate", True):
        raise InputError(f"{where}{cls} has no gate (up_proj only); moe-core runs gated experts "
                         "(gate_up_proj)")
    if getattr(module, "has_post_expert_norm", False):
        raise InputError(f"{where}{cls} normalizes each expert's output (has_post_expert_norm); "
                         "moe-core's runners have no post-expert norm")
    gate = getattr(type(module), "_apply_gate", None)
    gate_name = getattr(gate, "__qualname__", "_default_apply_gate")
    swiglu = gate_name == _SWIGLU_GATE
    if gate_name != "_default_apply_gate" and not swiglu:
        raise InputError(f"{where}{cls} applies its own gate ({gate_name}), which moe-core does not "
                         f"know (expected transformers' default act(gate) * up, or {_SWIGLU_GATE})")
    if getattr(module, "has_bias", False) and not swiglu:
        raise InputError(f"{where}{cls} has expert biases; moe-core takes them only with gpt-oss's "
                         "clamped SwiGLU (Activation.SWIGLU_LIMIT)")
    return ExpertsLayout(transposed=bool(module.is_transposed),
                         interleaved=not getattr(module, "is_concatenated", True), swiglu_limit=swiglu)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (a DTensor's local shard; a plain tensor as it is)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _params(module: torch.nn.Module, layout: ExpertsLayout) -> dict[str, torch.Tensor]:
    names = ("gate_up_proj", "down_proj") + (
        ("gate_up_proj_bias", "down_proj_bias") if layout.swiglu_limit else ())
    return {n: local(getattr(module, n)) for n in names}


def weights_key(module: torch.nn.Module, layout: ExpertsLayout) -> tuple:
    """What the loaded layers were built from: each parameter's storage, shape, dtype, device
    and version counter. Replaced tensors (``model.to(...)``, loading a checkpoint) and
    in-place writes both change it."""
    def version(t):
        try:
            return t._version
        except RuntimeError:  # inference tensors have no version counter
            return None

    return tuple((n, t.data_ptr(), tuple(t.shape), t.dtype, str(t.device), version(t))
                 for n, t in _params(module, layout).items())


def canonical_weights(module: torch.nn.Module, layout: ExpertsLayout) -> MoEWeights:
    """This rank's experts in moe-core's canonical layout (bf16 weights, fp32 biases). Tensors
    that already are canonical are shared with the module, not copied."""
    p = _params(module, layout)
    gu, down = p["gate_up_proj"].detach(), p["down_proj"].detach()
    if layout.transposed:
        gu, down = gu.transpose(1, 2), down.transpose(1, 2)
    b13 = b2 = None
    if layout.interleaved:
        gu = torch.cat([gu[:, 0::2], gu[:, 1::2]], dim=1)
    if layout.swiglu_limit:
        b = p["gate_up_proj_bias"].detach()
        b13 = torch.cat([b[:, 0::2], b[:, 1::2]], dim=1).float().contiguous()
        b2 = p["down_proj_bias"].detach().float().contiguous()
    return MoEWeights(w13=gu.to(torch.bfloat16).contiguous(), w2=down.to(torch.bfloat16).contiguous(),
                      w13_bias=b13, w2_bias=b2)


def _config_int(config: Any, keys: tuple[str, ...]) -> int | None:
    for k in keys:
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


@dataclass(frozen=True)
class Sharding:
    """How transformers sharded one experts module, in moe-core's terms: the layer spans
    ``tp`` ranks, ``ep`` of which split the experts (``tp == ep`` for expert parallelism,
    ``ep == 1`` for expert tensor parallelism); ``rank`` is this process's place among them."""

    tp: int = 1
    ep: int = 1
    rank: int = 0

    def describe(self) -> str:
        if self.ep > 1:
            return f"expert parallel {self.ep} (rank {self.rank})"
        if self.tp > 1:
            return f"expert tensor parallel {self.tp} (rank {self.rank})"
        return "whole"


def _rank_in(size: int, what: str) -> int:
    """This process's rank among the ``size`` ranks of an innermost mesh dimension.

    transformers lays its meshes out with the TP dimension (dense) and the EP dimension
    (experts) innermost, so consecutive global ranks form each group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InputError(f"{what} but torch.distributed is not initialized (expected the process "
                         "group transformers sharded the model on)")
    return dist.get_rank() % size


def sharding_of(module: torch.nn.Module, layout: ExpertsLayout, config: Any,
                name: str = "") -> Sharding:
    """Compare the local parameter shapes with the config's sizes."""
    gu = local(module.gate_up_proj)
    local_experts = gu.shape[0]
    local_inter = (gu.shape[2] if layout.transposed else gu.shape[1]) // 2
    experts = _config_int(config, EXPERT_KEYS)
    inter = _config_int(config, ("moe_intermediate_size", "intermediate_size"))
    it = f"{_at(name)}{type(module).__name__}"
    if experts is not None and local_experts != experts:
        if local_experts > experts or experts % local_experts:
            raise ModelConfigError(f"{it} holds {local_experts} experts and the config says "
                                   f"{experts}; expected a divisor of {experts} (expert parallelism)")
        ep = experts // local_experts
        return Sharding(ep, ep, _rank_in(ep, f"{it} holds {local_experts} of {experts} experts"))
    if inter is not None and local_inter != inter:
        if local_inter > inter or inter % local_inter:
            raise ModelConfigError(f"{it} has intermediate size {local_inter} and the config "
                                   f"{inter}; expected a divisor of {inter} (tensor parallelism)")
        tp = inter // local_inter
        return Sharding(tp, 1, _rank_in(tp, f"{it} holds 1/{tp} of each expert"))
    return Sharding()


def layer_spec(module: torch.nn.Module, layout: ExpertsLayout, config: Any, *, max_tokens: int,
               name: str = "", sharding: Sharding = Sharding(), a2a: str | A2A = A2A.NONE,
               top_k: int | None = None) -> MoESpec:
    """The spec of one experts module on this rank, from its local shapes, ``sharding`` and
    the model's config. ``top_k``: the routes per row the module is called with (default:
    the config's experts per token)."""
    gu = local(module.gate_up_proj)
    E = gu.shape[0] * sharding.ep
    if layout.transposed:
        H, I2 = gu.shape[1:]
    else:
        I2, H = gu.shape[1:]
    cfg_top_k = getattr(config, "num_experts_per_tok", None)
    if not isinstance(cfg_top_k, int):
        raise ModelConfigError(f"{type(config).__name__} has no num_experts_per_tok; expected the "
                               "experts per token")
    dtype = gu.dtype
    if dtype not in _DTYPE_NAMES:
        raise InputError(f"{_at(name)}{type(module).__name__} weights are {dtype}; expected bf16, "
                         "fp16 or fp32 (quantized transformers checkpoints are not supported yet)")
    kw: dict[str, Any] = {}
    if layout.swiglu_limit:
        kw = dict(activation=Activation.SWIGLU_LIMIT, swiglu_limit=float(module.limit),
                  swiglu_alpha=float(module.alpha), has_bias=True)
    else:
        act = getattr(config, "hidden_act", "silu")
        if act not in _ACTIVATIONS:
            raise ModelConfigError(f"{_at(name)}hidden_act {act!r} of {type(config).__name__} is not a "
                                   f"gated activation moe-core knows ({sorted(_ACTIVATIONS)})")
        kw = dict(activation=_ACTIVATIONS[act])
    moe_tp = sharding.tp // sharding.ep
    return MoESpec(num_experts=E, top_k=top_k or cfg_top_k, hidden_size=H,
                   intermediate_size=I2 // 2 * moe_tp, act_dtype=_DTYPE_NAMES[dtype],
                   max_tokens=max_tokens, arch="cpu" if gu.device.type == "cpu" else detect_arch(),
                   tp_size=sharding.tp, ep_size=sharding.ep, rank=sharding.rank, a2a=a2a,
                   model=getattr(config, "_name_or_path", None) or getattr(config, "model_type", None),
                   **kw)


# -- options and the per-module cache --------------------------------------------------

@dataclass(frozen=True)
class Options:
    """How the layers of one model are resolved (see :func:`configure`)."""

    #: The host to resolve with (None: the installed plugins, ``moe_core.default_host()``).
    host: Host | None = None
    #: As for :meth:`moe_core.Host.resolve`, for every layer (None: ``$MOE_BACKEND`` /
    #: ``$MOE_DISABLE``).
    force: str | None = None
    disable: tuple[str, ...] | str | None = None
    #: Calls with at most this many tokens (per rank) run the decode plan.
    decode_tokens: int = DECODE_MAX_TOKENS
    #: Larger calls run the prefill plan, resolved for at least this many tokens per rank
    #: (a longer call resolves a larger one).
    max_tokens: int = 65536
    #: How ``ep_implementation="moe_core"`` asks for tokens to travel; None: DeepEP
    #: low-latency for decode and DeepEP normal for prefill, which fall through to
    #: ``torch:all_to_all`` where DeepEP cannot serve the layer.
    a2a: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.decode_tokens <= self.max_tokens:
            raise InputError(f"decode_tokens={self.decode_tokens}, max_tokens={self.max_tokens}: "
                             "expected 0 < decode_tokens <= max_tokens")
        if self.a2a is not None:
            moving = [m.value for m in A2A if m is not A2A.NONE]
            if self.a2a not in moving:
                raise InputError(f"a2a={self.a2a!r}: expected a mode that moves tokens between "
                                 f"expert-parallel ranks ({', '.join(moving)}), or None")
            object.__setattr__(self, "a2a", A2A(self.a2a))

    def the_host(self) -> Host:
        if self.host is not None:
            return self.host
        from .. import default_host
        return default_host()

    def max_tokens_for(self, tokens: int) -> int:
        """The ``max_tokens`` of the plan that runs a call of ``tokens`` tokens per rank."""
        if tokens <= self.decode_tokens:
            return self.decode_tokens
        return max(self.max_tokens, 1 << math.ceil(math.log2(tokens)))

    def a2a_for(self, max_tokens: int) -> A2A:
        if self.a2a is not None:
            return self.a2a
        return A2A.DEEPEP_LL if max_tokens <= self.decode_tokens else A2A.DEEPEP_NORMAL


DEFAULT_OPTIONS = Options()
_STATE = "_moe_core_state"
_OPTIONS = "_moe_core_options"
#: Set on an experts module by ``ep_implementation="moe_core"`` (hf_ep.MoECoreEP).
EP_ATTR = "_moe_core_ep"


def regime_name(max_tokens: int, options: Options) -> str:
    return "decode" if max_tokens <= options.decode_tokens else "prefill"


@dataclass
class Loaded:
    """One layer loaded for a module: the resolution it came from and what runs it."""

    resolution: Resolution
    layer: Any  # MoELayer, or DispatchedLayer when moe-core moves the tokens


@dataclass
class ExpertsState:
    """What moe-core built for one experts module, valid while its weights are the same."""

    name: str
    layout: ExpertsLayout
    key: tuple
    options: Options
    #: (max_tokens, top_k, a2a) -> the loaded layer
    loaded: dict[tuple, Loaded] = field(default_factory=dict)
    #: processed weights, shared by the plans of one backend
    processed: dict[tuple, MoEWeights] = field(default_factory=dict)


def options_of(module: torch.nn.Module) -> Options:
    return module.__dict__.get(_OPTIONS) or DEFAULT_OPTIONS


def set_options(module: torch.nn.Module, options: Options) -> None:
    module.__dict__[_OPTIONS] = options
    module.__dict__.pop(_STATE, None)


def release(module: torch.nn.Module, *, options: bool = False) -> None:
    """Drop the layers loaded for ``module`` (they are rebuilt on the next call), and with
    ``options`` what :func:`set_options` set."""
    module.__dict__.pop(_STATE, None)
    if options:
        module.__dict__.pop(_OPTIONS, None)


def state_of(module: torch.nn.Module, name: str = "") -> ExpertsState:
    """The module's state; rebuilt (nothing loaded) when its weights or options changed."""
    options = options_of(module)
    state = module.__dict__.get(_STATE)
    if state is not None:
        key = weights_key(module, state.layout)
        if key == state.key and state.options is options:
            return state
    layout = layout_of(module, name)
    state = ExpertsState(name or (state.name if state else ""), layout,
                         weights_key(module, layout), options)
    module.__dict__[_STATE] = state
    return state


def exchange_of(module: torch.nn.Module, config: Any, sharding: Sharding) -> str | None:
    """Who moves tokens between this module's expert-parallel ranks."""
    if sharding.ep == 1:
        return None
    ep = module.__dict__.get(EP_ATTR)
    if ep is not None:
        return "moe_core"
    dc = getattr(config, "distributed_config", None)
    impl = getattr(dc, "ep_implementation", None)
    return f"transformers:{impl}" if impl else "transformers (ep_router + all-reduce)"


def resolve_for(module: torch.nn.Module, state: ExpertsState, *, max_tokens: int,
                top_k: int | None = None, sharding: Sharding | None = None,
                a2a: A2A = A2A.NONE) -> tuple[MoESpec, Resolution]:
    """The spec and resolution trace of ``module`` for one plan."""
    config = module.config
    sharding = sharding or sharding_of(module, state.layout, config, state.name)
    spec = layer_spec(module, state.layout, config, max_tokens=max_tokens, name=state.name,
                      sharding=sharding, a2a=a2a, top_k=top_k)
    opts = state.options
    return spec, opts.the_host().explain(spec, force=opts.force, disable=opts.disable)


def load_for(module: torch.nn.Module, state: ExpertsState, *, max_tokens: int,
             top_k: int | None = None, sharding: Sharding | None = None, a2a: A2A = A2A.NONE,
             group: Any = None) -> Loaded:
    """The layer for one plan, loaded on first use: resolve, process the weights (once per
    backend) and build the runner, plus the dispatcher on ``group`` when tokens travel."""
    if top_k == getattr(module.config, "num_experts_per_tok", None):
        top_k = None  # the config's: one layer whoever asks (report, the experts forward)
    cache_key = (max_tokens, top_k, a2a)
    hit = state.loaded.get(cache_key)
    if hit is not None:
        return hit
    spec, res = resolve_for(module, state, max_tokens=max_tokens, top_k=top_k, sharding=sharding,
                            a2a=a2a)
    host, opts = state.options.the_host(), state.options
    plan = host.resolve(spec, force=opts.force, disable=opts.disable)  # raises with the trace
    backend_key = (plan.backend, plan.intermediate_padded, plan.options, plan.dispatch.layout,
                   plan.dispatch.wire)
    weights = state.processed.get(backend_key)
    if weights is None:
        weights = state.processed[backend_key] = host.process_weights(
            plan, canonical_weights(module, state.layout))
    layer = host.make_runner(plan, weights, check_values=False)
    if plan.dispatcher is not None:
        from ..ep import DispatchedLayer

        layer = DispatchedLayer(layer, shared_dispatcher(host, plan, group))
    hit = state.loaded[cache_key] = Loaded(res, layer)
    return hit


#: One dispatcher per (host, plan's dispatcher and spec, group), shared by every layer of that
#: shape: layers run one after another, a dispatcher keeps no state between calls (the
#: handle travels in ``Dispatched``), and DeepEP's buffers are large. Held by the layers
#: using it: gone with the model.
_DISPATCHERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_dispatcher(host: Host, plan, group: Any):
    key = (id(host), plan.dispatcher, plan.spec, plan.dispatch, group)
    d = _DISPATCHERS.get(key)
    if d is None:
        d = _DISPATCHERS[key] = host.make_dispatcher(plan, group)
    return d
