"""Tile configurations of the two grouped GEMMs, per (token bucket, N, K, dtype).

A default rule picks tiles from the rows each expert is expected to get; a per-device JSON
shipped with the package (``configs/<device name, spaces as _>.json``, written by
``benchmarks/triton_moe_tune.py``) overrides it where it has the GEMM's shape. Both GEMMs
of a layer read one sorted layout, so the second takes the first's ``block_m``.

Pure Python: no torch, no triton (the runner passes the device's name and shared memory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Token counts the tables are keyed by; a call uses the smallest bucket >= its tokens.
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: The GEMM operand types a table distinguishes (the variant names).
DTYPES = ("bf16", "fp8_block128")
ELEMENT_BYTES = {"bf16": 2, "fp8_block128": 1}
#: Activation and weight scales cover 128 columns of K: an FP8 step must divide it.
FP8_SCALE_GROUP = 128
CONFIG_DIR = Path(__file__).with_name("configs")
#: A folder of tables to use instead of the shipped ones (a tuning run before it is committed).
CONFIG_DIR_ENV = "MOE_TRITON_CONFIGS"


@dataclass(frozen=True, slots=True)
class TileConfig:
    """One GEMM launch: output tile ``block_m x block_n``, ``block_k`` per step, ``group_m``
    row blocks walked together (L2 reuse of weight tiles), and Triton's warps and stages."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"tile config {f.name}={v!r}: expected a positive int")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"tile config {name}={v}: expected a power of two >= 16 (tl.dot tiles)")
        if self.num_warps > 32 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"tile config num_warps={self.num_warps}: expected a power of two <= 32")

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TileConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"tile config {d!r}: expected exactly the keys {sorted(names)}")
        return cls(**d)

    def shared_bytes(self, dtype: str) -> int:
        """Shared memory the software pipeline holds: one A and one B tile per stage."""
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * ELEMENT_BYTES[dtype]


def bucket(tokens: int) -> int:
    """The smallest bucket >= ``tokens`` (the largest past the end)."""
    return next((b for b in BUCKETS if b >= tokens), BUCKETS[-1])


