"""The step contract's exit codes, for the steps and for whatever runs them.

It imports nothing, so the Airflow side reads the same codes without the ML stack:
exit 3 means the input was refused (do not retry), 75 that a service did not answer (retry).
"""

EXIT_USAGE = 2  # a bad option or setting: fix the command line or the environment
EXIT_STEP_ERROR = 3  # bad input, a failed check, a missing model: fail, do not retry
# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": retry
EXIT_INFRASTRUCTURE = 75
