"""MLflow tracking for every pipeline step: one run per step, nested under the pipeline's parent run.

Configuration comes from ``mlflow=...`` arguments (``MLflowArgs``) or the standard environment:
MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME and MLFLOW_RUN_ID (the *parent* run, set by the pipeline).
Importing this package does not import mlflow; the modules that talk to a server do, when called.
"""
