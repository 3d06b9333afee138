"""Hook implementations of the ``torch`` dispatcher plugin. Imports no torch."""

from __future__ import annotations

from ..declare import DISPATCHER, Variant, Verdict
from ..hookspecs import hookimpl

ALL_TO_ALL = "all_to_all"
WIRE_DTYPES = ("bf16", "fp8")


@hookimpl
def moe_variants():
    return [Variant(ALL_TO_ALL, 10, "torch.distributed all_to_all_single (NCCL / gloo); any layout",
                    kind=DISPATCHER)]


def _reason(spec, dispatch) -> str | None:
    if spec.moe_tp_size != 1:
        return (f"experts are also split by TP inside EP (moe_tp={spec.moe_tp_size}); this "
                "dispatcher needs ep_size == tp_size")
    if dispatch.dtype not in WIRE_DTYPES:
        return f"moves {'/'.join(WIRE_DTYPES)} tokens; the runner asked for {dispatch.dtype}"
    if spec.act_dtype != "bf16":
        return f"bf16 activations only (activation dtype {spec.act_dtype})"
    return None


@hookimpl
def supports_dispatch(spec, dispatch):
    why = _reason(spec, dispatch)
    if why:
        return [Verdict.no(ALL_TO_ALL, why)]
    return [Verdict.yes(ALL_TO_ALL, f"all_to_all_single, {dispatch.dtype} on the wire, "
                                    f"{dispatch.layout} layout to the runner")]


@hookimpl
def make_dispatcher(plan, group):
    from .a2a import TorchAllToAll

    return TorchAllToAll(plan, group)
