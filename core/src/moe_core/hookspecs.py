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
* ``probe_environment`` once per plugin when a host is created; its facts join the host's
  frozen :class:`moe_core.environment.Environment`.
* Ranking is explicit (variant priority, then verdict preference, then names), so the
  order in which distributions were installed or registered never matters.
* Calls go through pluggy, so other plugins' hook wrappers and pluggy's tracing apply.

What the host derives, so plugins never do: the token layout and wire format of a plan
(from the variants' ``layouts``/``wire`` declarations, the a2a mode's contract in
:data:`moe_core.tokens.MODE_LAYOUTS` and :func:`moe_core.tokens.lossless_wires`), and the
``dependency_missing`` answers (from the variants' ``requires``). The decision hooks
(``supports_shape``, ``supports_dispatch``, ``configure_dispatcher``) are pure functions of
their arguments: they must not read ``os.environ``, the filesystem or the device; what they
need from the machine comes in ``env``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pluggy

if TYPE_CHECKING:
    from .declare import Variant, Verdict
    from .dispatch import DispatchConfig
    from .environment import Environment
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
        ``runner`` compute the experts; variants of kind ``dispatcher`` move tokens
        between expert-parallel ranks. Both are resolved the same way. Each declares the
        layouts and wire formats it takes (or delivers) and the modules it requires.

    Not firstresult: each plugin's list is read on its own. A plugin whose answer is not a
    sequence of ``Variant`` with unique names is reported as broken.
    """


@hookspec
def probe_environment() -> "Mapping[str, str] | None":
    """Facts this plugin reads from the machine, once per host (e.g. build stamps).

    :return: ``{key: value}`` with keys prefixed by the plugin's name
        (``"flashinfer_cutlass.built.bf16": "1"``), or None. They join the host's frozen
        :class:`moe_core.environment.Environment` (``env.fact(key)``), its fingerprint and
        ``moe explain --json``. The only hook that may read the filesystem; no kernel import.

    Not firstresult: each plugin's facts are read on their own. A raise, or anything but
    a mapping of str to str, marks the plugin broken for the host's lifetime.
    """


@hookspec
def supports_shape(spec: "MoESpec", env: "Environment") -> "Sequence[Verdict]":
    """Say, for each of this plugin's runner variants, whether it can run ``spec``.

    :param spec: the layer on this rank (:class:`moe_core.MoESpec`); frozen, hashable.
    :param env: the host's frozen environment (modules, build stamps); take it only if needed.
    :return: one :class:`moe_core.Verdict` per declared runner variant:
        ``Verdict.yes(variant, reason, ...)`` or ``Verdict.no(variant, Reason.CODE, detail)``.
        A "no" needs a code and a specific detail ("intermediate per partition 961 is not
        a multiple of 16", "needs SM100, found sm90"). A "yes" may carry a ``preference``
        (tie-break among equal priorities), the padded intermediate size the weights will
        have, the overlap it will run with, a narrower set of ``layouts`` for this spec,
        and options for its own later hooks; all of it lands in the plan. Missing kernel
        modules are not the plugin's to report: the host declines a "yes" whose variant
        ``requires`` a module that is not importable.

    Pure and cheap: no GPU work, no kernel-library import, no ``os.environ`` or filesystem
    (those come in ``env``). Results are cached per (spec, environment).
    Honesty: after a "yes", ``configure_dispatcher``, ``process_weights``,
    ``make_runner`` and the runner must not fail on that spec with valid input.

    Not firstresult: every plugin answers. A variant left unanswered, an answer for an
    undeclared variant, or a raise marks the plugin's variants broken for this spec.
    """


@hookspec(firstresult=True)
def configure_dispatcher(plan: "Plan", dispatcher: "DispatchConfig") -> "DispatchConfig | None":
    """Adjust, for runner-specific reasons the declarations cannot say, what the host
    derived for this plan's dispatch.

    :param plan: the plan being built.
    :param dispatcher: the host's derivation for one (layout, wire) option: the layout is
        the first of the variant's ``layouts`` that the a2a mode delivers, the wire the
        first of its ``wire`` formats that is lossless for the layer
        (:func:`moe_core.tokens.lossless_wires`).
    :return: a :class:`moe_core.DispatchConfig` or None to accept the derivation. The
        host refuses (the candidate is broken) a return that changes the a2a mode, or
        picks a layout or wire format the variant does not declare or the layer cannot
        travel in losslessly.

    Called only on the plan's owner, during resolution, while tokens move between ranks
    (``a2a != "none"``); the result is frozen into ``plan.dispatch``. The in-repo plugins
    need none: scenarios S3 and S4 follow from their declarations. firstresult.
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
    :return: a runner: an object with the methods of :class:`moe_core.runner.Runner` the
        plan's layout needs (``__call__`` always; ``run_contiguous`` / ``run_masked`` for
        those layouts; ``run_contiguous_quantized`` / ``run_masked_quantized`` when the
        plan delivers the wire tensors, ``plan.dispatch.deliver_quantized``). The host checks it and names a missing method. Subclassing
        :class:`moe_core.runner.GroupedRunner` gives all three layouts from one
        ``run_contiguous``. The host wraps it in a :class:`moe_core.MoELayer` that checks
        inputs against the plan before each call.

    Called only on the plan's owner. firstresult. Must be implemented by every plugin
    that declares runner variants.
    """


@hookspec
def supports_dispatch(spec: "MoESpec", dispatch: "DispatchConfig", env: "Environment") -> "Sequence[Verdict]":
    """Say, for each of this plugin's dispatcher variants, whether it can deliver ``dispatch``.

    :param spec: the layer on this rank; ``spec.a2a`` is the requested mode (a DeepEP mode
        may be served by another dispatcher that keeps the same contract).
    :param dispatch: what the chosen runner takes: layout, wire format, max tokens per rank.
        The host asks only variants whose declared ``modes``, ``layouts`` and ``wire``
        cover it, so a plugin checks the rest (sizes, rank counts, capacities).
    :param env: the host's frozen environment.
    :return: one :class:`moe_core.Verdict` per declared dispatcher variant, "no" with a
        code and a specific detail ("hidden 3000 is not one of DeepEP low-latency's
        sizes ..."). Only ``reason``, ``code`` and ``preference`` are read.

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
    :return: an object with :class:`moe_core.ep.Dispatcher`'s ``dispatch`` and ``combine``
        (checked by the host). The host wraps it and the runner in a
        :class:`moe_core.ep.DispatchedLayer`.

    Called only on the dispatcher's owner. firstresult. May allocate communication buffers
    and must fail here, naming what is wrong, rather than on the first forward.
    """
