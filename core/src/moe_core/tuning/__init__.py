"""Measured resolution: ``moe tune`` times the runners that said yes for a layer over token
buckets and records the medians in a tuning cache, one file per environment; the host
orders the runners that would run by those times (force and disable still win; nothing
measured makes a "no" run). See docs/design.md, "Measured resolution"."""

from .cache import (ENV_CACHE, ENV_OBJECTIVE, ENV_TUNING, Objective, ObjectiveKind, TuningCache, TuningError,
                     cache_dir, environment_body, fingerprint, spec_key)
from .tune import LayerResult, Measured, TuneReport, parse_buckets, plot, token_buckets, tune

__all__ = ["ENV_CACHE", "ENV_OBJECTIVE", "ENV_TUNING", "LayerResult", "Measured", "Objective", "ObjectiveKind",
           "TuneReport", "TuningCache", "TuningError", "cache_dir",
           "environment_body", "fingerprint", "parse_buckets", "plot", "spec_key", "token_buckets",
           "tune"]
