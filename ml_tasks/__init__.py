"""Flywheel's ML steps. Each step is ``python -m ml_tasks.<step>``; see the README.

Importing this package does nothing: no configuration, no logging set-up, no heavy imports.
"""
