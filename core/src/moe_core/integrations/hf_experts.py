"""One transformers experts module seen from moe-core: its layout and activation, how
transformers sharded it, its spec on this rank, its canonical weights, and the layers loaded
for it. The one reader of experts modules: the integration (:mod:`.transformers`,
:mod:`.hf_ep`) and the family check (:mod:`.families`) both go through it.

transformers >= 5 keeps each MoE layer's routed experts as one module with 3-D
``gate_up_proj`` (or ``up_proj``) / ``down_proj`` and calls it as ``experts(hidden_states,
top_k_index, top_k_weights)`` after the model's own router. Classes decorated with
transformers' ``@use_experts_implementation`` declare their layout on the instance
(``is_transposed``, ``is_concatenated``, ``has_bias``, ``has_gate``, ``has_post_expert_norm``);
everything here is read from the module, its parameters and the model config, never from a
table of model names. What moe-core cannot compute is refused by the feature's name
(:class:`UnsupportedExperts`).

Under transformers' sharding the parameters the experts forward sees are this rank's shard
(transformers swaps the DTensors for their local tensors around the call): expert
parallelism (``grouped_gemm``: whole experts, dim 0) or expert tensor parallelism
(``packed_colwise`` / ``rowwise``: a slice of every expert's intermediate dimension).
"""

from __future__ import annotations

import inspect
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

_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
#: Config keys of the routed experts' count and of the experts per token, across families.
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token", "moe_k",
              "moe_top_k")


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
    #: ``gate_up_proj_bias`` (``up_proj_bias``) / ``down_proj_bias`` are added.
    has_bias: bool = False
    #: ``gate_up_proj`` holds gate and up (False: ``up_proj`` only, a non-gated MLP).
    gated: bool = True
    #: DBRX's ``mlp.w1 / v1 / w2`` 2-D stacks instead of 3-D parameters.
    dbrx: bool = False

    @property
    def up_name(self) -> str:
        return "gate_up_proj" if self.gated else "up_proj"


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (a DTensor's local shard; a plain tensor as it is)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _param3(module: torch.nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, torch.Tensor) and p.dim() == 3


def is_experts(module: torch.nn.Module) -> bool:
    """A routed-experts module: 3-D ``gate_up_proj`` (or ``up_proj``) and ``down_proj``
    parameters, or DBRX's ``mlp.w1`` stacks."""
    return (_param3(module, "down_proj") and (_param3(module, "gate_up_proj") or _param3(module, "up_proj"))) \
        or isinstance(getattr(getattr(module, "mlp", None), "w1", None), torch.Tensor)


def experts_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every routed-experts module of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if n and is_experts(m)]


def where_of(module: torch.nn.Module, name: str = "") -> str:
    """How an error names the module: ``"name (Class)"``, or the class when unnamed."""
    return f"{name} ({type(module).__name__})" if name else type(module).__name__


def experts_layout(module: torch.nn.Module, name: str = "") -> ExpertsLayout:
    """The module's layout, or :class:`UnsupportedExperts` naming what moe-core cannot run."""
    where = where_of(module, name)
    if getattr(module, "has_post_expert_norm", False):
        raise UnsupportedExperts(where, "has_post_expert_norm",
                                 "a norm after each expert's down projection; expected none")
    # the class's forward: transformers' sharding wraps the instance's in a (*args, **kwargs) one
    params = list(inspect.signature(type(module).forward).parameters)[1:]
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
    declared = getattr(module, "has_gate", None)
    if declared is not None and bool(declared) != gated:
        raise UnsupportedExperts(where, "has_gate", f"declares has_gate={declared} but holds "
                                 f"{'gate_up_proj' if gated else 'up_proj'}; expected "
                                 f"{'up_proj' if gated else 'gate_up_proj'} (transformers' forward "
                                 "would not run the weights it has)")
    w = local(module.gate_up_proj if gated else module.up_proj)
    E, a, b = w.shape
    transposed = getattr(module, "is_transposed", None)
    if transposed is None:  # not decorated: the down projection's shape tells
        transposed = local(module.down_proj).shape[1] == b // (2 if gated else 1) != a
    up = "gate_up_proj" if gated else "up_proj"
    biases = [isinstance(getattr(module, n, None), torch.Tensor) for n in (f"{up}_bias", "down_proj_bias")]
    has_bias = bool(getattr(module, "has_bias", False)) or any(biases)
    if has_bias and not all(biases):
        raise UnsupportedExperts(where, "has_bias", f"declares expert biases but holds "
                                 f"{'only one of' if any(biases) else 'neither'} {up}_bias and "
                                 "down_proj_bias; expected both")
    return ExpertsLayout(transposed=bool(transposed), interleaved=not getattr(module, "is_concatenated", True),
                         has_bias=has_bias, gated=gated)


def _act_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


