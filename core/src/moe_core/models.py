"""Model configs: the bundled catalogue of real MoE models, and Hugging Face config.json files.

The catalogue (``data/models.json``) holds numbers read from each model's config.json;
:func:`spec_for_model` turns one into the :class:`MoESpec` of a layer on one rank.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .arch import detect_arch
from .errors import ModelConfigError, UnknownModelError
from .spec import A2A, Activation, MoESpec, Quant


@dataclass(frozen=True)
class RouterConfig:
    kind: str
    n_group: int | None = None
    topk_group: int | None = None
    renormalize: bool = True
    routed_scaling_factor: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    model_type: str
    num_experts: int
    top_k: int
    hidden_size: int
    moe_intermediate_size: int
    activation: Activation
    quant: Quant
    router: RouterConfig
    swiglu_limit: float | None = None
    swiglu_alpha: float | None = None
    num_shared_experts: int = 0
    moe_latent_size: int | None = None
    num_moe_layers: int | None = None
    has_bias: bool = False
    notes: tuple[str, ...] = ()

    @property
    def expert_hidden(self) -> int:
        """The dimension the routed experts see (the latent size where the model has one)."""
        return self.moe_latent_size or self.hidden_size


# Quant names in the catalogue that map onto a spec format, with what we assume.
_QUANT_ALIASES = {"fp8_compressed_tensors": ("fp8_channel", "compressed-tensors FP8 strategy not "
                                             "recorded; assumed per-channel weights")}
# Families whose experts carry biases.
_BIASED = {"gpt_oss"}


def _from_record(r: dict[str, Any]) -> ModelConfig:
    notes = []
    quant = r["quant"]
    if quant in _QUANT_ALIASES:
        quant, note = _QUANT_ALIASES[quant]
        notes.append(note)
    router = r.get("router")
    if router is None:
        router = "softmax_topk"
        notes.append("router not recorded; assumed softmax_topk")
    renorm = r.get("renormalize")
    return ModelConfig(
        name=r["name"], model_type=r["model_type"], num_experts=r["num_experts"], top_k=r["top_k"],
        hidden_size=r["hidden_size"], moe_intermediate_size=r["moe_intermediate_size"],
        activation=Activation(r["activation"]), quant=Quant(quant),
        router=RouterConfig(router, r.get("n_group"), r.get("topk_group"),
                            bool(renorm if renorm is not None else r.get("norm_topk_prob")),
                            r.get("routed_scaling_factor")),
        swiglu_limit=r.get("swiglu_limit"), swiglu_alpha=r.get("swiglu_alpha"),
        num_shared_experts=r.get("num_shared_experts") or 0,
        moe_latent_size=r.get("moe_latent_size"), num_moe_layers=r.get("num_moe_layers"),
        has_bias=r["model_type"] in _BIASED, notes=tuple(notes),
    )


@lru_cache(maxsize=1)
def bundled_models() -> dict[str, ModelConfig]:
    """Name -> :class:`ModelConfig` of every bundled model, in catalogue order."""
    text = resources.files("moe_core").joinpath("data/models.json").read_text()
    return {r["name"]: _from_record(r) for r in json.loads(text)}


def find_model(name: str) -> ModelConfig:
    """A bundled model by exact name, case-insensitively, or by the part after ``org/``."""
    models = bundled_models()
    if name in models:
        return models[name]
    low = name.lower()
    matches = [m for n, m in models.items() if low in (n.lower(), n.lower().split("/", 1)[-1])]
    if len(matches) == 1:
        return matches[0]
    short = {n.split("/", 1)[-1].lower(): n for n in models}
    close = difflib.get_close_matches(low, list(short), n=3, cutoff=0.5)
    close = [short[c] for c in close] or difflib.get_close_matches(name, list(models), n=3)
    raise UnknownModelError(name, close)


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A bundled model name, or a path to a Hugging Face ``config.json`` (or its folder)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ModelConfigError(f"{path}: no such config.json")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{path}: not valid JSON ({e})") from None
        return parse_hf_config(data, name=str(path))
    return find_model(str(name_or_path))


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _hf_quant(qc: dict[str, Any] | None) -> Quant:
    if not qc:
        return Quant.BF16
    method = str(qc.get("quant_method", "")).lower()
    algo = str(qc.get("quant_algo", "")).upper()
    if method == "mxfp4":
        return Quant.MXFP4
    if algo == "NVFP4":
        return Quant.NVFP4
    if method == "modelopt" and algo == "FP8":
        return Quant.FP8_TENSOR
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block == [128, 128]:
            return Quant.FP8_BLOCK128
        if block is None:
            return Quant.FP8_TENSOR
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        strategies = {g.get("weights", {}).get("strategy") for g in groups.values()}
        table = {"channel": Quant.FP8_CHANNEL, "tensor": Quant.FP8_TENSOR, "block": Quant.FP8_BLOCK128}
        if len(strategies) == 1 and (s := strategies.pop()) in table:
            return table[s]
    raise ModelConfigError(
        f"quantization_config {qc!r} is not a format moe-core names "
        f"(expected one of: {', '.join(q.value for q in Quant)})")


def parse_hf_config(config: dict[str, Any], name: str = "config.json") -> ModelConfig:
    """Read the MoE layer of a Hugging Face config (nested ``text_config`` included)."""
    d = {**config, **(config.get("text_config") or {})}
    model_type = str(d.get("model_type") or config.get("model_type") or "unknown")
    experts = _first(d, "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    top_k = _first(d, "num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token")
    hidden = d.get("hidden_size")
    inter = _first(d, "moe_intermediate_size", "intermediate_size")
    missing = [k for k, v in (("num_experts", experts), ("num_experts_per_tok", top_k),
                              ("hidden_size", hidden), ("moe_intermediate_size", inter)) if v is None]
    if missing:
        raise ModelConfigError(f"{name}: not an MoE config (no {', '.join(missing)}; "
                               f"model_type {model_type!r})")
    act_name = str(_first(d, "mlp_hidden_act", "hidden_act", "hidden_activation") or "silu").lower()
    limit = d.get("swiglu_limit")
    if model_type == "gpt_oss":
        activation, alpha = Activation.SWIGLU_LIMIT, 1.702  # fixed in gpt-oss's modelling code
    elif limit is not None:
        activation, alpha = Activation.SWIGLU_LIMIT, None
    elif act_name in ("relu2", "relu_squared"):
        activation, alpha = Activation.RELU2, None
    elif act_name.startswith("gelu"):
        activation, alpha = Activation.GELU_GATED, None
    elif act_name in ("silu", "swish", "swiglu"):
        activation, alpha = Activation.SILU_GATED, None
    else:
        raise ModelConfigError(f"{name}: hidden_act {act_name!r} is not an activation moe-core names "
                               f"(expected one of: {', '.join(a.value for a in Activation)})")
    known = {m.model_type: m.router for m in bundled_models().values()}
    notes = []
    if model_type in known:
        kind = known[model_type].kind
    elif d.get("scoring_func") == "sigmoid":
        kind = "sigmoid_grouped_topk"
    else:
        kind = "softmax_topk"
        notes.append(f"router of model_type {model_type!r} unknown; assumed softmax_topk")
    renorm = _first(d, "norm_topk_prob", "renormalize")
    router = RouterConfig(kind, d.get("n_group"), d.get("topk_group"),
                          bool(renorm) if renorm is not None else kind != "softmax_topk",
                          d.get("routed_scaling_factor"))
    shared = _first(d, "n_shared_experts", "num_shared_experts") or (
        1 if d.get("shared_expert_intermediate_size") else 0)
    return ModelConfig(
        name=name, model_type=model_type, num_experts=int(experts), top_k=int(top_k),
        hidden_size=int(hidden), moe_intermediate_size=int(inter), activation=activation,
        quant=_hf_quant(config.get("quantization_config") or d.get("quantization_config")),
        router=router, swiglu_limit=limit if activation is Activation.SWIGLU_LIMIT else None,
        swiglu_alpha=alpha, num_shared_experts=int(shared), moe_latent_size=d.get("moe_latent_size"),
        num_moe_layers=d.get("num_hidden_layers"), has_bias=model_type in _BIASED, notes=tuple(notes),
    )


def spec_for_model(
    model: str | Path | ModelConfig,
    *,
    tp: int = 1,
    ep: int = 1,
    rank: int = 0,
    quant: str | Quant | None = None,
    a2a: str | A2A = A2A.NONE,
    arch: str = "auto",
    max_tokens: int = 4096,
    experts: int | None = None,
    act_dtype: str = "bf16",
    sbo: bool = False,
    down_gemm_overlap: bool = False,
    static_input_scale: bool = False,
) -> MoESpec:
    """The spec of one routed-expert layer of ``model`` on ``rank``.

    :param quant: None for the model's own format, or another format to re-quantize to.
    :param arch: ``"auto"`` detects the local device (imports torch).
    :param experts: keep only this many experts (a slice, for running big models small).
    """
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    num_experts = cfg.num_experts if experts is None else experts
    return MoESpec(
        num_experts=num_experts, top_k=min(cfg.top_k, num_experts) if experts else cfg.top_k,
        hidden_size=cfg.expert_hidden, intermediate_size=cfg.moe_intermediate_size,
        activation=cfg.activation, quant=cfg.quant if quant is None else quant,
        swiglu_limit=cfg.swiglu_limit, swiglu_alpha=cfg.swiglu_alpha, has_bias=cfg.has_bias,
        act_dtype=act_dtype, tp_size=tp, ep_size=ep, rank=rank, a2a=a2a,
        arch=detect_arch() if arch == "auto" else arch, max_tokens=max_tokens, sbo=sbo,
        down_gemm_overlap=down_gemm_overlap, static_input_scale=static_input_scale, model=cfg.name,
    )
