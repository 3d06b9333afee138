"""vLLM's Triton fused-MoE kernel as a peer, driven by our own calling code.

Only the kernel is vLLM's: ``fused_moe_kernel`` (the grouped GEMM over rows sorted by
expert) and the ``@triton.jit`` helpers it calls are taken from the ``fused_moe.py`` that
``scripts/fetch_vllm.sh`` extracts into ``.carry/vllm/`` (parsed with :mod:`ast`, executed
in a fresh namespace holding only ``triton`` and ``tl``; vllm is never imported). Around
it, ours: the token alignment (:func:`moe_core.kernels.align.align_by_expert`), the
activation (:func:`moe_core.activations.apply_activation`), the 1x128 FP8 activation
quantization (:func:`moe_core.kernels.group_quant.quantize_groups`) and the sum over the
top-k. The layer is GEMM1 -> activation -> GEMM2 with the top-k weights applied in its
epilogue -> sum over top-k, as vLLM's ``fused_experts_impl`` runs it.

Tile configs are vLLM's: its tuned H200 JSON for (E, N, dtype) where it ships one, at the
M key nearest the token count (as ``try_get_optimal_moe_config`` picks), else vLLM's
default rule (``get_default_config``), restated in :func:`default_config`.
"""

from __future__ import annotations

import ast
import json
import linecache
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from moe_core.activations import apply_activation
from moe_core.spec import MoESpec, Quant
from moe_core.weights import MoEWeights

from . import PeerUnavailable

#: The grouped-GEMM kernel of vLLM's fused_moe.py.
KERNEL = "fused_moe_kernel"
MOE_DIR = Path("vllm/model_executor/layers/fused_moe")
#: Where scripts/fetch_vllm.sh puts the extracted files.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".carry" / "vllm"
#: fp8 weight blocks (DeepSeek-style [N, K]); activations are quantized in 1 x BLOCK[1] groups.
FP8_BLOCK = (128, 128)
#: vLLM's fp8 dtype name in config file names.
FP8_W8A8 = "fp8_w8a8"
#: vLLM's rule for skipping the alignment (``_prepare_expert_assignment``): one block per
#: (token, expert) pair when tokens x top_k x this <= experts.
NAIVE_SPARSITY = 4


# -- the kernel, from vLLM's file ---------------------------------------------------------
@dataclass(frozen=True)
class VllmSource:
    """The extracted vLLM files (``scripts/fetch_vllm.sh``)."""

    root: Path

    @property
    def kernel_file(self) -> Path:
        return self.root / MOE_DIR / "fused_moe.py"

    @property
    def configs_dir(self) -> Path:
        return self.root / MOE_DIR / "configs"

    @property
    def version(self) -> str:
        stamp = self.root / "VERSION"
        return stamp.read_text().strip() if stamp.is_file() else "unknown"

    @classmethod
    def find(cls, root: Path | str | None = None) -> "VllmSource":
        src = cls(Path(root) if root else DEFAULT_ROOT)
        if not src.kernel_file.is_file():
            raise PeerUnavailable(f"vLLM's fused_moe.py is not at {src.kernel_file}: run "
                                  "scripts/fetch_vllm.sh (and carry .carry/vllm to the GPU machine)")
        return src


def _is_triton_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "jit" and \
        isinstance(target.value, ast.Name) and target.value.id == "triton"


def kernel_functions(source: str, root: str = KERNEL) -> list[ast.FunctionDef]:
    """``root`` and every module-level ``@triton.jit`` function it calls (transitively), in
    file order. A ``ValueError`` names what is missing: ``root``, or its jit decorator."""
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    jitted = {name for name, n in functions.items() if any(map(_is_triton_jit, n.decorator_list))}
    if root not in functions:
        raise ValueError(f"no function {root!r} in the source; expected vLLM's fused_moe.py")
    if root not in jitted:
        raise ValueError(f"{root!r} is not decorated with @triton.jit")
    needed, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += [c.func.id for c in ast.walk(functions[name])
                 if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in jitted]
    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in needed]


