"""The service fixtures of the suite (tests/conftest.py), for the smoke checks."""

from tests.conftest import mlflow_server_uri, slurm_cluster  # noqa: F401
