"""The conformance kit: checks any backend plugin keeps the hook contract.

Run it with pytest against installed plugins (``moe_core.conformance.pytest_plugin`` is
registered through the ``pytest11`` entry point and does nothing unless asked)::

    pytest --moe-conformance=myplugin          # or a comma list, or "all"

What it checks, per plugin: its declarations load; over seeded random specs (hypothesis)
and small slices of the bundled models, every "no" carries a reason code and a specific
reason and no hook breaks; every runner "yes" loads, runs in the plan's token layout and
matches the reference backend within the format's tolerance without mutating the caller's
weights (:func:`checks.check_run`); every dispatcher "yes" makes a round trip on a
two-process gloo group that matches the single-process reference
(:func:`checks.check_round_trips`). Specs for a GPU this machine does not have are checked
on their declarations, and their runs are reported as skipped with the reason. Every
failure names the spec with its activation dtype and carries a one-line ``reproduce:``
command; ``--moe-conformance-seed`` (default 0, in the report header) fixes every draw, and
``--moe-conformance-debug`` (or ``MOE_DEBUG=1``) shows where a hook raised.
"""
