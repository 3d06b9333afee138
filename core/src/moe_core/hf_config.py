"""Read the MoE layers of a Hugging Face ``config.json`` into a :class:`~moe_core.models.ModelConfig`.

Every value is type-checked where it is read: a field of the wrong type or range, or one
moe-core cannot honour (a scoring function it does not compute, a quantization it does not
name), raises :class:`ConfigFieldError` naming the key and what was expected. Nothing a
config says about the experts is dropped silently.

Decisions, documented once here:

* Integers are JSON integers: ``2048.0`` and ``2048.5`` are both refused (a size written as a
  float is a malformed config), and so are booleans and strings of digits.
* Floats accept integers; NaN and infinities are refused.
* A per-layer value is a list with one entry per decoder layer (``num_hidden_layers``);
  a list of any other length is refused.
* Which layers are MoE comes from the first of: ``mlp_layer_types`` / ``layers_block_type`` /
  ``hybrid_override_pattern``, ``moe_layers``, ``first_k_dense_replace`` (+ ``moe_layer_freq``),
  ``num_dense_layers``, ``moe_layer_start_index``..``moe_layer_end_index``,
  ``expert_layer_period`` / ``expert_layer_offset``, ``interleave_moe_layer_step``,
  ``decoder_sparse_step``; ``mlp_only_layers`` always makes a layer dense.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ModelConfigError
from .models import BIASED, LayerShape, ModelConfig, RouterConfig
from .spec import Activation, Quant

#: Upper bounds that keep a malformed config from reaching arithmetic (a million experts
#: or a hidden size of 2**40 is a typo, not a model).
LIMITS = {"experts": 1 << 16, "size": 1 << 20, "layers": 1 << 14}


class ConfigFieldError(ModelConfigError):
    """One config field with a value moe-core cannot read or honour; ``field`` names it."""

    def __init__(self, name: str, field: str, message: str):
        self.field = field
        super().__init__(f"{name}: {field}: {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class _Fields:
    """Typed reads of one config dict (the text model's, merged over the top level)."""

    d: dict[str, Any]
    name: str

    def error(self, key: str, got: Any, expected: str) -> ConfigFieldError:
        return ConfigFieldError(self.name, key, f"got {_show(got)}; expected {expected}")

    def first_key(self, *keys: str) -> str | None:
        return next((k for k in keys if self.d.get(k) is not None), None)

    def int(self, key: str, lo: int = 1, hi: int = LIMITS["size"], value: Any = None) -> int:
        v = self.d.get(key) if value is None else value
        if not _is_int(v):
            raise self.error(key, v, "an integer" + (" (not a float)" if isinstance(v, float) else ""))
        if not lo <= v <= hi:
            raise self.error(key, v, f"an integer in [{lo}, {hi}]")
        return v

    def opt_int(self, key: str, lo: int = 1, hi: int = LIMITS["size"]) -> int | None:
        return None if self.d.get(key) is None else self.int(key, lo, hi)

    def float(self, key: str, lo: float = 0.0, positive: bool = False) -> float | None:
        v = self.d.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, v, "a finite number")
        if v < lo or (positive and v == 0):
            raise self.error(key, v, f"a number {'>' if positive else '>='} {lo}")
        return float(v)

    def bool(self, key: str) -> bool | None:
        v = self.d.get(key)
        if v is None or isinstance(v, bool):
            return v
        if _is_int(v) and v in (0, 1):  # some configs write 0/1
            return bool(v)
        raise self.error(key, v, "true or false")

    def str(self, key: str) -> str | None:
        v = self.d.get(key)
        if v is None or isinstance(v, str):
            return v
        raise self.error(key, v, "a string")

    def per_layer(self, key: str, layers: int, lo: int = 1, hi: int = LIMITS["size"],
                  list_lo: int | None = None) -> list[int] | None:
        """An integer, or a list of one integer per layer: the value of each layer
        (``list_lo``: the least a list entry may be, e.g. 0 experts for a dense layer)."""
        v = self.d.get(key)
        if v is None:
            return None
        if isinstance(v, list):
            if len(v) != layers:
                raise self.error(key, v, f"an integer or a list of one per layer "
                                         f"({layers} = num_hidden_layers), got {len(v)} values")
            lo = lo if list_lo is None else list_lo
            return [self.int(f"{key}[{i}]", lo, hi, value=x) for i, x in enumerate(v)]
        return [self.int(key, lo, hi)] * layers

    def int_list(self, key: str, lo: int = 0, hi: int = LIMITS["layers"]) -> list[int] | None:
        v = self.d.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise self.error(key, v, "a list of layer indices")
        return [self.int(f"{key}[{i}]", lo, hi, value=x) for i, x in enumerate(v)]


