"""A process that writes tuning entries (tests/test_tuning.py: concurrent writers)."""

from __future__ import annotations


def write_entries(cache_dir: str, body: dict, worker: int, count: int, shared_key: str) -> None:
    from moe_core.tuning import TuningCache

    cache = TuningCache(cache_dir)
    for i in range(count):
        own = {"spec_key": f"worker{worker}", "bucket": i + 1, "spec": "test",
               "candidates": {"p:v": {"ms": float(worker * 100 + i), "layout": "standard"}}}
        # every worker also times its own runner of one shared (layer, bucket)
        shared = {"spec_key": shared_key, "bucket": 1, "spec": "test",
                  "candidates": {f"w{worker}:v": {"ms": float(worker), "layout": "standard"}}}
        cache.record(body, [own, shared])
