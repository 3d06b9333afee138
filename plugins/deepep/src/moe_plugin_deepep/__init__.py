"""DeepEP token dispatch: normal mode (NVLink/RDMA, prefill) and low-latency mode
(NVSHMEM/IBGDA, decode). ``deep_ep`` is imported only when a dispatcher is built."""

from moe_core import DISPATCHER, Variant, Verdict, hookimpl

from .constraints import LOW_LATENCY, NORMAL, reasons

VARIANTS = [
    Variant(NORMAL, 20, "DeepEP normal mode (NVLink / RDMA; prefill)", kind=DISPATCHER),
    Variant(LOW_LATENCY, 20, "DeepEP low-latency mode (NVSHMEM / IBGDA; decode, masked layout)",
            kind=DISPATCHER),
]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_dispatch(spec, dispatch):
    out = []
    for v in VARIANTS:
        why = reasons(v.name, spec, dispatch)
        out.append(Verdict.no(v.name, "; ".join(why)) if why else
                   Verdict.yes(v.name, f"DeepEP {v.name}: {dispatch.dtype} {dispatch.layout}"))
    return out


@hookimpl
def make_dispatcher(plan, group):
    from .dispatcher import DeepEPDispatcher

    return DeepEPDispatcher(plan, group)
