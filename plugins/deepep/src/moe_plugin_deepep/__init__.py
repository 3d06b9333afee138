"""DeepEP token dispatch (skeleton). Declares its dispatcher variants; dispatcher
resolution and the DeepEP calls land with issue #7."""

from moe_core import DISPATCHER, Variant, hookimpl

VARIANTS = [
    Variant("normal", 20, "DeepEP normal mode (NVLink, prefill)", kind=DISPATCHER),
    Variant("low_latency", 20, "DeepEP low-latency mode (NVSHMEM/IBGDA, decode)", kind=DISPATCHER),
]


@hookimpl
def moe_variants():
    return VARIANTS
