"""The torch dispatcher's local work on one GPU: the all-to-alls are replaced by a loopback
copy (rank 0 of 2 talking to itself), so only our bookkeeping is timed. `python3 scripts/gpu_dispatch_loopback.py [table]`."""
import dataclasses, sys, time, torch
import torch.distributed as dist
import moe_core.torch_dispatch.a2a as a2a
from moe_core import Host, MoESpec
from moe_core.arch import detect_arch

a2a.ep_group = lambda group, spec: None
def loop(out, inp, out_splits=None, in_splits=None, group=None):
    out.copy_(inp)
dist.all_to_all_single = loop
host = Host()
mode = sys.argv[1] if len(sys.argv) > 1 else "times"
for tokens, a2a_mode, wire in ((128, "deepep_ll", "bf16"), (128, "deepep_ll", "fp8"), (4096, "deepep_normal", "bf16"), (4096, "deepep_normal", "fp8")):
    spec = MoESpec(num_experts=256, top_k=8, hidden_size=7168, intermediate_size=2048, tp_size=2,
                   ep_size=2, rank=0, a2a=a2a_mode, arch=detect_arch(), max_tokens=tokens)
    plan = host.resolve(spec, force="reference:loop")
    plan = dataclasses.replace(plan, dispatch=dataclasses.replace(plan.dispatch, dtype=wire))
    d = a2a.TorchAllToAll(plan)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, 7168, device="cuda", generator=g).bfloat16()
    # only experts of "this" rank (0..127) so the loopback is consistent
    ids = torch.rand(tokens, 128, device="cuda", generator=g).topk(8, dim=1).indices
    w = torch.full((tokens, 8), 0.125, device="cuda")
    def rt():
        dd = d.dispatch(x, ids, w); return d.combine(dd.x, dd)
    out = rt()
    err = ((out.float() - x.float()).norm() / x.float().norm()).item()
    for _ in range(5): rt()
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        t0 = time.perf_counter(); rt(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1e3)
    print(f"tokens {tokens} {plan.dispatch.layout} {wire}: {sorted(ts)[10]:.3f} ms (loopback), round-trip err {err:.1e}", flush=True)
    if mode == "table" and wire == "bf16":
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(5): rt()
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=38))
        print(p.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=38))
