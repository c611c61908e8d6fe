"""What every part relies on: settings, the event log, the lake, the step contract, exit codes.

Importing this package imports nothing, so the Airflow side reads exit codes without the ML stack.
"""
