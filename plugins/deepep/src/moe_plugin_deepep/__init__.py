"""DeepEP token dispatch: normal mode (NVLink/RDMA, prefill) and low-latency mode
(NVSHMEM/IBGDA, decode). ``deep_ep`` is imported only when a dispatcher is built."""

from moe_core import DISPATCHER, Variant, Verdict, hookimpl

from .constraints import LAYOUTS, LOW_LATENCY, MODE, NORMAL, WIRE, buffer_bytes, reasons

_SUMMARY = {NORMAL: "DeepEP normal mode (NVLink / RDMA; prefill)",
            LOW_LATENCY: "DeepEP low-latency mode (NVSHMEM / IBGDA; decode, masked layout)"}
VARIANTS = [Variant(name, 20, _SUMMARY[name], kind=DISPATCHER, modes=(MODE[name],),
                    layouts=LAYOUTS[name], wire=WIRE[name], requires=("deep_ep",))
            for name in (NORMAL, LOW_LATENCY)]


@hookimpl
def moe_variants():
    return VARIANTS


@hookimpl
def supports_dispatch(spec, dispatch):
    out = []
    for v in VARIANTS:
        why = reasons(v.name, spec, dispatch)
        if why:
            out.append(Verdict.no(v.name, why[0][0], "; ".join(d for _, d in why)))
            continue
        nvl, rdma = buffer_bytes(v.name, spec, dispatch)
        out.append(Verdict.yes(v.name, f"DeepEP {v.name}: {dispatch.wire} {dispatch.layout}, "
                                       f"buffers {(nvl + rdma) / 2**30:.2f} GiB per rank"))
    return out


@hookimpl
def make_dispatcher(plan, group):
    from .dispatcher import DeepEPDispatcher

    return DeepEPDispatcher(plan, group)
