"""timm-style registries: named presets of backbones and tasks, discovered from their packages.

A preset is a factory plus default keyword arguments, a one-line description and (for weights) a
licence. Several presets may share one factory (``mae``, ``mae-large``); ``create`` merges the
user's overrides over the preset's defaults. Family modules register themselves on import; the
registry imports every module of its package the first time it is asked anything, so the CLI only
pays for those imports when it lists or creates something.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError, UsageError


class UnknownNameError(BenchError, KeyError):
    """An unknown backbone or task name; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    licence: str = ""
    argument: str | None = None  # keyword that receives ARG in "name:ARG" (e.g. folder:PATH)
    layer_template: str | None = None  # sweep axes -> layer name, e.g. "block{block}@t{t}"


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(
        self,
        name: str,
        *,
        description: str,
        licence: str = "",
        argument: str | None = None,
        layer_template: str | None = None,
        **defaults: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``factory`` under ``name`` with preset ``defaults``; stackable."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, factory, dict(defaults), description, licence, argument,
                           layer_template))
            return factory

        return decorator

    def add(self, entry: Entry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing.factory is not entry.factory:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
            if not module.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(module.name)

    def names(self, pattern: str = "*") -> list[str]:
        self._discover()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entry(self, name: str) -> Entry:
        self._discover()
        base = name.split(":", 1)[0] if ":" in name and name not in self._entries else name
        if base in self._entries:
            return self._entries[base]
        close = difflib.get_close_matches(base, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} `bench list {self.kind}s` shows all of them."
        )

    def create(self, name: str, **overrides: Any) -> Any:
        entry = self.entry(name)
        kwargs = {**entry.defaults, **overrides}
        if entry.name != name:  # "name:ARG"
            if entry.argument is None:
                raise UsageError(f"{self.kind} {entry.name!r} takes no ':ARG' suffix")
            kwargs[entry.argument] = name.split(":", 1)[1]
        obj = entry.factory(**kwargs)
        try:
            obj.name = name
        except AttributeError:
            pass
        return obj


backbones = Registry("backbone", "backbones")
tasks = Registry("task", "tasks")

register_backbone = backbones.register
register_task = tasks.register
