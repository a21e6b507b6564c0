"""Objects that installed packages declare in an entry-point group (backbones, tasks, heads,
metrics, executors): the one loop that loads them, and ``Instances``, the registry of named
objects (head kinds, metrics) it fills."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from bench.errors import UsageError


def load_group(group: str, add: Callable[..., Any], named: bool = False) -> None:
    """Pass every entry point of ``group`` that is not a module to ``add`` (a module registers on
    import), as ``add(name, obj)`` when ``named`` (registries keyed by the entry point's name);
    one that fails to load or is refused is skipped with a warning naming it, so one broken
    plugin does not hide the others."""
    import types
    from importlib.metadata import entry_points

    for point in entry_points(group=group):
        try:
            loaded = point.load()
            if not isinstance(loaded, types.ModuleType):
                add(point.name, loaded) if named else add(loaded)
        except Exception as e:
            warnings.warn(f"{group} entry point {point.name!r} ({point.value}) is skipped: "
                          f"{type(e).__name__}: {e}", stacklevel=3)


T = TypeVar("T")


class Instances(Generic[T]):
    """Named instances of ``base`` (head kinds, metrics): the built-ins (``builtins``, called on
    first use), then those that installed packages declare in the entry-point group ``group``.
    ``add`` is the one way in: ``prepare`` turns what is given into the instance (and may refuse
    it); an object of another type is a TypeError, a name registered twice with something else a
    ValueError."""

    def __init__(self, kind: str, base: type[T], group: str,
                 builtins: Callable[[], Iterable[Any]] = tuple,
                 prepare: Callable[[Any], Any] = lambda given: given):
        self.kind, self.base, self.group, self.builtins = kind, base, group, builtins
        self.prepare = prepare
        self._entries: dict[str, T] = {}
        self._discovered = False

    def add(self, given: Any) -> T:
        entry = self.prepare(given)
        if not isinstance(entry, self.base):
            raise TypeError(f"a {self.kind} must be a {self.base.__module__}."
                            f"{self.base.__qualname__}, got {type(entry).__name__}")
        name = entry.name  # type: ignore[attr-defined]
        existing = self._entries.get(name)
        if existing is not None and existing != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for entry in self.builtins():
            self.add(entry)
        load_group(self.group, self.add)

    def names(self) -> list[str]:
        """Every name, built-in ones first."""
        self._discover()
        return list(self._entries)

    def values(self) -> list[T]:
        self._discover()
        return list(self._entries.values())

    def get(self, name: str) -> T:
        """The instance registered as ``name``; a UsageError naming the known ones."""
        self._discover()
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} {name!r}; {self.kind}s: "
                             f"{', '.join(self._entries)}")
        return self._entries[name]