def gemm_key(dtype: str, n: int, k: int) -> str:
    """How a table names one GEMM shape: ``bf16,N=4096,K=7168``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    return f"{dtype},N={n},K={k}"


def default_config(rows_per_expert: float, dtype: str) -> TileConfig:
    """The rule where no table has the shape: small row tiles where each expert gets few
    rows (decode: the weights' bandwidth is the cost), large ones for prefill."""
    fp8 = dtype == "fp8_block128"
    if rows_per_expert <= 16:
        return TileConfig(16, 64, 128, 1, 4, 3 if fp8 else 4)
    if rows_per_expert <= 32:
        return TileConfig(32, 64, 128, 1, 4, 3 if fp8 else 4)
    if rows_per_expert <= 96:
        return TileConfig(64, 128, 128 if fp8 else 64, 8, 4, 3)
    return TileConfig(128, 128, 128 if fp8 else 64, 8, 8, 3)


def fit(config: TileConfig, dtype: str, shared_limit: int | None) -> TileConfig:
    """``config`` with fewer stages (then narrower tiles) until its pipeline fits in
    ``shared_limit`` bytes (None: as it is). A tuned table never needs it on its own GPU.
    FP8 steps never span two 128-wide scale groups: the kernel reads one scale per K step."""
    c = config
    if dtype == "fp8_block128" and FP8_SCALE_GROUP % c.block_k:
        c = dataclasses.replace(c, block_k=FP8_SCALE_GROUP)
    if shared_limit is None:
        return c
    while c.shared_bytes(dtype) > shared_limit:
        if c.num_stages > 2:
            c = dataclasses.replace(c, num_stages=c.num_stages - 1)
        elif c.block_n > 32:
            c = dataclasses.replace(c, block_n=c.block_n // 2)
        elif c.block_k > 32:
            c = dataclasses.replace(c, block_k=c.block_k // 2)
        else:
            break
    return c


def table_name(device_name: str) -> str:
    """``NVIDIA H200`` -> ``NVIDIA_H200.json``."""
    return device_name.strip().replace(" ", "_") + ".json"


@dataclass(frozen=True)
class ConfigTable:
    """Tuned tiles: gemm key -> {bucket: config}; ``source`` says where they came from."""

    gemms: dict[str, dict[int, TileConfig]]
    source: str = "default rule"

    @classmethod
    def parse(cls, data: dict, source: str) -> "ConfigTable":
        """The table in ``data``; ValueError naming ``source`` and the bad entry otherwise."""
        gemms = data.get("gemms") if isinstance(data, dict) else None
        if not isinstance(gemms, dict):
            raise ValueError(f"{source}: expected an object with a 'gemms' mapping")
        out: dict[str, dict[int, TileConfig]] = {}
        for key, per_bucket in gemms.items():
            dtype, _, rest = str(key).partition(",")
            if dtype not in DTYPES or not re.fullmatch(r"N=[1-9][0-9]*,K=[1-9][0-9]*", rest):
                raise ValueError(f"{source}: gemm key {key!r}: expected '<dtype>,N=<int>,K=<int>' "
                                 f"with dtype one of {DTYPES}")
            if not isinstance(per_bucket, dict):
                raise ValueError(f"{source}: {key}: expected a mapping of token bucket -> tile config")
            out[key] = {}
            for b, c in per_bucket.items():
                if not re.fullmatch(r"[1-9][0-9]*", str(b)):
                    raise ValueError(f"{source}: {key}: bucket {b!r}: expected a positive token count")
                try:
                    out[key][int(b)] = TileConfig.from_json(c)
                except ValueError as e:
                    raise ValueError(f"{source}: {key} bucket {b}: {e}") from None
        return cls(out, source)

    @classmethod
    def for_device(cls, device_name: str, folder: Path | None = None) -> "ConfigTable":
        """The table for ``device_name`` from ``$MOE_TRITON_CONFIGS`` or the shipped folder;
        an empty table (the default rule everywhere) when there is none."""
        folder = folder or Path(os.environ.get(CONFIG_DIR_ENV) or CONFIG_DIR)
        path = folder / table_name(device_name)
        if not path.is_file():
            return cls({}, f"default rule (no {path.name} in {folder})")
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:  # ValueError: JSON and Unicode decoding errors
            raise ValueError(f"{path}: unreadable tile table ({e}); expected the JSON that "
                             "benchmarks/triton_moe_tune.py writes") from None
        return cls.parse(data, str(path))

    def lookup(self, tokens: int, dtype: str, n: int, k: int) -> TileConfig | None:
        """The tuned config of the smallest tuned bucket >= ``tokens``; None above the largest
        (decode tiles are wrong for prefill: the default rule serves what was not tuned)."""
        per_bucket = self.gemms.get(gemm_key(dtype, n, k))
        if not per_bucket:
            return None
        return next((per_bucket[b] for b in sorted(per_bucket) if b >= tokens), None)


@dataclass(frozen=True, slots=True)
class LayerConfigs:
    """The tiles of one call: GEMM1 (x @ w13) and GEMM2 (activation @ w2)."""

    gemm1: TileConfig
    gemm2: TileConfig
    #: Where each came from: "tuned" or "default".
    origin: tuple[str, str]


def layer_configs(table: ConfigTable, tokens: int, *, dtype: str, rows_per_expert: float,
                  gemm1: tuple[int, int], gemm2: tuple[int, int],
                  shared_limit: int | None = None) -> LayerConfigs:
    """Tiles for ``tokens`` tokens; ``gemm1``/``gemm2`` are their (N, K). The default rule
    sizes row tiles by ``rows_per_expert`` (``MoESpec.rows_per_local_expert``)."""
    rows = rows_per_expert
    found = [table.lookup(tokens, dtype, *gemm1), table.lookup(tokens, dtype, *gemm2)]
    c1, c2 = (c or default_config(rows, dtype) for c in found)
    c2 = dataclasses.replace(c2, block_m=c1.block_m)  # one sorted layout for both GEMMs
    origin = tuple("tuned" if c else "default" for c in found)
    return LayerConfigs(fit(c1, dtype, shared_limit), fit(c2, dtype, shared_limit), origin)
