"""The conformance kit: checks any backend plugin keeps the hook contract.

Run it with pytest against installed plugins (``moe_core.conformance.pytest_plugin`` is
registered through the ``pytest11`` entry point and does nothing unless asked)::

    pytest --moe-conformance=myplugin          # or a comma list, or "all"

What it checks, per plugin: its declarations load; over random specs (hypothesis) and
small slices of the bundled models, every "no" carries a specific reason and every "yes"
loads, runs in the plan's token layout and matches the reference backend within the
format's tolerance without mutating the caller's weights (:func:`checks.check_run`).
Specs for a GPU this machine does not have are checked on their declarations, and their
runs are reported as skipped with the reason.
"""
