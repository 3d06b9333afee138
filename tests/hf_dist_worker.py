"""transformers' own sharding with ``experts_implementation="moe_core"``, checked against the
single-process model on every rank. Used by the CPU gloo test
(tests/test_transformers_distributed.py, spawned) and, under torchrun with NCCL, on the GPU
machine (scripts/gpu_session.sh):

    torchrun --nproc_per_node 2 tests/hf_dist_worker.py --out results.json

Each case loads the same saved checkpoint with a ``DistributedConfig`` and compares the
logits with the single-process model, both with transformers' own experts (grouped_mm) and
with ``"moe_core"``; a decode-sized call (one token) runs too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import gloo

#: name -> (DistributedConfig kwargs): expert tensor parallelism, then expert parallelism with
#: moe-core's token exchange (also with a plan per token range: ``tiers``, given to
#: ``configure``), transformers' all_to_all, and transformers' auto (all-reduce over the
#: shared batch: the experts see another rank's routes as sentinel ids).
CASES = {
    "tp2": dict(tp_size=2),
    "ep2-moe_core": dict(tp_size=2, ep_size=2, ep_implementation="moe_core"),
    "ep2-moe_core-tiers": dict(tp_size=2, ep_size=2, ep_implementation="moe_core", tiers=(1,)),
    "ep2-all_to_all": dict(tp_size=2, ep_size=2, ep_implementation="all_to_all"),
    "ep2-auto": dict(tp_size=2, ep_size=2, ep_implementation="auto"),
}


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def save_tiny_models(root: str, families, device: str = "cpu", **shape) -> dict[str, str]:
    """A random bf16 checkpoint of each family under ``root`` (the single-process oracle and
    every sharded load read the same weights), made on ``device``."""
    from transformers import AutoModelForCausalLM

    from moe_core.integrations.transformers import tiny_config

    quiet_transformers()
    out = {}
    for family in families:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(tiny_config(family, **shape), dtype=torch.bfloat16)
        out[family] = os.path.join(root, family)
        model.save_pretrained(out[family])
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def run(rank: int, world: int, paths: dict[str, str], device: str, tokens: int = 16,
        cases=tuple(CASES)) -> list[dict]:
    """Every (family, case) on this rank; one record each."""
    import moe_core.integrations.transformers as moe_tf
    from moe_core.integrations.hf_experts import experts_modules, state_of
    from moe_core.reference.oracle import relative_error
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    quiet_transformers()
    out = []
    for family, path in paths.items():
        kw = dict(dtype=torch.bfloat16, device_map=device)
        oracle = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
        vocab = oracle.config.vocab_size
        ids = torch.randint(0, vocab, (2, tokens), generator=torch.Generator().manual_seed(1)).to(device)
        one = ids[:1, :1]  # one token: the second rank's slice of it is empty
        want, want_one = _logits(oracle, ids), _logits(oracle, one)
        oracle.set_experts_implementation("moe_core")
        single, single_one = _logits(oracle, ids), _logits(oracle, one)
        del oracle
        for case in cases:
            t0 = time.perf_counter()
            dc = dict(CASES[case])
            tiers = dc.pop("tiers", None)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.bfloat16, experts_implementation="moe_core",
                distributed_config=DistributedConfig(**dc)).eval()
            if tiers:
                moe_tf.configure(model, tiers=tiers)
            got, got_one = _logits(model, ids), _logits(model, one)
            rep = moe_tf.report(model)
            dispatchers = {id(loaded.layer.dispatcher) for _, m in experts_modules(model)
                           for loaded in state_of(m).loaded.values()
                           if hasattr(loaded.layer, "dispatcher")}
            out.append(dict(
                family=family, case=case, rank=rank, world=world, device=str(got.device),
                error=relative_error(got, want), error_vs_single=relative_error(got, single),
                error_one=relative_error(got_one, want_one),
                error_one_vs_single=relative_error(got_one, single_one),
                single_error=relative_error(single, want), seconds=time.perf_counter() - t0,
                dispatchers=len(dispatchers),
                layers=[dict(name=r.name, implementation=r.implementation,
                             sharding=r.sharding.describe(), exchange=r.exchange,
                             backend={g: str(res.plan.backend) if res.plan else None
                                      for g, res in r.resolutions.items()},
                             dispatcher={g: r.dispatcher(g) for g in r.resolutions},
                             loaded=r.loaded)
                        for r in rep.layers]))
            del model
    return out


def refusal(rank: int, path: str) -> dict:
    """``ep_implementation="moe_core"`` with transformers' own experts: the reason, on every
    rank, before any collective."""
    from moe_core.errors import InputError
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16,
        distributed_config=DistributedConfig(**CASES["ep2-moe_core"])).eval()
    try:
        _logits(model, torch.zeros(1, 4, dtype=torch.long))
    except InputError as e:
        return dict(family="refusal", case="ep2-moe_core", rank=rank, error=str(e))
    return dict(family="refusal", case="ep2-moe_core", rank=rank, error="none raised")


def spawn_entry(rank: int, world: int, port: int, paths: dict[str, str], out_dir: str) -> None:
    """``gloo.spawn`` target for the CPU test."""
    torch.set_num_threads(1)  # two ranks on CI's two cores
    gloo.save_records(rank, world, port, out_dir, lambda: run(rank, world, paths, "cpu") + [
        refusal(rank, next(iter(paths.values())))])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--root", default="/tmp/moe_hf_dist")
    ap.add_argument("--families", default="qwen3_moe,deepseek_v3,mixtral,olmoe,gpt_oss")
    # Real layer dims (Qwen3-30B-A3B's experts: hidden 2048, 128 experts top-8, 768 each),
    # few layers, random weights.
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=768)
    # 2 x 512 tokens: 512 per rank after the TP slicing, the prefill plan (DeepEP normal);
    # the one-token call runs the decode plan (DeepEP low-latency)
    ap.add_argument("--tokens", type=int, default=512)
    a = ap.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)
    families = a.families.split(",")
    paths = {f: os.path.join(a.root, f) for f in families}
    if rank == 0:
        save_tiny_models(a.root, families, device, layers=a.layers, experts=a.experts, top_k=a.top_k,
                         hidden=a.hidden, intermediate=a.intermediate)
    dist.barrier()
    flat = gloo.gather(run(rank, world, paths, device, tokens=a.tokens))
    dist.destroy_process_group()
    for r in flat or ():  # rank 0
        print(json.dumps({k: v for k, v in r.items() if k != "layers"}), "\n   ",
              json.dumps(r["layers"][0]))
    if flat and a.out:
        Path(a.out).write_text(json.dumps(flat, indent=1))


if __name__ == "__main__":
    main()
