"""Developer tools: commands a person or ``make`` runs, never imported by the steps or Airflow."""