def kernel_module_text(source: str, root: str = KERNEL) -> str:
    """A module holding only :func:`kernel_functions`, each at its own line numbers (every
    other line blank), so compiling it under the original file name keeps tracebacks and
    ``inspect.getsource`` (which Triton reads) pointing at vLLM's lines."""
    lines = source.splitlines(keepends=True)
    keep = [""] * len(lines)
    for fn in kernel_functions(source, root):
        start = min([d.lineno for d in fn.decorator_list] + [fn.lineno]) - 1
        keep[start:fn.end_lineno] = lines[start:fn.end_lineno]
    return "".join(line if line else "\n" for line in keep)


@lru_cache(maxsize=4)
def load_kernel(path: Path, root: str = KERNEL):
    """The ``@triton.jit`` function ``root`` of the file at ``path``, with its jit helpers,
    executed in a namespace holding only ``triton`` and ``tl``."""
    try:
        import triton
        import triton.language as tl
    except ImportError as e:
        raise PeerUnavailable(f"triton is not importable ({e})") from None
    source = path.read_text()
    text = kernel_module_text(source, root)
    filename = str(path)
    # Triton reads the kernel's source through inspect/linecache: give it the real file's.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"triton": triton, "tl": tl, "__name__": "vllm_fused_moe_kernels"}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - vLLM's kernel code, pinned by sha256
    return namespace[root]


# -- tile configs, as vLLM picks them -----------------------------------------------------
def device_file_name(device_name: str) -> str:
    """vLLM's device part of a config file name (every H200 variant reads NVIDIA_H200)."""
    name = device_name.replace(" ", "_")
    return "NVIDIA_H200" if "H200" in name.split("_") else name


def config_file_name(E: int, N: int, dtype: str | None, block_shape: tuple[int, int] | None,
                     device: str) -> str:
    """vLLM's ``get_config_file_name``."""
    dtype_part = f",dtype={dtype}" if dtype else ""
    block_part = f",block_shape=[{block_shape[0]},{block_shape[1]}]" if block_shape and all(block_shape) else ""
    return f"E={E},N={N},device_name={device}{dtype_part}{block_part}.json"


def default_config(M: int, E: int, dtype: str | None, block_shape: tuple[int, int] | None) -> dict:
    """vLLM's ``get_default_config`` on CUDA for bf16 and fp8 (block-wise or per tensor)."""
    if dtype == FP8_W8A8 and block_shape is not None:
        if M <= 8 and block_shape[0] % 64 == 0:
            block_n, stages = 64, (4 if M <= 4 else 3)
        else:
            block_n, stages = block_shape[0], 3
        return {"BLOCK_SIZE_M": 16 if M <= 64 else 64, "BLOCK_SIZE_N": block_n,
                "BLOCK_SIZE_K": block_shape[1], "GROUP_SIZE_M": 1 if M <= 16 else 32,
                "SPLIT_K": 1, "num_warps": 4, "num_stages": stages}
    block_m = 16 if M <= 32 else 32 if M <= 96 else 64 if M <= 512 else 128
    return {"BLOCK_SIZE_M": block_m, "BLOCK_SIZE_N": 64 if M <= 64 else 128,
            "BLOCK_SIZE_K": 128 if dtype == FP8_W8A8 or M <= 64 else 64,
            "GROUP_SIZE_M": 16 if M // max(E, 1) > 128 else 1, "SPLIT_K": 1,
            "num_warps": 4 if M <= 128 else 8, "num_stages": 4 if M <= 32 else 3}


@dataclass(frozen=True)
class TileConfig:
    params: tuple[tuple[str, Any], ...]
    #: Where it came from: the tuned file and its M key, or vLLM's default rule.
    source: str

    def get(self) -> dict:
        return dict(self.params)


@lru_cache(maxsize=64)
def _tuned(path: Path) -> dict[int, dict] | None:
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    raw.pop("triton_version", None)
    return {int(k): v for k, v in raw.items()}


