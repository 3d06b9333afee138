"""Hook implementations of the ``torch`` dispatcher plugin. Imports no torch."""

from __future__ import annotations

from ..declare import DISPATCHER, Reason, Variant, Verdict
from ..hookspecs import hookimpl
from ..spec import A2A
from ..tokens import Layout, Wire

ALL_TO_ALL = "all_to_all"


@hookimpl
def moe_variants():
    # Every mode that moves tokens: it stands in for DeepEP's modes, keeping their contract.
    return [Variant(ALL_TO_ALL, 10, "torch.distributed all_to_all_single (NCCL / gloo); any layout",
                    kind=DISPATCHER, modes=(A2A.TORCH_A2A, A2A.DEEPEP_NORMAL, A2A.DEEPEP_LL),
                    layouts=tuple(Layout), wire=(Wire.BF16, Wire.FP8, Wire.FP8_UE8M0))]


def _reason(spec) -> tuple[Reason, str] | None:
    if spec.moe_tp_size != 1:
        return (Reason.PARALLEL_UNSUPPORTED,
                f"experts are also split by TP inside EP (moe_tp={spec.moe_tp_size}); this "
                "dispatcher needs ep_size == tp_size")
    if spec.act_dtype != "bf16":
        return Reason.ACT_DTYPE_UNSUPPORTED, f"bf16 activations only (activation dtype {spec.act_dtype})"
    return None


@hookimpl
def supports_dispatch(spec, dispatch):
    why = _reason(spec)
    if why:
        return [Verdict.no(ALL_TO_ALL, *why)]
    return [Verdict.yes(ALL_TO_ALL, f"all_to_all_single, {dispatch.wire} on the wire, "
                                    f"{dispatch.layout} layout to the runner")]


@hookimpl
def make_dispatcher(plan, group):
    from .a2a import TorchAllToAll

    return TorchAllToAll(plan, group)
