"""The model: the classifier network, MLflow tracking and lineage, the tuning settings."""
