"""Peers of moe-core for the layer benchmark: other projects' kernels, driven by our own
calling code on the same weights and inputs (nothing of those projects is committed)."""


class PeerUnavailable(RuntimeError):
    """Why a peer cannot run here (missing library or file, unsupported shape): the
    benchmark shows it as the row's reason."""
