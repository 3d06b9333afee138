"""The errors moe-core raises. Every message names what is wrong and what was expected."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Resolution


class MoEError(Exception):
    """Base of every moe-core error."""


class SpecError(MoEError, ValueError):
    """A layer spec field has an invalid value.

    ``field`` names the offending field so tools (and tests) can point at it.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownModelError(MoEError, LookupError):
    """A model name that is neither bundled nor a path to a config.json."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(
            f"unknown model {name!r}: not a bundled model name nor a path to a config.json"
            f"{hint} (`moe models` lists the bundled ones)"
        )


class ModelConfigError(MoEError, ValueError):
    """A Hugging Face config.json that does not describe an MoE layer we can read."""


class WeightsError(MoEError, ValueError):
    """A weight tensor of the wrong shape, dtype or device for the spec."""


class InputError(MoEError, ValueError):
    """A runner input (hidden states, top-k ids or weights) that does not fit the plan."""


class GraphError(MoEError):
    """A layer that cannot be captured in a CUDA graph (not declared graph-safe, not on CUDA),
    or a call the captured graphs do not cover."""


class PluginError(MoEError):
    """A plugin broke a hook's contract (wrong return type, raised, missing hook)."""


class WeightsMutated(PluginError):
    """A plugin wrote into the caller's weight tensors; ``names`` lists them."""

    def __init__(self, plugin: str, names: list[str]):
        self.plugin, self.names = plugin, names
        super().__init__(f"process_weights of {plugin!r} modified the caller's {', '.join(names)} "
                         "(it must leave its inputs unchanged)")


class ResolutionError(MoEError):
    """Resolution did not produce a plan. ``resolution`` holds the full trace."""

    def __init__(self, message: str, resolution: "Resolution"):
        self.resolution = resolution
        super().__init__(message)


class NoBackendError(ResolutionError):
    """No candidate supports the spec; the message lists every candidate and its reason."""


class BackendUnavailable(ResolutionError):
    """A forced backend cannot run the spec (never a silent fallback)."""


class SelectorWarning(MoEError, UserWarning):
    """A ``disable`` selector that names nothing installed, but looks like a typo of
    something that is (a plugin name close to an installed one, or a variant its plugin
    lacks). Not an error: one configuration may serve machines with other plugins."""


def did_you_mean(name: str, known) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
