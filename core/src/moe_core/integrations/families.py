"""Every MoE family of the installed transformers, checked against moe-core.

For each model type whose modelling code has a routed-experts module: take its default
config, shrink the expert counts, sizes and layers, build the model on the meta device,
and for each kind of experts module it has, fill one with random weights and compare
transformers' own forward with moe-core's reference backend on the same tokens and top-k.
The spec is derived twice, from the module and from the config dict through
:func:`moe_core.hf_config.parse_hf_config`, and the two must agree layer by layer; where the
config names a router moe-core reproduces, the model's router is compared too.

Each family ends ``matched`` or ``refused`` (with the feature moe-core cannot honour);
anything else (``mismatch``, ``error``) is a bug. ``scripts/hf_families.py`` writes the table.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import MoEError, ModelConfigError
from ..hf_config import parse_hf_config
from ..reference.oracle import relative_error
from ..routing import route
from .hf_experts import (EXPERT_KEYS, TOP_K_KEYS, UnsupportedExperts, canonical_weights,
                         experts_layout, experts_modules, layer_spec)

#: fp32 on both sides with bf16-exact weights: only the summation order differs.
TOLERANCE = 1e-5
TOKENS = 24
EXPERTS, TOP_K, INTERMEDIATE, LAYERS = 16, 4, 32, 6
#: Fields a default config leaves off that turn its MoE block on (the block is optional in
#: these families).
_GEMMA_MOE = {"enable_moe_block": True, "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 32}
#: ... and fields a default config leaves None that its model cannot be built without
#: (the values are any valid ones; they do not touch the experts).
FIXES: dict[str, dict[str, Any]] = {
    "gemma4": {"text_config": _GEMMA_MOE},
    "diffusion_gemma": {"text_config": _GEMMA_MOE},
    "qwen4_exp": {"text_config": {"indexer_n_heads": 4, "indexer_kv_heads": 1, "indexer_head_dim": 256,
                                  "indexer_budget": 64, "indexer_compress_ratio": 4}},
    "qwen3_omni_moe": {"talker_config": {"text_config": {"shared_expert_intermediate_size": 32},
                                         "spatial_merge_size": 2}},
    "dbrx": {"attn_config": {"rope_theta": 10000.0}},
    "hunyuan_v1_moe": {"head_dim": 128},
    "lfm2_moe": {"layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"]},
    "deepseek_ocr2": {"text_config": {"mlp_layer_types": ["dense"] + ["sparse"] * (LAYERS - 1)}},
    "dots1": {"n_shared_experts": 1},
}
_SIZE_KEY = re.compile(r"intermediate_size|ffn_hidden_size|share_expert_dim|intermediate_dim")
#: Sub-models the config parser does not read: their experts are checked from the module only.
_OTHER_TOWERS = re.compile(r"talker|vision|visual|audio|code2wav|code_predictor")


@dataclass
class FamilyResult:
    family: str
    status: str  # matched | refused | mismatch | error
    max_error: float | None = None
    reason: str = ""
    experts_modules: list[str] = field(default_factory=list)
    moe_layers: list[int] = field(default_factory=list)
    router: str = ""
    causal_lm: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roster() -> list[str]:
    """Model types of the installed transformers whose modelling code has an experts module."""
    import transformers.models as tm
    from transformers import CONFIG_MAPPING

    root = os.path.dirname(tm.__file__)
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, f"modeling_{name}.py")
        if name in CONFIG_MAPPING and os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                if re.search(r"^class \w*Experts\(nn\.Module\)", fh.read(), re.M):
                    out.append(name)
    return out


def _shrink(d: dict[str, Any]) -> dict[str, Any]:
    """Few experts, small expert sizes and few layers, everywhere in a config dict."""
    out = {}
    layers = d.get("num_hidden_layers")
    keep = min(layers, LAYERS) if isinstance(layers, int) else None
    for k, v in d.items():
        if not isinstance(k, str):  # id2label and the like
            pass
        elif keep and k == "per_layer_config" and isinstance(v, dict):
            v = {i: c for i, c in v.items() if str(i).isdigit() and int(i) < keep}
        elif isinstance(v, dict):
            v = _shrink(v)
        elif keep and k == "num_hidden_layers":
            v = keep
        elif keep and isinstance(v, (list, str)) and len(v) == layers and k != "model_type":
            v = v[:keep]
        elif keep and k in ("moe_layers", "mlp_only_layers") and isinstance(v, list):
            v = [i for i in v if isinstance(i, int) and i < keep]
        elif k in EXPERT_KEYS and (v is None or isinstance(v, int)):
            v = EXPERTS if v is None or v > EXPERTS else v
        elif k in TOP_K_KEYS and (v is None or isinstance(v, int)):
            v = TOP_K if v is None or v > TOP_K else v
        elif _SIZE_KEY.search(k) and isinstance(v, int) and v > 0:
            v = INTERMEDIATE
        elif _SIZE_KEY.search(k) and isinstance(v, list) and all(isinstance(x, int) for x in v):
            v = [INTERMEDIATE // (i + 1) for i in range(len(v))]
        elif k in ("n_group", "num_expert_group") and isinstance(v, int) and v > 1:
            v = 4
        elif k == "topk_group" and isinstance(v, int) and v > 1:
            v = 2
        elif k == "moe_layer_end_index" and keep and isinstance(v, int):
            v = min(v, keep - 1)
        out[k] = v
    return out


def _config_dict(family: str) -> dict[str, Any]:
    from transformers import CONFIG_MAPPING

    return _merge(_shrink(CONFIG_MAPPING[family]().to_dict()), FIXES.get(family, {}))


def _merge(d: dict[str, Any], fixes: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    for k, v in fixes.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _build_meta(family: str, d: dict[str, Any]):
    from transformers import CONFIG_MAPPING, AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = CONFIG_MAPPING[family](**copy.deepcopy(d))
    cfg._experts_implementation = "eager"
    causal = family in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    with torch.device("meta"):
        try:
            model = (AutoModelForCausalLM if causal else AutoModel).from_config(cfg)
        except ValueError:  # no auto class (e.g. Qwen3-Omni): the family's own model class
            model = _own_model_class(family, type(cfg))(cfg)
    return model.eval(), causal


def _own_model_class(family: str, config_class: type):
    import importlib
    import inspect

    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    for _, cls in inspect.getmembers(mod, inspect.isclass):
        if getattr(cls, "config_class", None) is config_class and cls.__name__.endswith(
                ("ForConditionalGeneration", "ForCausalLM", "Model")):
            return cls
    raise ValueError(f"transformers.models.{family} has no model class for {config_class.__name__}")


def _materialize(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random bf16-exact fp32 weights in place of the meta tensors: pre-activations of a few
    units, so clamps and the negative side of every activation are exercised."""
    module.to_empty(device="cpu").float()
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=True):
            if p.dim() >= 2:
                fan_in = p.shape[-1] if not name.endswith(("gate_up_proj", "down_proj")) or \
                    not getattr(module, "is_transposed", False) else p.shape[-2]
                p.copy_(torch.randn(p.shape, generator=gen) * (3.0 / fan_in ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            p.copy_(p.bfloat16().float())
        for b in module.buffers():
            b.copy_((torch.randn(b.shape, generator=gen) * 0.1).to(b.dtype) if b.is_floating_point()
                    else torch.zeros_like(b))
    for sub in module.modules():  # the experts read the eager forward from their config
        if hasattr(sub, "config") and hasattr(sub.config, "_experts_implementation"):
            sub.config = copy.copy(sub.config)
            sub.config._experts_implementation = "eager"
    return module


def _owner_config(model: torch.nn.Module, name: str):
    """The config of the nearest module above ``name`` that has one (its text model's)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        cfg = getattr(model.get_submodule(".".join(parts[:i])), "config", None)
        if cfg is not None:
            return cfg
    return model.config


def _layer_index(name: str) -> int | None:
    m = re.search(r"(?:layers|blocks)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _compare_experts(name: str, module: torch.nn.Module, config, gen: torch.Generator,
                     host) -> tuple[Any, float]:
    layout = experts_layout(module, name)
    spec = layer_spec(module, layout, config, max_tokens=TOKENS, name=name, act_dtype="fp32")
    weights = canonical_weights(module, layout)
    layer = host.load(spec, weights)
    x = torch.randn(TOKENS, spec.hidden_size, generator=gen).bfloat16().float()
    ids = torch.stack([torch.randperm(spec.num_experts, generator=gen)[:spec.top_k] for _ in range(TOKENS)])
    w = torch.rand(TOKENS, spec.top_k, generator=gen) + 0.1
    with torch.no_grad():
        want = module(x, ids, w).reshape(TOKENS, -1).float()
        got = layer(x, w, ids).float()
    return spec, relative_error(got, want)


def _spec_fields(spec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ("num_experts", "top_k", "hidden_size", "intermediate_size",
                                          "activation", "swiglu_limit", "swiglu_alpha", "has_bias")}


def _config_fields(mc, index: int) -> dict[str, Any]:
    c = mc.for_layer(index)
    return {"num_experts": c.num_experts, "top_k": c.top_k, "hidden_size": c.expert_hidden,
            "intermediate_size": c.moe_intermediate_size, "activation": c.activation,
            "swiglu_limit": c.swiglu_limit, "swiglu_alpha": c.swiglu_alpha, "has_bias": c.has_bias}


def _compare_router(parent: torch.nn.Module, router_cfg, top_k: int, hidden: int,
                    gen: torch.Generator) -> str:
    """'matched', or why the router was not compared; raises AssertionError-like text on a
    mismatch by returning it prefixed with 'MISMATCH'."""
    router = next((getattr(parent, a) for a in ("gate", "router") if isinstance(getattr(parent, a, None),
                                                                                torch.nn.Module)), None)
    if router is None or not any(p.dim() == 2 for p in router.parameters()):
        return "not compared: no gate/router module with a weight next to the experts"
    _materialize(router, gen)
    for n, b in list(parent.named_buffers(recurse=False)):  # a bias the block passes to its router
        if b.is_meta:
            parent.register_buffer(n, torch.zeros(b.shape, dtype=torch.float32))
    x = torch.randn(TOKENS, hidden, generator=gen).bfloat16().float()
    tensors = [*router.named_buffers(), *router.named_parameters(), *parent.named_buffers(recurse=False),
               *parent.named_parameters(recurse=False)]
    bias = next((b for n, b in tensors if n.endswith(("e_score_correction_bias", "expert_bias"))), None)
    if bias is not None:
        with torch.no_grad():
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
    import inspect

    extra = (bias,) if len(inspect.signature(router.forward).parameters) == 2 else ()
    try:
        with torch.no_grad():
            out = router(x, *extra)
    except Exception as e:  # a router that needs more than the hidden states
        return f"not compared: {type(router).__name__}(hidden_states) raised {type(e).__name__}: {e}"[:200]
    if not (isinstance(out, tuple) and len(out) == 3 and out[0].dim() == 2 and out[2].shape == out[1].shape):
        return f"not compared: {type(router).__name__} does not return (logits, weights, ids)"
    logits, tw, ti = out
    if not hasattr(router, "routed_scaling_factor"):  # the block scales the experts' sum instead
        tw = tw * (getattr(parent, "routed_scaling_factor", None) or 1.0)
    w, ids = route(logits.float(), router_cfg, top_k,
                   correction_bias=None if bias is None else bias.reshape(-1))
    order_t, order_m = ti.argsort(-1), ids.argsort(-1)
    same_ids = torch.equal(ti.gather(1, order_t), ids.gather(1, order_m))
    err = relative_error(w.gather(1, order_m), tw.float().gather(1, order_t)) if same_ids else float("inf")
    if not same_ids or err > TOLERANCE:
        return (f"MISMATCH: {type(router).__name__} vs moe-core {router_cfg.kind} "
                f"(renormalize={router_cfg.renormalize}, scale={router_cfg.routed_scaling_factor}): "
                + ("different experts" if not same_ids else f"weights differ by {err:.1e}"))
    return f"matched ({router_cfg.kind})"


def check_family(family: str, host=None) -> FamilyResult:
    """One family's verdict (never raises for a family's own problems)."""
    if host is None:
        from .. import default_host
        host = default_host()
    t0 = time.perf_counter()
    r = FamilyResult(family, "error")
    try:
        _check(family, host, r)
    except (UnsupportedExperts, ModelConfigError) as e:
        r.status, r.reason = "refused", str(e).split(": ", 1)[-1] if isinstance(e, ModelConfigError) \
            else str(e)
    except Exception as e:  # a bug here or in transformers: reported, never a silent pass
        import traceback
        tb = traceback.extract_tb(e.__traceback__)[-1]
        r.status, r.reason = "error", f"{type(e).__name__}: {e} ({os.path.basename(tb.filename)}:{tb.lineno})"[:300]
    r.seconds = round(time.perf_counter() - t0, 2)
    return r


def _check(family: str, host, r: FamilyResult) -> None:
    d = _config_dict(family)
    model, r.causal_lm = _build_meta(family, d)
    mc = parse_hf_config(d, name=family)
    found = experts_modules(model)
    if not found:
        raise UnsupportedExperts(family, "experts", "no 3-D gate_up_proj/down_proj experts module "
                                 f"(expected one; {family} keeps its experts another way)")
    gen = torch.Generator().manual_seed(0)
    main = [(n, m) for n, m in found if not _OTHER_TOWERS.search(n)]
    r.moe_layers = sorted({i for n, _ in main if (i := _layer_index(n)) is not None})
    want_layers = [s.index for s in mc.layers]
    problems = []
    if r.moe_layers != want_layers:
        problems.append(f"MoE layers: model {r.moe_layers}, config {want_layers}")
    kinds: dict[tuple, tuple[str, torch.nn.Module]] = {}
    for n, m in found:
        key = (type(m).__name__, tuple(tuple(p.shape) for p in m.parameters()), bool(_OTHER_TOWERS.search(n)))
        kinds.setdefault(key, (n, m))
    errors, routers = [], []
    for n, m in kinds.values():
        spec, err = _compare_experts(n, _materialize(m, gen), _owner_config(model, n), gen, host)
        errors.append(err)
        r.experts_modules.append(f"{n} ({type(m).__name__})")
        if err > TOLERANCE:
            problems.append(f"{n}: relative error {err:.1e} vs {type(m).__name__}")
        i = _layer_index(n)
        if i is None or _OTHER_TOWERS.search(n):
            continue
        from_cfg, from_mod = _config_fields(mc, i), _spec_fields(spec)
        diff = {k: (from_mod[k], from_cfg[k]) for k in from_mod if from_mod[k] != from_cfg[k]}
        if diff:
            problems.append(f"layer {i} spec (module, config) differs: {diff}")
        if mc.router.known:
            parent = dict(model.named_modules())[n.rpartition(".")[0]]
            routers.append(_compare_router(parent, mc.router, spec.top_k, spec.hidden_size, gen))
        else:
            routers.append("not claimed: " + "; ".join(mc.notes))
    r.max_error = max(errors)
    r.router = "; ".join(sorted(set(routers)))
    problems += [x for x in routers if x.startswith("MISMATCH")]
    if problems:
        r.status, r.reason = "mismatch", "; ".join(problems)[:600]
    else:
        r.status = "matched"


def check_all(families: list[str] | None = None, host=None) -> list[FamilyResult]:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [check_family(f, host) for f in (families or roster())]


__all__ = ["FamilyResult", "MoEError", "check_all", "check_family", "roster", "TOLERANCE"]
