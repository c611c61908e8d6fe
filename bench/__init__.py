"""Benchmarks: each measures a figure named in an issue as a ratio to its baseline, in one run.

Run them all with ``make bench`` (``python -m bench``), or one with ``python -m bench.<name>``.
Each module has ``run() -> list[Row]``; a module that needs the orchestrator environment says
so with ``ENVIRONMENT = "orchestrator"`` and the runner starts it with that interpreter.
"""
