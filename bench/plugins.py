"""Objects that installed packages declare in an entry-point group (heads, metrics)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


def load_group(group: str, add: Callable[[Any], Any]) -> None:
    """Pass every entry point of ``group`` that is not a module to ``add`` (a module registers on
    import); one that fails to load or is refused is skipped with a warning naming it, so one
    broken plugin does not hide the others."""
    import types
    from importlib.metadata import entry_points

    for point in entry_points(group=group):
        try:
            loaded = point.load()
            if not isinstance(loaded, types.ModuleType):
                add(loaded)
        except Exception as e:
            warnings.warn(f"{group} entry point {point.name!r} ({point.value}) is skipped: "
                          f"{type(e).__name__}: {e}", stacklevel=3)
