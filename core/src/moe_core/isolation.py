"""Calling plugin code that may hang or raise anything.

A decision hook runs on a daemon worker thread with a time limit: past it, the caller gets
:class:`HookTimeout` and moves on, and the stuck thread is abandoned (Python cannot kill a
thread; being a daemon, it never keeps the process alive). Every exception but
``KeyboardInterrupt`` (``SystemExit`` included) comes back to the caller as :class:`HookFailed`,
carrying the original and where in the plugin it was raised.
"""

from __future__ import annotations

import os
import queue
import threading
import traceback
from typing import Any, Callable

#: Seconds a decision hook may take (``supports_shape``, ``supports_dispatch``,
#: ``configure_dispatcher``, ``moe_variants``, ``probe_environment``); ``0`` disables the limit.
ENV_TIMEOUT = "MOE_HOOK_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
#: ``MOE_DEBUG=1``: keep each failing hook's traceback in the trace (``moe explain``, ``--json``).
ENV_DEBUG = "MOE_DEBUG"


def timeout_from_env() -> float:
    text = os.environ.get(ENV_TIMEOUT, "")
    try:
        value = float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value >= 0:
        from .errors import InputError

        raise InputError(f"${ENV_TIMEOUT}={text!r}: expected a number of seconds >= 0 (0: no limit)")
    return value


def debug_from_env() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no")


class HookFailed(Exception):
    """A plugin's code raised; ``where`` is ``file:line`` of the innermost frame."""

    def __init__(self, error: BaseException):
        self.error = error
        frames = traceback.extract_tb(error.__traceback__)
        self.where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "unknown"
        self.traceback = "".join(traceback.format_exception(error))
        super().__init__(f"{type(error).__name__}: {error}")


class HookTimeout(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="moe-core hook worker").start()

    def _loop(self) -> None:
        while True:
            fn, out = self.jobs.get()
            try:
                out.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                out.put((False, e))


_lock = threading.Lock()
_idle: list[_Worker] = []


def call(fn: Callable[[], Any], timeout: float) -> Any:
    """``fn()`` within ``timeout`` seconds (0: no limit), isolated as described above."""
    # A wait past the platform's clock (inf, 1e10) overflows inside the queue: no limit it is.
    if not timeout or timeout > threading.TIMEOUT_MAX / 2:
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            raise HookFailed(e) from e
    with _lock:
        worker = _idle.pop() if _idle else _Worker()
    out: queue.SimpleQueue = queue.SimpleQueue()
    worker.jobs.put((fn, out))
    try:
        ok, value = out.get(timeout=timeout)
    except queue.Empty:
        raise HookTimeout(timeout) from None  # the worker is stuck: abandon it
    with _lock:
        _idle.append(worker)
    if ok:
        return value
    if isinstance(value, KeyboardInterrupt):
        raise value
    raise HookFailed(value) from value