_GATED_ACTS = {"SiLUActivation": Activation.SILU_GATED, "SiLU": Activation.SILU_GATED,
               "silu": Activation.SILU_GATED, "PytorchGELUTanh": Activation.GELU_GATED,
               "GELUTanh": Activation.GELU_GATED, "NewGELUActivation": Activation.GELU_GATED}
_PLAIN_ACTS = {"ReLUSquaredActivation": Activation.RELU2}
#: A class's own ``_apply_gate`` must give moe-core's activation on a probe within this.
_GATE_TOLERANCE = 1e-4


def experts_activation(module: torch.nn.Module, layout: ExpertsLayout,
                       name: str = "") -> tuple[Activation, float | None, float | None]:
    """``(activation, swiglu_limit, swiglu_alpha)`` the module computes."""
    where = where_of(module, name)
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
        out = Activation.SWIGLU_LIMIT, float(limit), None if alpha is None else float(alpha)
    else:
        kind = _GATED_ACTS.get(_act_name(act))
        if kind is None:
            raise UnsupportedExperts(where, "act_fn", f"{_act_name(act)} between the projections; "
                                     f"expected one of {sorted(_GATED_ACTS)}")
        out = kind, None, None
    if custom:
        _check_own_gate(module, gate, layout, out, where)
    return out


def _check_own_gate(module: torch.nn.Module, gate: Any, layout: ExpertsLayout,
                    activation: tuple[Activation, float | None, float | None], where: str) -> None:
    """A class's own ``_apply_gate`` is run on a probe of gate/up pre-activations and must
    give what moe-core computes for ``activation`` (its flags and names alone do not say)."""
    from types import SimpleNamespace

    from ..activations import apply_activation
    from ..reference.oracle import relative_error

    kind, limit, alpha = activation
    probe = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * 4
    canonical = torch.cat([probe[:, 0::2], probe[:, 1::2]], dim=1) if layout.interleaved else probe
    want = apply_activation(SimpleNamespace(activation=kind, swiglu_limit=limit, swiglu_alpha=alpha),
                            canonical)
    own = f"applies its own gate ({getattr(gate, '__qualname__', gate)})"
    try:
        with torch.no_grad():
            got = gate(module, probe)
    except Exception as e:  # noqa: BLE001 - a gate that needs more than gate_up: refused
        raise UnsupportedExperts(where, "_apply_gate", f"{own}, which failed on a probe "
                                 f"({type(e).__name__}: {e})") from None
    err = relative_error(got.float(), want) if got.shape == want.shape else float("inf")
    if not err <= _GATE_TOLERANCE:
        knobs = "" if limit is None else f" (limit {limit}" + ("" if alpha is None else f", alpha {alpha}") + ")"
        raise UnsupportedExperts(where, "_apply_gate", f"{own}, which does not compute "
                                 f"{kind.value}{knobs} (relative error {err:.1e} on a probe); expected "
                                 "act(gate) * up or a clamped SwiGLU")


def check_experts(module: torch.nn.Module, name: str = "") -> ExpertsLayout:
    """The layout of a module whose computation moe-core reproduces (layout and activation
    both read); :class:`UnsupportedExperts` otherwise."""
    layout = experts_layout(module, name)
    experts_activation(module, layout, name)
    return layout


def _params(module: torch.nn.Module, layout: ExpertsLayout) -> dict[str, torch.Tensor]:
    """This rank's weight tensors, by attribute name."""
    if layout.dbrx:
        return {f"mlp.{n}": local(getattr(module.mlp, n)) for n in ("w1", "v1", "w2")}
    names = (layout.up_name, "down_proj") + (
        (f"{layout.up_name}_bias", "down_proj_bias") if layout.has_bias else ())
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
    p = {n: t.detach() for n, t in _params(module, layout).items()}
    if layout.dbrx:
        E = module.num_experts
        w1, v1, w2 = (p[f"mlp.{n}"].view(E, -1, p[f"mlp.{n}"].shape[-1]) for n in ("w1", "v1", "w2"))
        gu, down = torch.cat([w1, v1], dim=1), w2.transpose(1, 2)
    else:
        gu, down = p[layout.up_name], p["down_proj"]
    if layout.transposed:
        gu, down = gu.transpose(1, 2), down.transpose(1, 2)
    b13 = b2 = None
    if layout.interleaved:
        gu = torch.cat([gu[:, 0::2], gu[:, 1::2]], dim=1)
    if layout.has_bias:
        b = p[f"{layout.up_name}_bias"]
        b13 = (torch.cat([b[:, 0::2], b[:, 1::2]], dim=1) if layout.interleaved else b).float().contiguous()
        b2 = p["down_proj_bias"].float().contiguous()
    return MoEWeights(w13=gu.to(torch.bfloat16).contiguous(), w2=down.to(torch.bfloat16).contiguous(),
                      w13_bias=b13, w2_bias=b2)


