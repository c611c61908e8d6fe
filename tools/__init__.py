"""Development tooling, never imported by the steps or Airflow and not shipped in the images.

- :mod:`tools.stack`: the local stack (``make stack-up``); :mod:`tools.local_s3`,
  :mod:`tools.label_studio_server`, :mod:`tools.local_servers`: the servers it starts.
- :mod:`tools.demo`: ``make demo``; :mod:`tools.local_airflow`: the Airflow it runs (also the
  tests' and the benchmarks'); :mod:`tools.airflow_cli`: Airflow's CLI for short commands.
- :mod:`tools.images`, :mod:`tools.registry`, :mod:`tools.postgres`: images, a local registry,
  a throwaway PostgreSQL.
"""
