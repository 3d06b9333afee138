"""``moe_core.default_host()`` builds one host even when threads race on the first call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import moe_core


def test_eight_threads_on_first_use_get_one_host(monkeypatch):
    built = []

    def slow_host():
        time.sleep(0.05)  # plugin discovery takes time: the window in which threads race
        built.append(object())
        return built[-1]

    monkeypatch.setattr(moe_core, "_default_host", None)
    monkeypatch.setattr(moe_core, "Host", slow_host)
    start = threading.Barrier(8)

    def first_use(_):
        start.wait()
        return moe_core.default_host()

    with ThreadPoolExecutor(8) as pool:
        hosts = list(pool.map(first_use, range(8)))
    assert len(built) == 1, f"{len(built)} hosts were built for 8 threads"
    assert all(h is built[0] for h in hosts)
    assert moe_core.default_host() is built[0]