def pick_config(configs_dir: Path, *, M: int, E: int, N: int, dtype: str | None,
                block_shape: tuple[int, int] | None, device: str) -> TileConfig:
    """The tuned config of the M key nearest ``M`` (``try_get_optimal_moe_config``), else
    the default rule. ``N`` is the intermediate size per partition (w2's last dim)."""
    name = config_file_name(E, N, dtype, block_shape, device)
    tuned = _tuned(configs_dir / name)
    if tuned:
        key = min(tuned, key=lambda k: abs(k - M))
        return TileConfig(tuple(sorted(tuned[key].items())), f"vLLM tuned {name} at M={key}")
    return TileConfig(tuple(sorted(default_config(M, E, dtype, block_shape).items())),
                      f"vLLM default rule (no {name})")


def swap_ab(config: dict, capability: tuple[int, int] | None) -> bool:
    """vLLM's ``enable_swap_ab`` (fp8 only): SM90 with a short M tile and a wide N tile."""
    return capability == (9, 0) and config["BLOCK_SIZE_M"] < 64 and config["BLOCK_SIZE_N"] >= 64


# -- the layer ----------------------------------------------------------------------------
_COMPUTE_TYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def why_not(spec: MoESpec) -> str | None:
    """Why this driver cannot run ``spec`` (None: it can)."""
    if spec.quant not in (Quant.BF16, Quant.FP8_BLOCK128):
        return f"bf16 and fp8_block128 only (vLLM's w8a8 block path); got {spec.quant.value}"
    if spec.quant is Quant.FP8_BLOCK128:
        I, H = spec.intermediate_per_partition, spec.hidden_size
        if H % FP8_BLOCK[1] or I % FP8_BLOCK[0]:
            return (f"fp8 128x128 blocks need hidden and intermediate sizes divisible by 128 "
                    f"(1x128 activation groups; the up half's scales start a block); got H={H}, I={I}")
    return None


