"""Model configs: the bundled catalogue of real MoE models, and Hugging Face config.json files.

The catalogue (``data/models.json``) holds numbers read from each model's config.json;
:func:`spec_for_model` turns one into the :class:`MoESpec` of a layer on one rank.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .arch import detect_arch
from .errors import InputError, ModelConfigError, UnknownModelError
from .spec import A2A, Activation, MoESpec, Quant


@dataclass(frozen=True)
class RouterConfig:
    kind: str
    n_group: int | None = None
    topk_group: int | None = None
    renormalize: bool = True
    routed_scaling_factor: float | None = None
    #: False when the config does not say and the kind is a stand-in (``moe run`` still
    #: routes its random tokens with it; nothing is checked against it).
    known: bool = True


@dataclass(frozen=True)
class LayerShape:
    """The routed experts of one decoder layer, where a config gives them per layer."""

    index: int
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    num_shared_experts: int = 0


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
    #: Every MoE decoder layer (from a config.json; empty for catalogue records). The
    #: fields above are the first one's.
    layers: tuple[LayerShape, ...] = ()

    @property
    def expert_hidden(self) -> int:
        """The dimension the routed experts see (the latent size where the model has one)."""
        return self.moe_latent_size or self.hidden_size

    def for_layer(self, index: int) -> "ModelConfig":
        """This config with decoder layer ``index``'s experts, top-k and sizes."""
        for shape in self.layers:
            if shape.index == index:
                return replace(self, num_experts=shape.num_experts, top_k=shape.top_k,
                               moe_intermediate_size=shape.moe_intermediate_size,
                               num_shared_experts=shape.num_shared_experts)
        moe = [s.index for s in self.layers]
        raise ModelConfigError(f"{self.name}: layer {index} has no routed experts "
                               f"(MoE layers: {id_ranges(moe) or 'not recorded'})")


def id_ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    for i in ids:
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = out[-1].split("-")[0] + f"-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


# Quant names in the catalogue that map onto a spec format, with what we assume.
_QUANT_ALIASES = {"fp8_compressed_tensors": ("fp8_channel", "compressed-tensors FP8 strategy not "
                                             "recorded; assumed per-channel weights")}
#: Families whose experts carry biases (their configs do not say so).
BIASED = frozenset({"gpt_oss", "openai_privacy_filter"})


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
        has_bias=r["model_type"] in BIASED, notes=tuple(notes),
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
        return parse_hf_config(read_json(path), name=str(path))
    return find_model(str(name_or_path))


def read_json(path: Path) -> Any:
    """A config file's JSON, or a :class:`ModelConfigError` saying why it is not JSON."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                               "expected a UTF-8 JSON file") from None
    except OSError as e:
        raise ModelConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON ({e}); expected a JSON object") from None
    except RecursionError:
        raise ModelConfigError(f"{path}: JSON nested too deeply; expected a config.json object "
                               "(a few levels deep)") from None


def parse_hf_config(config: Any, name: str = "config.json") -> ModelConfig:
    """The MoE layers of a Hugging Face config; see :mod:`moe_core.hf_config`."""
    from .hf_config import parse_hf_config as parse

    return parse(config, name)


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
    layer: int | None = None,
) -> MoESpec:
    """The spec of one routed-expert layer of ``model`` on ``rank``.

    :param quant: None for the model's own format, or another format to re-quantize to.
    :param arch: ``"auto"`` detects the local device (imports torch).
    :param experts: keep only this many experts (a slice, for running big models small).
    :param layer: the decoder layer, where a config gives sizes per layer (default: the first
        MoE layer).
    """
    if not isinstance(model, (str, Path, ModelConfig)):
        raise InputError(f"model is {type(model).__name__}; expected a model name, a path to a "
                         "config.json (or its folder), or a ModelConfig")
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    if layer is not None:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InputError(f"layer={layer!r}: expected an int (a decoder layer index)")
        cfg = cfg.for_layer(layer)
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