def _storage(t: torch.Tensor):
    return local(t).untyped_storage()  # a DTensor has no storage of its own: its shard has


def held_bytes(module: torch.nn.Module, state: "ExpertsState") -> int:
    """Bytes of processed weights the module's plans hold beyond its own parameters (each
    storage counted once): 0 where every backend reads the module's tensors as they are."""
    own = {_storage(t).data_ptr() for t in module.parameters(recurse=True)}
    seen: set[int] = set()
    total = 0
    for weights in state.processed.values():
        for t in weights.tensors().values():
            ptr = _storage(t).data_ptr()
            if ptr not in own and ptr not in seen:
                seen.add(ptr)
                total += _storage(t).nbytes()
    return total


def _local_shape(module: torch.nn.Module, layout: ExpertsLayout) -> tuple[int, int, int]:
    """``(experts, hidden, rows of w13)`` of this rank's shard (canonical ``w13 [E, R, H]``)."""
    if layout.dbrx:
        E, w1 = module.num_experts, local(module.mlp.w1)
        return E, w1.shape[-1], 2 * w1.shape[0] // E
    w = local(getattr(module, layout.up_name))
    H, R = w.shape[1:] if layout.transposed else w.shape[:0:-1]
    return w.shape[0], H, R


def _config_int(config: Any, keys: tuple[str, ...]) -> int | None:
    for k in keys:
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def config_top_k(config: Any) -> int | None:
    """The experts per token of ``config`` (or its text / FFN sub-config)."""
    for c in (config, getattr(config, "text_config", None), getattr(config, "ffn_config", None)):
        top_k = _config_int(c, TOP_K_KEYS)
        if top_k is not None:
            return top_k
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


