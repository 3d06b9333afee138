"""Temporary: which backend faults on qwen3-30b-a3b bf16 at 2048 tokens (eager, then graphed)."""
import subprocess, sys
if len(sys.argv) == 1:
    for b in ("deepgemm:contiguous", "triton:bf16", "flashinfer_cutlass:bf16", "reference:grouped_mm"):
        for mode in ("eager", "graph"):
            r = subprocess.run([sys.executable, __file__, b, mode], capture_output=True, text=True, timeout=150)
            print(b, mode, "rc", r.returncode, (r.stdout + r.stderr).strip().splitlines()[-1:] , flush=True)
    sys.exit(0)
import torch, moe_core
from moe_core.synthetic import random_weights, random_inputs
b, mode = sys.argv[1:]
spec = moe_core.spec_for_model("Qwen/Qwen3-30B-A3B", arch="auto", max_tokens=2048)
host = moe_core.default_host()
layer = host.load(host.resolve(spec, force=b), random_weights(spec, device="cuda"))
x, tw, ti = random_inputs(spec, 2048, device="cuda")
ref = None
out = layer(x, tw, ti); torch.cuda.synchronize()
if mode == "graph":
    g = layer.graphed([2048]); o2 = g(x, tw, ti); torch.cuda.synchronize()
    print("max diff graph vs eager", float((o2.float() - out.float()).abs().max()))
else:
    print("ok", float(out.float().norm()))
