"""moe-core: decide, at model load, which MoE kernel backend runs each layer, and why.

``import moe_core`` imports neither torch nor any kernel library; the reference backend
and weight tools import torch when first used.
"""

from __future__ import annotations

import threading

from .declare import DISPATCHER, RUNNER, Overlap, Reason, Variant, VariantKind, Verdict
from .dispatch import DispatchConfig
from .environment import Environment, assume_installed
from .errors import (BackendUnavailable, InputError, ModelConfigError, MoEError, NoBackendError,
                     PluginError, ResolutionError, SpecError, UnknownModelError, WeightsError)
from .hookspecs import hookimpl
from .host import Host
from .models import ModelConfig, bundled_models, load_model_config, spec_for_model
from .plan import Backend, Candidate, Plan, Resolution, Status
from .spec import A2A, Activation, MoESpec, Quant, Regime
from .tokens import Layout, Wire
from .weights import MoEWeights

__version__ = "0.1.0"

_default_host: Host | None = None
_default_host_lock = threading.Lock()


def default_host() -> Host:
    """The process-wide host, discovering installed plugins on first use (thread-safe:
    threads racing on the first call all get the one host)."""
    global _default_host
    if _default_host is None:  # checked again under the lock: only the first caller builds
        with _default_host_lock:
            if _default_host is None:
                _default_host = Host()
    return _default_host


def resolve(spec: MoESpec, **kwargs) -> Plan:
    """:meth:`Host.resolve` on the default host."""
    return default_host().resolve(spec, **kwargs)


def explain(spec: MoESpec, **kwargs) -> Resolution:
    """:meth:`Host.explain` on the default host."""
    return default_host().explain(spec, **kwargs)


__all__ = [
    "A2A", "Activation", "Backend", "BackendUnavailable", "Candidate", "DISPATCHER", "DispatchConfig",
    "Environment", "Host", "InputError", "Layout", "ModelConfig", "ModelConfigError", "MoEError",
    "MoESpec", "MoEWeights", "NoBackendError", "Overlap", "Plan", "PluginError", "Quant", "RUNNER",
    "Reason", "Regime", "Resolution", "ResolutionError", "SpecError", "Status", "UnknownModelError",
    "Variant", "VariantKind", "Verdict", "WeightsError", "Wire", "assume_installed",
    "bundled_models", "default_host", "explain", "hookimpl", "load_model_config", "resolve",
    "spec_for_model",
]
