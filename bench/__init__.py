"""bench: how good is a frozen representation? Registries, feature cache, grid probes, MLflow.

Heavy modules (torch, mlflow) load only when a function below is called, so ``import bench`` and
``bench --help`` stay instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def create_backbone(name: str, **overrides: Any):
    """A backbone preset by name (``bench list backbones``), its defaults overridden."""
    from bench.registry import backbones

    return backbones.create(name, **overrides)


def create_task(name: str, **overrides: Any):
    """A task preset by name (``bench list tasks``); ``folder:PATH`` style names take an argument."""
    from bench.registry import tasks

    return tasks.create(name, **overrides)


def list_backbones(pattern: str = "*") -> list[str]:
    from bench.registry import backbones

    return backbones.names(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    from bench.registry import tasks

    return tasks.names(pattern)
