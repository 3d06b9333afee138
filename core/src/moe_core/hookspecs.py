"""Hook specifications: the whole contract between the host and a backend plugin.

A plugin is a module (or object) registered under the entry-point group
``moe_core.plugins``; its entry-point name is its plugin name. It implements these hooks
with the :data:`moe_core.hookimpl` marker. A plugin that offers runner variants must
implement :func:`supports_shape` and :func:`make_runner` (the other runner hooks have host
defaults); one that offers dispatcher variants must implement :func:`supports_dispatch`
and :func:`make_dispatcher`. Every plugin implements :func:`moe_variants`.

How the host calls them (and why it does not rely on pluggy's call order):

* ``moe_variants`` once per plugin at discovery, ``supports_shape`` once per plugin per
  spec. The host calls each plugin on its own, so one plugin raising never hides the
  others' answers; a raise marks that plugin's variants *broken* in the trace.
* ``supports_dispatch`` once per dispatcher plugin per (spec, dispatch config), only for
  specs that move tokens between ranks (``spec.a2a != "none"``).
* ``configure_dispatcher``, ``process_weights`` and ``make_runner`` are called **only on
  the plugin that owns the plan** (``plan.plugin``); ``make_dispatcher`` only on the plugin
  that owns the plan's dispatcher (``plan.dispatcher``). They are ``firstresult`` hooks: the
  owner's non-None return is the result; None means "the host default".
* Ranking is explicit (variant priority, then verdict preference, then names), so the
  order in which distributions were installed or registered never matters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pluggy

if TYPE_CHECKING:
    from .declare import Variant, Verdict
    from .dispatch import DispatchConfig
    from .plan import Plan
    from .spec import MoESpec
    from .weights import MoEWeights

PROJECT = "moe_core"
ENTRY_POINT_GROUP = "moe_core.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def moe_variants() -> "Sequence[Variant]":
    """Declare the variants this plugin offers.

    Called once, when the plugin is discovered. Must be cheap and must not import a
    kernel library: ``moe plugins`` lists the answer on machines without one.

    :return: a sequence of :class:`moe_core.Variant`, unique by name. Variants of kind
        ``"runner"`` compute the experts; variants of kind ``"dispatcher"`` move tokens
        between expert-parallel ranks. Both are resolved the same way.

    Not firstresult: each plugin's list is read on its own. A plugin whose answer is not a
    sequence of ``Variant`` with unique names is reported as broken.
    """


@hookspec
def supports_shape(spec: "MoESpec") -> "Sequence[Verdict]":
    """Say, for each of this plugin's runner variants, whether it can run ``spec``.

    :param spec: the layer on this rank (:class:`moe_core.MoESpec`); frozen, hashable.
    :return: one :class:`moe_core.Verdict` per declared runner variant:
        ``Verdict.yes(variant, reason, ...)`` or ``Verdict.no(variant, reason)``. A "no"
        needs a specific human reason ("intermediate per partition 961 is not a multiple
        of 16", "needs SM100, found sm90", "deep_gemm not importable: ..."). A "yes" may
        carry a ``preference`` (tie-break among equal priorities), the padded
        intermediate size the weights will have, the overlap it will run with, and
        options for its own later hooks; all of it lands in the plan.

    Pure and cheap: no GPU work, no kernel-library import (use
    ``importlib.util.find_spec`` to test presence). Results may be cached per spec.
    Honesty: after a "yes", ``configure_dispatcher``, ``process_weights``,
    ``make_runner`` and the runner must not fail on that spec with valid input.

    Not firstresult: every plugin answers. A variant left unanswered, an answer for an
    undeclared variant, or a raise marks the plugin's variants broken for this spec.
    """


@hookspec(firstresult=True)
def configure_dispatcher(plan: "Plan", dispatcher: "DispatchConfig") -> "DispatchConfig | None":
    """State what this plan's runner needs from the token dispatcher.

    :param plan: the plan being built (its ``dispatch`` is the host's default).
    :param dispatcher: the host's proposal (:func:`moe_core.dispatch.default_dispatch`):
        layout from the a2a mode, dtype from the a2a mode and the quant format.
    :return: a :class:`moe_core.DispatchConfig` (typically
        ``dataclasses.replace(dispatcher, dtype="bf16")``) or None to accept the proposal.

    Called only on the plan's owner, once, during resolution; the result is frozen into
    ``plan.dispatch``. A raise makes the candidate broken and resolution moves on to the
    next one. When the spec moves tokens (``a2a != "none"``) and no dispatcher can deliver
    the returned config, the candidate is declined with every dispatcher's reason and
    resolution moves on. firstresult: the owner's non-None return wins.
    """


@hookspec(firstresult=True)
def process_weights(plan: "Plan", weights: "MoEWeights") -> "MoEWeights | None":
    """Turn canonical weights into this backend's layout.

    :param plan: the resolved plan (padded sizes, options, variant).
    :param weights: canonical weights (see :mod:`moe_core.weights`), already checked by
        the host against the spec's shapes, dtypes and device.
    :return: new :class:`moe_core.MoEWeights` in the backend's layout (set its
        ``layout`` tag), or None to use the canonical weights as they are.

    Never mutates the caller's tensors. Padding, interleaving and re-layout never change
    the layer's output. Called only on the plan's owner. firstresult.
    """


@hookspec(firstresult=True)
def make_runner(plan: "Plan", weights: "MoEWeights") -> Any:
    """Build the callable that computes the layer for the plan's token layout.

    :param plan: the resolved plan.
    :param weights: the output of this plugin's ``process_weights`` (or the canonical
        weights when it has none).
    :return: a runner; subclassing :class:`moe_core.runner.GroupedRunner` gives all three
        layouts from one ``run_contiguous``. The host wraps it in a
        :class:`moe_core.MoELayer` that checks inputs against the plan before each call.

    Called only on the plan's owner. firstresult. Must be implemented by every plugin
    that declares runner variants.
    """


@hookspec
def supports_dispatch(spec: "MoESpec", dispatch: "DispatchConfig") -> "Sequence[Verdict]":
    """Say, for each of this plugin's dispatcher variants, whether it can deliver ``dispatch``.

    :param spec: the layer on this rank; ``spec.a2a`` is the requested mode (a DeepEP mode
        may be served by another dispatcher that keeps the same contract).
    :param dispatch: what the chosen runner asked for (after its ``configure_dispatcher``):
        layout, wire dtype and its options, max tokens per rank.
    :return: one :class:`moe_core.Verdict` per declared dispatcher variant, "no" with a
        specific reason ("hidden 3000 is not one of DeepEP low-latency's sizes ...",
        "deep_ep not importable: ..."). Only ``reason`` and ``preference`` are read.

    Pure and cheap, like :func:`supports_shape`: no communication, no kernel import.
    Dispatcher variants are ranked by (priority, preference, plugin, variant); the first
    "yes" becomes ``plan.dispatcher``. Not firstresult: every dispatcher plugin answers;
    a raise or a malformed answer marks its variants broken for this spec.
    """


@hookspec(firstresult=True)
def make_dispatcher(plan: "Plan", group: Any) -> Any:
    """Build the dispatcher that moves this plan's tokens.

    :param plan: the resolved plan; ``plan.dispatcher`` names this plugin's variant and
        ``plan.dispatch`` says what to deliver.
    :param group: the expert-parallel process group (``torch.distributed``); its size is
        ``spec.ep_size`` and this process's rank in it is ``spec.ep_rank``.
    :return: a :class:`moe_core.ep.Dispatcher` (``dispatch`` then ``combine``). The host
        wraps it and the runner in a :class:`moe_core.ep.DispatchedLayer`.

    Called only on the dispatcher's owner. firstresult. May allocate communication buffers
    and must fail here, naming what is wrong, rather than on the first forward.
    """