# -- where the MoE fields live -------------------------------------------------------------
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token", "moe_k",
          "moe_top_k")
_INTER = ("moe_intermediate_size", "expert_ffn_hidden_size", "ffn_hidden_size", "intermediate_size")
_SUBCONFIGS = (("text_config",), ("language_config",), ("llm_config",), ("thinker_config", "text_config"))


def _text_fields(config: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """The dict holding the MoE fields (a nested text model's, merged over the top level),
    and the model_type: the top level's, else the text model's."""
    merged = dict(config)
    for path in _SUBCONFIGS:
        sub: Any = config
        for key in path:
            sub = sub.get(key) if isinstance(sub, dict) else None
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigFieldError(name, ".".join(path), f"got {_show(sub)}; expected an object")
        merged = {**config, **sub}
        break
    ffn = merged.get("ffn_config")  # DBRX keeps the MoE fields in ffn_config
    if ffn is not None:
        if not isinstance(ffn, dict):
            raise ConfigFieldError(name, "ffn_config", f"got {_show(ffn)}; expected an object")
        merged = {**merged, **ffn}
        act = ffn.get("ffn_act_fn")
        if isinstance(act, dict):
            merged["hidden_act"] = act.get("name")
    top, text = config.get("model_type"), merged.get("model_type")
    model_type = top if top is not None else text
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigFieldError(name, "model_type", f"got {_show(model_type)}; expected a string")
    return merged, model_type or "unknown"


# -- which layers are MoE ----------------------------------------------------------------
#: Layer types with routed experts; any other type (dense, mlp, attention, mamba, ...) has none.
_SPARSE_TYPES = {"sparse", "moe", "hash_moe", "e"}
_LAYER_TYPE_KEYS = ("mlp_layer_types", "layers_block_type", "hybrid_override_pattern")


def _moe_layers(f: _Fields, layers: int) -> list[bool]:
    """One flag per decoder layer: does it hold routed experts?"""
    for key in _LAYER_TYPE_KEYS:
        v = f.d.get(key)
        if v is None:
            continue
        items = list(v) if isinstance(v, str) else v
        if not isinstance(items, list) or len(items) != layers or not all(isinstance(x, str) for x in items):
            raise f.error(key, v, f"one layer type per layer ({layers} strings)")
        return [x.lower() in _SPARSE_TYPES for x in items]
    only = set(f.int_list("mlp_only_layers") or [])
    moe_layers = f.int_list("moe_layers")
    if moe_layers is not None:
        flags = [i in set(moe_layers) for i in range(layers)]
    elif f.d.get("first_k_dense_replace") is not None:
        k = f.int("first_k_dense_replace", 0, LIMITS["layers"])
        freq = f.opt_int("moe_layer_freq", 1, LIMITS["layers"]) or 1
        flags = [i >= k and i % freq == 0 for i in range(layers)]
    elif f.d.get("num_dense_layers") is not None:
        k = f.int("num_dense_layers", 0, LIMITS["layers"])
        flags = [i >= k for i in range(layers)]
    elif f.d.get("moe_layer_start_index") is not None:
        lo = f.int("moe_layer_start_index", 0, LIMITS["layers"])
        hi = f.d.get("moe_layer_end_index")
        hi = layers - 1 if hi is None or hi == -1 else f.int("moe_layer_end_index", 0, LIMITS["layers"])
        step = f.opt_int("moe_layer_interval", 1, LIMITS["layers"]) or 1
        flags = [lo <= i <= hi and (i - lo) % step == 0 for i in range(layers)]
    elif f.d.get("expert_layer_period") is not None:
        period = f.int("expert_layer_period", 1, LIMITS["layers"])
        offset = f.opt_int("expert_layer_offset", 0, LIMITS["layers"]) or 0
        flags = [i % period == offset for i in range(layers)]
    else:
        step = f.opt_int("interleave_moe_layer_step", 1, LIMITS["layers"]) or \
            f.opt_int("decoder_sparse_step", 1, LIMITS["layers"]) or 1
        flags = [(i + 1) % step == 0 for i in range(layers)]
    return [flag and i not in only for i, flag in enumerate(flags)]


# -- activation ----------------------------------------------------------------------------
_ACT_KEYS = ("mlp_hidden_act", "hidden_act", "hidden_activation", "activation_function")
_SILU = {"silu", "swish", "swiglu"}
_GELU_TANH = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh"}
#: Families whose modelling code fixes something their config does not say.
_SWIGLU_ALPHA = {"gpt_oss": 1.702}  # gpt-oss's clamped SwiGLU, from its modelling code


def _activation(f: _Fields, model_type: str) -> tuple[Activation, float | None, float | None]:
    key = f.first_key(*_ACT_KEYS)
    act = (f.str(key) if key else None) or "silu"
    act = act.lower()
    for k in ("swiglu_limits", "swiglu_limits_shared"):
        if f.d.get(k) is not None:
            raise f.error(k, f.d[k], "null: per-layer clamps applied after the activation are "
                                     "not an activation moe-core computes")
    limit = f.float("swiglu_limit", positive=True)
    alpha = f.float("swiglu_alpha", positive=True) or _SWIGLU_ALPHA.get(model_type)
    if limit is not None or alpha is not None:
        if limit is None:
            raise f.error("swiglu_limit", None, "a clamp limit alongside swiglu_alpha")
        if act not in _SILU:
            raise f.error(key or "hidden_act", act, "silu with a swiglu_limit")
        return Activation.SWIGLU_LIMIT, limit, alpha
    if act in ("relu2", "relu_squared"):
        return Activation.RELU2, None, None
    if act in _GELU_TANH:
        return Activation.GELU_GATED, None, None
    if act in _SILU:
        return Activation.SILU_GATED, None, None
    expected = "one of " + ", ".join(sorted(_SILU | _GELU_TANH | {"relu2"}))
    if act == "gelu":
        expected += " (exact, erf-based GELU is not computed; gelu_gated is the tanh approximation)"
    raise f.error(key or "hidden_act", act, expected)


# -- router ------------------------------------------------------------------------------------
#: Families whose router the config does not (fully) describe, from their modelling code:
#: scoring and whether the top-k weights are renormalized when the config does not say.
#: Each one is checked against transformers by scripts/hf_families.py.
_SIGMOID_TYPES = ("deepseek_v3", "deepseek_v32", "axk1", "axk2", "bailing_hybrid", "beam", "exaone_moe",
                  "glm4_moe", "glm4_moe_lite", "glm4v_moe", "glm4v_moe_text", "glm5_next", "glm_moe_dsa",
                  "hy_v4", "kimi_linear", "kimi_k2", "mimo_v2_flash", "solar_open", "nemotron_h", "dots1",
                  "dots3_note", "flint", "minimax_m2", "lfm2_moe")
_ROUTER_BY_TYPE: dict[str, tuple[str, bool]] = {
    **{t: ("sigmoid", True) for t in _SIGMOID_TYPES},
    **{t: ("softmax", True) for t in ("mixtral", "minimax", "qwen3_5_moe", "qwen3_5_moe_text",
                                      "qwen3_vl_moe", "qwen3_vl_moe_text", "dbrx", "hunyuan_v1_moe")},
    **{t: ("topk_softmax", True) for t in ("granitemoe", "granitemoeshared", "granitemoehybrid",
                                           "granitemoe_swa", "gpt_oss")},
    "jamba": ("softmax", False), "phimoe": ("sparsemixer", False),
    "llama4": ("top1_sigmoid", False), "llama4_text": ("top1_sigmoid", False),
    "ernie4_5_moe": ("softmax_bias", True),
}
#: Families whose experts compute something moe-core does not (checked by scripts/hf_families.py).
_EXPERTS_NOT_COMPUTED = {
    "muse_spark": "apply a norm after each down projection (has_post_expert_norm)",
    "inkling2": "apply a soft-capped SwiGLU between the projections (Inkling2SoftcappedSwiGLU)",
    "jetmoe": "are split into input and output ParallelExperts modules",
}
#: Routers moe-core does not compute, by what they do differently (recorded in the notes).
_ROUTER_NOT_COMPUTED = {
    "kolibri1": "the correction bias is added to the logits before the sigmoid",
    "openai_privacy_filter": "the top-k softmax weights are divided by top_k",
}
_SCALE_KEYS = ("routed_scaling_factor", "router_scaling_factor", "moe_routed_scaling_factor",
               "moe_router_scaling_factor")
_RENORM_KEYS = ("norm_topk_prob", "moe_renormalize", "renormalize")


def _router(f: _Fields, model_type: str, experts: int) -> tuple[RouterConfig, list[str]]:
    """The router, or a stand-in (``known=False``) with a note naming what is not computed."""
    scoring = f.str("scoring_func") or f.str("expert_selection_fn")
    method = f.str("topk_method")
    group_key = f.first_key("n_group", "num_expert_group") or "n_group"
    n_group = f.opt_int(group_key, 1, LIMITS["experts"])
    topk_group = f.opt_int("topk_group", 1, LIMITS["experts"])
    renorm_key = f.first_key(*_RENORM_KEYS)
    renorm = f.bool(renorm_key) if renorm_key else None
    scale_key = f.first_key(*_SCALE_KEYS)
    scale = f.float(scale_key, positive=True) if scale_key else None
    if n_group and experts % n_group:
        raise f.error(group_key, n_group, f"a divisor of the {experts} experts")
    if n_group and topk_group and topk_group > n_group:
        raise f.error("topk_group", topk_group, f"at most {group_key} ({n_group})")
    for key, allowed in (("zero_expert_num", (None, 0)), ("moe_apply_router_weight_on_input", (None, False)),
                         ("moe_router_logit_softcapping", (None, 0, 0.0))):
        if f.d.get(key) not in allowed:
            raise f.error(key, f.d[key], f"{allowed[-1]!r}: moe-core's layer weights the outputs of "
                                         "the routed experts only")

    def stand_in(why: str):
        note = f"router not computed by moe-core ({why}); `moe run` routes with softmax_topk"
        return RouterConfig("softmax_topk", n_group, topk_group, True, scale, known=False), [note]

    if scoring not in (None, "softmax", "sigmoid"):
        return stand_in(f"scoring_func {scoring!r}")
    if method not in (None, "greedy", "noaux_tc"):
        return stand_in(f"topk_method {method!r}")
    if model_type in _ROUTER_NOT_COMPUTED:
        return stand_in(_ROUTER_NOT_COMPUTED[model_type])
    if scoring is None and method is None:
        scoring, default = _ROUTER_BY_TYPE.get(model_type, (None, True))
    else:
        scoring, default = ("sigmoid" if scoring == "sigmoid" or method == "noaux_tc" else "softmax"), False
    if scoring is None:
        if renorm is None:
            return stand_in(f"model_type {model_type!r} does not record its router in the config")
        scoring = "softmax"
    renorm = default if renorm is None else renorm
    kind = {"sigmoid": "sigmoid_grouped_topk" if (n_group or 1) > 1 else "sigmoid_topk_bias",
            "softmax": "softmax_topk", "softmax_bias": "softmax_topk_bias"}.get(scoring, scoring)
    return RouterConfig(kind, n_group, topk_group, renorm, scale), []


# -- quantization --------------------------------------------------------------------------------
_EXPERT_PATTERN = re.compile(r"experts|block_sparse_moe|\bmoe\b|\.mlp$|\bmlp\b", re.I)


def _excluded(names: Any, key: str, f: _Fields) -> bool:
    """Whether a list of module names / patterns excluded from quantization covers the
    routed experts."""
    if names is None:
        return False
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise f.error(key, names, "a list of module names")
    return any(re.search(r"experts(?!\.gate)|mlp\.\*|\bmlp\b\s*$", n) and "shared" not in n
               for n in names)


def _quant(qc: Any, f: _Fields) -> tuple[Quant, list[str]]:
    """The routed experts' weight format."""
    if qc is not None and not isinstance(qc, dict):
        raise f.error("quantization_config", qc, "an object")
    if qc is not None and isinstance(qc.get("quantization"), dict):  # ModelOpt's hf_quant_config.json
        qc = {**qc, **qc["quantization"], "quant_method": qc.get("quant_method", "modelopt")}
    q = _Fields(qc or {}, f.name)
    key = "quantization_config"
    # Read with or without a quantization_config: a top-level one must not be ignored.
    expert_dtype = q.str("expert_dtype") or f.str("expert_dtype")
    if expert_dtype is not None:  # overrides the rest for the routed experts
        table = {"fp4": Quant.MXFP4, "mxfp4": Quant.MXFP4, "nvfp4": Quant.NVFP4,
                 "bf16": Quant.BF16, "bfloat16": Quant.BF16}
        if expert_dtype.lower() not in table:
            raise f.error("expert_dtype", expert_dtype, f"one of {sorted(table)}")
        return table[expert_dtype.lower()], [f"expert_dtype {expert_dtype!r} gives the routed "
                                             "experts' format (over any quantization_config)"]
    if qc is None:
        return Quant.BF16, []
    method = (q.str("quant_method") or "").lower()
    algo = (q.str("quant_algo") or "").upper()
    for ex in ("modules_to_not_convert", "ignore", "exclude_modules", "ignored_layers"):
        if _excluded(qc.get(ex), f"{key}.{ex}", f):
            return Quant.BF16, [f"{key}.{ex} excludes the routed experts: they stay unquantized"]
    if method == "mxfp4" or (method == "modelopt" and algo == "MXFP4"):
        return Quant.MXFP4, []
    if algo == "NVFP4":
        return Quant.NVFP4, []
    if method == "modelopt":
        if algo == "FP8":
            return Quant.FP8_TENSOR, []
        raise f.error(f"{key}.quant_algo", qc.get("quant_algo"), "FP8, NVFP4 or MXFP4")
    if method == "fp8":
        fmt = q.str("fmt")
        if fmt not in (None, "e4m3", "float8_e4m3fn"):
            raise f.error(f"{key}.fmt", fmt, "e4m3")
        block = qc.get("weight_block_size")
        if block is None:
            return Quant.FP8_TENSOR, []
        if block == [128, 128] and all(_is_int(b) for b in block):
            return Quant.FP8_BLOCK128, []
        raise f.error(f"{key}.weight_block_size", block, "[128, 128] (or absent, per-tensor)")
    if method == "compressed-tensors":
        return _compressed_tensors(qc, f), []
    raise f.error(f"{key}.quant_method", qc.get("quant_method"),
                  "fp8, compressed-tensors, modelopt (FP8/NVFP4/MXFP4) or mxfp4")


def _compressed_tensors(qc: dict[str, Any], f: _Fields) -> Quant:
    key = "quantization_config.config_groups"
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise f.error(key, groups, "an object of quantization groups")
    fmt = qc.get("format")
    found = set()
    for gname, g in groups.items():
        w = g.get("weights") if isinstance(g, dict) else None
        if not isinstance(w, dict):
            raise f.error(f"{key}.{gname}.weights", w, "an object")
        bits, typ, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
        if (bits, typ) == (4, "float") or fmt == "nvfp4-pack-quantized":
            found.add(Quant.NVFP4)
            continue
        if (bits, typ) != (8, "float"):
            raise f.error(f"{key}.{gname}.weights", {"num_bits": bits, "type": typ},
                          "8-bit float (FP8) or 4-bit float (NVFP4) weights")
        if strategy == "block":
            if w.get("block_structure") != [128, 128]:
                raise f.error(f"{key}.{gname}.weights.block_structure", w.get("block_structure"),
                              "[128, 128]")
            found.add(Quant.FP8_BLOCK128)
        elif strategy in ("channel", "tensor"):
            found.add(Quant.FP8_CHANNEL if strategy == "channel" else Quant.FP8_TENSOR)
        else:
            raise f.error(f"{key}.{gname}.weights.strategy", strategy, "channel, tensor or block")
    if len(found) != 1:
        raise f.error(key, sorted(q.value for q in found), "one weight format for every group")
    return found.pop()


# -- the whole config ----------------------------------------------------------------------------
def parse_hf_config(config: Any, name: str = "config.json") -> ModelConfig:
    """The MoE layers of a Hugging Face config (a nested ``text_config`` included).

    :raises ConfigFieldError: naming the field that is malformed or cannot be honoured.
    :raises ModelConfigError: when the config describes no routed experts.
    """
    if not isinstance(config, dict):
        raise ModelConfigError(f"{name}: the top level is a JSON {type(config).__name__}; "
                               "expected an object (a Hugging Face config.json)")
    d, model_type = _text_fields(config, name)
    f = _Fields(d, name)
    if model_type in _EXPERTS_NOT_COMPUTED:
        raise ConfigFieldError(name, "model_type", f"got {model_type!r}, whose experts "
                               f"{_EXPERTS_NOT_COMPUTED[model_type]}; expected experts moe-core computes")
    missing = [keys[0] for keys in (_EXPERTS, _TOP_K, ("hidden_size",), _INTER)
               if f.first_key(*keys) is None]
    if missing:
        raise ModelConfigError(f"{name}: not an MoE config (no {', '.join(missing)}; "
                               f"model_type {model_type!r}); expected the routed experts' fields")
    layers = f.opt_int(f.first_key("num_hidden_layers", "n_layers") or "num_hidden_layers", 1, LIMITS["layers"])
    if layers is None:  # some configs derive it from their per-layer type list
        key = f.first_key(*_LAYER_TYPE_KEYS)
        v = f.d.get(key) if key else None
        layers = len(v) if isinstance(v, (list, str)) and 0 < len(v) <= LIMITS["layers"] else 1
    experts = f.per_layer(f.first_key(*_EXPERTS), layers, 1, LIMITS["experts"], list_lo=0)
    top_k = f.per_layer(f.first_key(*_TOP_K), layers, 1, LIMITS["experts"], list_lo=0)
    inter = f.per_layer(f.first_key(*_INTER), layers, 1)
    shared_key = f.first_key("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
    shared = f.per_layer(shared_key, layers, 0, LIMITS["experts"]) if shared_key else None
    if shared is None:
        shared_size = f.first_key("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size")
        shared = [1 if shared_size and f.int(shared_size, 0) else 0] * layers
    hidden = f.int("hidden_size")
    latent_key = f.first_key("moe_latent_size", "moe_hidden_size")
    latent = f.int(latent_key) if latent_key else None
    flags = _moe_layers(f, layers)
    shapes = []
    for i in range(layers):
        if not flags[i] or experts[i] == 0 or top_k[i] == 0:
            continue
        if top_k[i] > experts[i]:
            key = f.first_key(*_TOP_K)
            raise f.error(key, top_k[i], f"at most the {experts[i]} experts (layer {i})")
        shapes.append(LayerShape(i, experts[i], top_k[i], inter[i], shared[i]))
    if not shapes:
        raise ModelConfigError(f"{name}: not an MoE config (no layer has routed experts; "
                               f"model_type {model_type!r}); expected at least one MoE layer")
    activation, limit, alpha = _activation(f, model_type)
    router, notes = _router(f, model_type, shapes[0].num_experts)
    qc = config.get("quantization_config", d.get("quantization_config"))
    quant, qnotes = _quant(qc, f)
    first = shapes[0]
    return ModelConfig(
        name=name, model_type=model_type, num_experts=first.num_experts, top_k=first.top_k,
        hidden_size=hidden, moe_intermediate_size=first.moe_intermediate_size,
        activation=activation, quant=quant, router=router, swiglu_limit=limit, swiglu_alpha=alpha,
        num_shared_experts=first.num_shared_experts, moe_latent_size=latent,
        num_moe_layers=len(shapes), has_bias=model_type in BIASED,
        notes=tuple(notes + qnotes), layers=tuple(shapes),
    )
