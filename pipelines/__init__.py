"""The pipeline: sources -> bronze -> silver -> gold (Iceberg) -> Feast, tracked in MLflow."""