class VllmTritonMoE:
    """One MoE layer on vLLM's kernel: ``layer(x [T, H], topk_weights, topk_ids) -> [T, H]``
    on canonical ``weights`` (w13 ``[E, R, H]`` gate then up, w2 ``[E, H, I]``: the layout
    vLLM's kernel reads as it is)."""

    def __init__(self, spec: MoESpec, weights: MoEWeights, source: VllmSource | None = None,
                 device_name: str | None = None):
        why = why_not(spec)
        if why:
            raise PeerUnavailable(why)
        self.source = source or VllmSource.find()
        self.kernel = load_kernel(self.source.kernel_file)
        import triton.language as tl

        self.tl = tl
        self.spec, self.weights = spec, weights
        self.fp8 = spec.quant is Quant.FP8_BLOCK128
        self.dtype_name = FP8_W8A8 if self.fp8 else None
        self.block_shape = FP8_BLOCK if self.fp8 else None
        on_gpu = weights.w13.is_cuda
        if device_name is None:
            device_name = torch.cuda.get_device_name(weights.w13.device) if on_gpu else "NVIDIA H200"
        self.device = device_file_name(device_name)
        self.capability = torch.cuda.get_device_capability(weights.w13.device) if on_gpu else None
        self._configs: dict[int, TileConfig] = {}

    def config(self, tokens: int) -> TileConfig:
        if tokens not in self._configs:
            s = self.spec
            self._configs[tokens] = pick_config(
                self.source.configs_dir, M=tokens, E=s.local_experts, N=s.intermediate_per_partition,
                dtype=self.dtype_name, block_shape=self.block_shape, device=self.device)
        return self._configs[tokens]

    def naive(self, tokens: int) -> bool:
        """vLLM skips the alignment for very sparse batches: one block per routed slot."""
        return tokens * self.spec.top_k * NAIVE_SPARSITY <= self.spec.local_experts

    def describe(self, tokens: int) -> str:
        path = "one block per slot (vLLM's sparse path)" if self.naive(tokens) else "aligned blocks"
        return f"{self.config(tokens).source}; {path}"

    def _quantize(self, a: torch.Tensor):
        if not self.fp8:
            return a, None
        from moe_core.kernels.group_quant import quantize_groups

        return quantize_groups(a)

    def _gemm(self, a, a_scale, w, w_scale, bias, out, routes, topk_weights, *, top_k: int,
              mul_routed: bool, config: dict, tokens: int) -> None:
        """vLLM's ``invoke_fused_moe_triton_kernel``: ``out [T, k, N] = a @ w[e].T`` per slot."""
        sorted_slots, block_expert, rows_used = routes
        cfg = dict(config)
        cfg["SPLIT_K"] = 1
        block_k = cfg.pop("BLOCK_SIZE_K")
        if self.block_shape is not None:
            block_k = min(block_k, *self.block_shape)
        block_m = cfg["BLOCK_SIZE_M"]
        slots = tokens * self.spec.top_k
        if sorted_slots is None:
            em = slots * block_m
        else:
            em = sorted_slots.numel()
            if a.shape[0] < block_m:  # vLLM: small batches skip blocks no expert can fill
                em = min(em, a.shape[0] * top_k * block_m)
        N, K = w.shape[1], w.shape[2]
        grid = (-(-em // block_m) * -(-N // cfg["BLOCK_SIZE_N"]),)
        two_d = a_scale is not None and a_scale.dim() == 2
        self.kernel[grid](
            a, w, out, bias, a_scale, w_scale, topk_weights, sorted_slots, block_expert, rows_used,
            N, K, em, slots,
            a.stride(0), a.stride(1), w.stride(0), w.stride(2), w.stride(1), out.stride(1), out.stride(2),
            a_scale.stride(0) if two_d else 0, a_scale.stride(1) if two_d else 0,
            w_scale.stride(0) if w_scale is not None else 0,
            w_scale.stride(2) if w_scale is not None and w_scale.dim() == 3 else 0,
            w_scale.stride(1) if w_scale is not None and w_scale.dim() >= 2 and w_scale.shape[1] > 1 else 0,
            bias.stride(0) if bias is not None else 0, bias.stride(1) if bias is not None else 0,
            self.block_shape[0] if self.block_shape else 0, self.block_shape[1] if self.block_shape else 0,
            MUL_ROUTED_WEIGHT=mul_routed, top_k=top_k,
            compute_type=getattr(self.tl, _COMPUTE_TYPES[out.dtype]),
            use_fp8_w8a8=self.fp8, use_int8_w8a8=False, use_int8_w8a16=False, per_channel_quant=False,
            naive_block_assignment=sorted_slots is None, HAS_BIAS=bias is not None,
            BLOCK_SIZE_K=block_k, SWAP_AB=self.fp8 and swap_ab(cfg, self.capability), USE_TD=False,
            **cfg)

    def routes(self, topk_ids: torch.Tensor, block_m: int):
        """``(sorted_slots or None, expert of each block, rows in use)`` for the kernel."""
        T = topk_ids.shape[0]
        if self.naive(T):
            flat = topk_ids.reshape(-1).to(torch.int32) - self.spec.first_expert
            return None, flat, torch.full((1,), flat.numel() * block_m, dtype=torch.int32, device=flat.device)
        from moe_core.kernels.align import align_by_expert

        a = align_by_expert(topk_ids, self.spec.first_expert, self.spec.local_experts, block_m)
        return a.sorted_slots, a.block_expert, a.rows_used

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        s, w = self.spec, self.weights
        T, k = topk_ids.shape
        config = self.config(T).get()
        routes = self.routes(topk_ids, config["BLOCK_SIZE_M"])
        tw = topk_weights.to(torch.float32).contiguous()
        a, a_scale = self._quantize(x.contiguous())
        h = torch.empty(T, k, s.w13_rows, dtype=x.dtype, device=x.device)
        self._gemm(a, a_scale, w.w13, w.w13_scale, w.w13_bias, h, routes, tw, top_k=k,
                   mul_routed=False, config=config, tokens=T)
        act = apply_activation(s, h.view(T * k, s.w13_rows))
        a2, a2_scale = self._quantize(act)
        y = torch.empty(T, k, s.hidden_size, dtype=x.dtype, device=x.device)
        self._gemm(a2, a2_scale, w.w2, w.w2_scale, w.w2_bias, y, routes, tw, top_k=1,
                   mul_routed=True, config=config, tokens=T)
        return y.sum(dim=1)