def sharding_of(module: torch.nn.Module, layout: ExpertsLayout, config: Any,
                name: str = "") -> Sharding:
    """Compare the local parameter shapes with the config's sizes (whole without a process
    group of several ranks). transformers lays its meshes out with the TP dimension (dense)
    and the EP dimension (experts) innermost, so consecutive global ranks form each group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Sharding()
    local_experts, _, rows = _local_shape(module, layout)
    local_inter = rows // 2 if layout.gated else rows
    experts = _config_int(config, EXPERT_KEYS)
    inter = _config_int(config, ("moe_intermediate_size", "intermediate_size"))
    it = where_of(module, name)
    if experts is not None and local_experts != experts:
        if local_experts > experts or experts % local_experts:
            raise ModelConfigError(f"{it} holds {local_experts} experts and the config says "
                                   f"{experts}; expected a divisor of {experts} (expert parallelism)")
        ep = experts // local_experts
        return Sharding(ep, ep, dist.get_rank() % ep)
    if inter is not None and local_inter != inter:
        if local_inter > inter or inter % local_inter:
            raise ModelConfigError(f"{it} has intermediate size {local_inter} and the config "
                                   f"{inter}; expected a divisor of {inter} (tensor parallelism)")
        tp = inter // local_inter
        return Sharding(tp, 1, dist.get_rank() % tp)
    return Sharding()


def layer_spec(module: torch.nn.Module, layout: ExpertsLayout, config: Any, *, max_tokens: int,
               name: str = "", sharding: Sharding = Sharding(), a2a: str | A2A = A2A.NONE,
               top_k: int | None = None, act_dtype: str | None = None) -> MoESpec:
    """The spec of one experts module on this rank, from its local shapes, ``sharding``, its
    activation and the model's config (the module's own ``config`` first). ``top_k``: the
    routes per row the module is called with (default: the config's experts per token)."""
    where = where_of(module, name)
    E, H, R = _local_shape(module, layout)
    config = getattr(module, "config", None) or config
    cfg_top_k = config_top_k(config)
    if cfg_top_k is None:
        raise ModelConfigError(f"{type(config).__name__} has no num_experts_per_tok; expected the "
                               "experts per token")
    weight = next(iter(_params(module, layout).values()))
    if weight.dtype not in _DTYPE_NAMES:
        raise InputError(f"{where} weights are {weight.dtype}; expected bf16, fp16 or fp32 "
                         "(quantized transformers checkpoints are not supported yet)")
    activation, limit, alpha = experts_activation(module, layout, name)
    moe_tp = sharding.tp // sharding.ep
    return MoESpec(num_experts=E * sharding.ep, top_k=top_k or cfg_top_k, hidden_size=H,
                   intermediate_size=(R // 2 if layout.gated else R) * moe_tp, activation=activation,
                   swiglu_limit=limit, swiglu_alpha=alpha, has_bias=layout.has_bias,
                   act_dtype=act_dtype or _DTYPE_NAMES[weight.dtype], max_tokens=max_tokens,
                   arch="cpu" if weight.device.type == "cpu" else detect_arch(),
                   tp_size=sharding.tp, ep_size=sharding.ep, rank=sharding.rank, a2a=a2a,
                   model=getattr(config, "_name_or_path", None) or getattr(config, "model_type", None))


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
    #: More plan boundaries (tokens per rank) besides ``decode_tokens``: each range between
    #: two gets its own plan, chosen for that range alone (after ``moe tune``: the runner
    #: fastest over the range's buckets). E.g. ``(64,)``: 1-64, 65-256 and prefill. Plans of
    #: one backend share one set of processed weights, and backends that read the canonical
    #: layout as it is (Triton, DeepGEMM on SM90, the reference) share one canonical set: the
    #: module's own tensors where its layout is canonical, else one copy. Under moe-core's
    #: expert parallelism each plan also has its own dispatcher, sized for its range (DeepEP:
    #: a buffer per tier).
    tiers: tuple[int, ...] = ()
    #: How ``ep_implementation="moe_core"`` asks for tokens to travel; None: DeepEP
    #: low-latency for decode and DeepEP normal for prefill, which fall through to
    #: ``torch:all_to_all`` where DeepEP cannot serve the layer.
    a2a: str | None = None

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers) if isinstance(self.tiers, (tuple, list)) else (self.tiers,)
        for name, value in [("decode_tokens", self.decode_tokens), ("max_tokens", self.max_tokens),
                            *(("tiers", t) for t in tiers)]:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"{name}={value!r}: expected a positive int (tokens per rank)")
        if not 0 < self.decode_tokens <= self.max_tokens:
            raise InputError(f"decode_tokens={self.decode_tokens}, max_tokens={self.max_tokens}: "
                             "expected 0 < decode_tokens <= max_tokens")
        if not all(0 < t < self.max_tokens for t in tiers):
            raise InputError(f"tiers={tiers}: expected token counts in (0, max_tokens="
                             f"{self.max_tokens})")
        object.__setattr__(self, "tiers", tiers)
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

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The ``max_tokens`` of every plan but the prefill one, rising."""
        return tuple(sorted({*self.tiers, self.decode_tokens}))

    @property
    def plan_max_tokens(self) -> tuple[int, ...]:
        """The ``max_tokens`` of every plan a module holds (the last: prefill's least)."""
        return (*self.boundaries, self.max_tokens)

    def max_tokens_for(self, tokens: int) -> int:
        """The ``max_tokens`` of the plan that runs a call of ``tokens`` tokens per rank."""
        for b in self.boundaries:
            if tokens <= b:
                return b
        return max(self.max_tokens, 1 << math.ceil(math.log2(tokens)))

    def min_tokens_for(self, max_tokens: int) -> int:
        """The plan's ``min_tokens``: the boundary below its ``max_tokens`` (0: none)."""
        return max((b for b in self.boundaries if b < max_tokens), default=0)

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
    """``decode`` / ``prefill``; with tiers, each plan but the last also names its token range
    (``decode 65-256``, ``prefill 257-512``); the last, open-ended one stays ``prefill``."""
    regime = "decode" if max_tokens <= options.decode_tokens else "prefill"
    if not options.tiers or (regime == "prefill" and max_tokens not in options.boundaries):
        return regime
    return f"{regime} {options.min_tokens_for(max_tokens) + 1}-{max_tokens}"


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
    #: the canonical weights, kept while some processed set reads them (so a second backend
    #: that reads them as they are makes no second copy of a non-canonical module's)
    canonical: MoEWeights | None = None


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
    layout = check_experts(module, name)
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
    opts = state.options
    spec = layer_spec(module, state.layout, config, max_tokens=max_tokens, name=state.name,
                      sharding=sharding, a2a=a2a, top_k=top_k)
    if opts.tiers:  # without tiers each plan keeps its regime's range (min_tokens 0)
        spec = spec.replace(min_tokens=opts.min_tokens_for(max_tokens))
    return spec, opts.the_host().explain(spec, force=opts.force, disable=opts.disable)


def load_for(module: torch.nn.Module, state: ExpertsState, *, max_tokens: int,
             top_k: int | None = None, sharding: Sharding | None = None, a2a: A2A = A2A.NONE,
             group: Any = None) -> Loaded:
    """The layer for one plan, loaded on first use: resolve, process the weights (once per
    backend) and build the runner, plus the dispatcher on ``group`` when tokens travel."""
    if top_k == config_top_k(module.config):
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
        canonical = state.canonical
        if canonical is None:
            canonical = canonical_weights(module, state.layout)
        weights = state.processed[backend_key] = host.process_weights(plan, canonical)
        read = {_storage(t).data_ptr() for w in state.processed.values() for t in w.tensors().values()}
        kept = any(_storage(t).data_ptr() in read for t in canonical.tensors().values())
        state.canonical = canonical if kept else None
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
