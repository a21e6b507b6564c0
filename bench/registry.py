"""timm-style registries: named presets of backbones and tasks, discovered from their packages.

A preset is a factory plus default keyword arguments, a one-line description and (for weights) a
licence. Several presets may share one factory (``mae``, ``mae-large``); ``create`` merges the
user's overrides over the preset's defaults. Family modules register themselves on import; the
registry imports a module when a preset of it is first created, so the CLI pays for model code
only when it builds a model.

Listing needs no import at all: ``bench/preset_index.py`` records, per module of a registry's
package, the sha256 of its source and the presets it registers (name, description, licence), so
``names`` and ``presets`` (``bench list``) read data, as timm's ``list_models`` does, and import
only the modules whose source no longer matches (they then register for real); ``entry`` and
``create`` import just the module that registers the name. ``python -m bench.registry`` rewrites
the index (a test fails while it is stale).

Beyond the presets of this repository, a name may be:

- ``family:ARG`` for a registered family that takes an argument (``timm:NAME``, ``folder:PATH``);
- ``path/to/file.py:factory`` or ``package.module:factory``: the user's own factory, any callable
  returning a ``bench.Backbone`` (or a ``bench.task.Task``);
- a preset of an installed package, declared as a Python entry point in the group
  ``bench.backbones`` / ``bench.tasks``: a module (importing it registers its presets) or a factory
  (registered under the entry point's name).

``create`` checks every argument against the factory's signature and annotations before calling it,
so the CLI and the Python API report a mistyped argument the same way, naming it.

``Plugins`` is a registry of classes (executors): a decorator, an entry-point group
``bench.<kind>s`` and a base-class check, nothing imported before a name is asked for.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import json
import pkgutil
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.errors import BenchError, UsageError


class UnknownNameError(BenchError, KeyError):
    """An unknown backbone or task name; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


class InvalidArgumentError(UsageError):
    """A backbone or task argument of the wrong name, type or JSON syntax."""


class FactoryError(UsageError):
    """A user factory (``file.py:factory``, ``pkg.mod:factory``) that cannot be loaded or returns
    the wrong kind of object."""


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    licence: str = ""
    argument: str | None = None  # keyword that receives ARG in "name:ARG" (e.g. folder:PATH)
    layer_template: str | None = None  # sweep axes -> layer name, e.g. "block{block}@t{t}"
    module: str = ""  # the module whose import registers it


@dataclass(frozen=True)
class Preset:
    """What ``bench list`` shows of a preset: read from the index, no model code imported."""

    name: str
    description: str
    licence: str = ""
    module: str = ""


class Registry:
    def __init__(self, kind: str, package: str, index: dict[str, Any] | None = None,
                 shipped_index: bool = False):
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._discovered = False
        self._plugins_loaded = False
        # module -> {"sha256", "presets"}; bench/preset_index.py's (shipped_index), else none
        self._index = index if index is not None or shipped_index else {}
        self._listed: dict[str, Preset] | None = None

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

        module = sys._getframe(1).f_globals.get("__name__", "")  # the registering module

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, factory, dict(defaults), description, licence, argument,
                           layer_template, module))
            return factory

        return decorator

    def add(self, entry: Entry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing.factory is not entry.factory:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def load_all(self) -> None:
        """Import every module of the package (and the plugins): every preset registered, and
        whatever else the modules register on import."""
        self._discover()

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
            if not module.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(module.name)
        self._discover_entry_points()

    def modules(self) -> dict[str, Path]:
        """The package's public modules (those ``_discover`` imports) and their files, found
        without importing any of them."""
        spec = importlib.util.find_spec(self.package)
        out = {}
        for root in map(Path, spec.submodule_search_locations if spec else []):
            for path in sorted(root.rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                parts = parts[:-1] if parts[-1] == "__init__" else parts
                if not any(part.startswith("_") for part in parts):
                    out[".".join((self.package, *parts))] = path
        return out

    def presets(self, pattern: str = "*") -> list[Preset]:
        """Name, description and licence of every preset matching ``pattern``, from the index:
        only modules changed since it was written (and plugins) are imported."""
        if self._listed is None:
            if self._index is None:
                from bench.preset_index import INDEX

                self._index = INDEX.get(self.package, {})
            self._listed = {}
            for module, path in self.modules().items():
                known = self._index.get(module)
                if known is not None and known["sha256"] == _sha256(path):
                    self._listed |= {p["name"]: Preset(**p, module=module)
                                     for p in known["presets"]}
                else:
                    importlib.import_module(module)  # changed or new: it registers for real
            self._discover_entry_points()
        listed = self._listed | {e.name: Preset(e.name, e.description, e.licence, e.module)
                                 for e in self._entries.values()}  # what registered wins
        return [listed[n] for n in sorted(listed) if fnmatch.fnmatchcase(n, pattern)]

    def index(self) -> dict[str, Any]:
        """This package's part of ``bench/preset_index.py``, from a full discovery."""
        self._discover()
        modules = self.modules()
        out = {m: {"sha256": _sha256(path), "presets": []} for m, path in modules.items()}
        for entry in sorted(self._entries.values(), key=lambda e: e.name):
            if entry.module != self.package and not entry.module.startswith(f"{self.package}."):
                continue  # a plugin's: listed from its entry point
            if entry.module not in out:
                raise ValueError(f"{self.kind} {entry.name!r} is registered by {entry.module}, "
                                 "a private module: register it in a public one")
            out[entry.module]["presets"].append(
                {"name": entry.name, "description": entry.description, "licence": entry.licence})
        return out

    def _discover_entry_points(self) -> None:
        """Presets of installed packages: entry points in the group ``bench.<kind>s``."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from bench.plugins import load_group

        def add(name: str, factory: Any) -> None:
            if not callable(factory):
                raise FactoryError(f"{self.kind} entry point {name!r} is not a factory")
            doc = (inspect.getdoc(factory) or "").split("\n", 1)[0]
            self.add(Entry(name, factory, description=doc or f"entry point of {name}",
                           licence="unknown: see the package's documentation"))

        load_group(f"bench.{self.kind}s", add, named=True)

    def names(self, pattern: str = "*") -> list[str]:
        return [p.name for p in self.presets(pattern)]

    def entry(self, name: str) -> Entry:
        found = self._registered(name)
        if found is None:  # import only the module the index names, else everything
            listed = {p.name: p for p in self.presets()}
            base = name.split(":", 1)[0] if ":" in name and name not in listed else name
            if base in listed:
                importlib.import_module(listed[base].module)
                found = self._registered(name)
        if found is None:
            self._discover()
            found = self._registered(name)
        if found is not None:
            return found
        base = name.split(":", 1)[0] if ":" in name and name not in self._entries else name
        if is_factory_reference(name):
            return Entry(name, load_factory(name, self.kind), description=f"user factory {name}",
                         licence="unknown: see the model's documentation")
        close = difflib.get_close_matches(base, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} `bench list {self.kind}s` shows all of them."
        )

    def _registered(self, name: str) -> Entry | None:
        base = name.split(":", 1)[0] if ":" in name and name not in self._entries else name
        return self._entries.get(base)

    def create(self, name: str, **overrides: Any) -> Any:
        entry = self.entry(name)
        given = dict(overrides)
        if entry.name != name:  # "name:ARG"
            if entry.argument is None:
                raise UsageError(f"{self.kind} {entry.name!r} takes no ':ARG' suffix")
            given[entry.argument] = name.split(":", 1)[1]
        kwargs = {**entry.defaults, **check_arguments(self.kind, entry, given)}
        self._check_random_preset(entry, given)
        obj = entry.factory(**kwargs)
        self._check_product(entry, obj)
        if self.kind == "task":  # part of its cache identity (bench.task.Task.identity)
            obj.arguments = bound_arguments(entry.factory, kwargs)
        try:
            obj.name = name
        except AttributeError:
            pass
        return obj

    def _check_random_preset(self, entry: Entry, given: dict[str, Any]) -> None:
        """A test preset's seeded random weights would silently ignore a weights file given to it:
        refused, unless ``seed=null`` says the file is meant for this architecture."""
        seed = entry.defaults.get("seed")
        loaded = [k for k in ("weights", "pretrained", "module") if k in given]
        if self.kind == "backbone" and seed is not None and "seed" not in given and loaded:
            raise UsageError(
                f"backbone {entry.name!r} is built with seeded random weights (seed={seed}), so "
                f"{loaded[0]}={given[loaded[0]]!r} would be ignored; add seed=null to load it into "
                f"this architecture, or use a preset that loads weights")

    def _check_product(self, entry: Entry, obj: Any) -> None:
        """A factory must return a Backbone (backbones) or a Task (tasks)."""
        if self.kind == "backbone":
            from bench.backbone import Backbone as expected
        else:
            from bench.task import Task as expected
        if not isinstance(obj, expected):
            raise FactoryError(
                f"{self.kind} factory {entry.name!r} returned {type(obj).__name__}, not a "
                f"{expected.__module__}.{expected.__name__}: make it return one"
            )


# --- the user's own factories ----------------------------------------------------------------------
def is_factory_reference(name: str) -> bool:
    """``file.py:factory`` or ``package.module:factory`` (a dotted, importable module)."""
    base, sep, attr = name.rpartition(":")
    if not sep or not attr.isidentifier():
        return False
    if base.endswith(".py"):
        return True
    if "." not in base or not all(part.isidentifier() for part in base.split(".")):
        return False
    try:
        return importlib.util.find_spec(base) is not None
    except (ImportError, ValueError):  # a parent package that does not exist
        return False


def load_factory(reference: str, kind: str) -> Callable[..., Any]:
    """The callable named by ``file.py:factory`` or ``package.module:factory``."""
    base, _, attr = reference.rpartition(":")
    if base.endswith(".py"):
        path = Path(base).expanduser().resolve()
        if not path.is_file():
            raise FactoryError(f"{kind} {reference!r}: no file {path}")
        module_name = f"bench_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up here
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[module_name]
                raise _import_failed(kind, reference, e) from e
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(base)
        except Exception as e:
            raise _import_failed(kind, reference, e) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FactoryError(f"{kind} {reference!r}: {base} defines no function {attr!r}")
    return factory


# --- argument checking ---------------------------------------------------------------------------
def _import_failed(kind: str, reference: str, error: Exception) -> FactoryError:
    """The plugin's own failure, one line: where in its file, and what (BENCH_DEBUG=1: all)."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith("<frozen")]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    text = str(error).splitlines()[0] if str(error) else ""
    return FactoryError(f"{kind} {reference!r}: its module failed to import{where}: "
                        f"{type(error).__name__}: {text}")


def check_arguments(kind: str, entry: Entry, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``entry.factory``'s signature: names exist, values match the
    annotations (JSON strings parsed where the annotation is not a string, lists made tuples)."""
    parameters, hints, open_ended = accepted_parameters(entry.factory)
    valid = list(parameters)
    out = {}
    for key, value in given.items():
        if key not in parameters and not open_ended:
            raise InvalidArgumentError(
                f"{kind} {entry.name!r} has no argument {key!r}; valid arguments: "
                f"{', '.join(valid) or '(none)'}"
            )
        out[key] = coerce(kind, key, value, hints.get(key, Any))
    return out


def bound_arguments(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every keyword ``factory`` receives from ``kwargs``: defaults applied, ``**`` flattened."""
    signature = inspect.signature(factory)
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def accepted_parameters(
    factory: Callable[..., Any],
) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(keyword parameters, their resolved annotations, whether any name goes) of a factory.

    A factory taking ``**kwargs`` and annotated to return a class is taken to forward them to that
    class (``def diffusion_tiny(flags, seed=0, **kwargs) -> ADMBackbone``), so the class's
    ``__init__`` parameters are accepted and checked too.
    """
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    forwards = _add_parameters(factory, parameters, hints)
    returned = hints.pop("return", None)
    if forwards and isinstance(returned, type) and returned.__init__ is not object.__init__:
        forwards = _add_parameters(returned.__init__, parameters, hints)
        hints.pop("return", None)
    return parameters, hints, forwards


def _add_parameters(
    function: Callable[..., Any], parameters: dict[str, inspect.Parameter], hints: dict[str, Any]
) -> bool:
    """Add ``function``'s keyword parameters and annotations; whether it takes ``**kwargs``."""
    try:
        resolved = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: check names only
        resolved = {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    own = inspect.signature(function).parameters
    for name, parameter in own.items():
        if parameter.kind in keyword and name != "self" and name not in parameters:
            parameters[name] = parameter
            hints[name] = resolved.get(name, Any)
    if "return" in resolved:
        hints["return"] = resolved["return"]
    return any(p.kind is p.VAR_KEYWORD for p in own.values())


def coerce(kind: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` wants it, or InvalidArgumentError naming the argument."""
    if isinstance(value, str) and not accepts(annotation, "") and value.strip()[:1] in "{[":
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(
                f"{kind} argument {key}: {value!r} looks like JSON but does not parse ({e})"
            ) from None
    elif isinstance(value, str) and not accepts(annotation, value):
        try:  # the Python API may pass "90" where the CLI would have parsed 90
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, list) and typing.get_origin(annotation) is tuple:
        value = tuple(value)
    if not accepts(annotation, value):
        raise InvalidArgumentError(
            f"{kind} argument {key} expects {type_name(annotation)}, got {value!r}"
        )
    return value


def accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (outer types only; ints fit floats, bools fit nothing
    but bool)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(a, value) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return value is None
    target = origin or annotation
    if not isinstance(target, type):
        return True  # TypeVars, Callables and the like: not checked
    if target is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target is Path or (isinstance(target, type) and issubclass(target, Path)):
        return isinstance(value, (str, Path))
    try:
        return isinstance(value, target)
    except TypeError:  # subscripted generics of collections.abc
        return True


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_index(path: Path | None = None) -> Path:
    """Rewrite ``bench/preset_index.py`` from a full discovery of both registries."""
    import pprint

    path = path or Path(__file__).with_name("preset_index.py")
    index = {r.package: r.index() for r in (backbones, tasks)}
    path.write_text('"""Generated by `python -m bench.registry`: each registry module\'s source '
                    'sha256 and\nthe presets it registers, so listing imports no model code. '
                    'Do not edit."""\n\nINDEX = ' + pprint.pformat(index, width=100) + "\n")
    return path


# --- plugins: named classes of one base class (executors) -----------------------------------------
T = TypeVar("T")


class Plugins(Generic[T]):
    """Named subclasses of ``base``: registered with ``@plugins.register(name)`` in the ``modules``
    imported on first use, or by an installed package's entry point in the group
    ``bench.<kind>s`` (a class, registered under the entry point's name, or a module whose import
    registers its classes). ``also`` adds more on discovery (e.g. names another library knows).

    Nothing is imported until a name is asked for, so the CLI passes a ``Plugins`` itself as an
    argparse ``choices`` (with a ``metavar``): ``bench --help`` imports no plugin.
    """

    def __init__(self, kind: str, base: type[T], modules: Sequence[str] = (),
                 also: Callable[[Plugins[T]], None] | None = None):
        self.kind, self.base, self.modules, self.also = kind, base, tuple(modules), also
        self._classes: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator adding the class under ``name``."""

        def decorator(cls: type[T]) -> type[T]:
            self.add(name, cls)
            return cls

        return decorator

    def add(self, name: str, cls: Any) -> None:
        """Add ``cls`` under ``name``; it must subclass ``base`` and the name must be free."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise FactoryError(f"{self.kind} {name!r}: {cls!r} is not a subclass of "
                               f"{self.base.__module__}.{self.base.__qualname__}: derive it "
                               "from that")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._classes[name] = cls

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self.modules:
            importlib.import_module(module)
        from bench.plugins import load_group

        load_group(f"bench.{self.kind}s", self.add, named=True)
        if self.also is not None:
            self.also(self)

    def names(self, pattern: str = "*") -> list[str]:
        self._discover()
        return sorted(n for n in self._classes if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; UnknownNameError suggesting close names."""
        self._discover()
        if name in self._classes:
            return self._classes[name]
        close = difflib.get_close_matches(name, list(self._classes), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} {self.kind}s: "
                               f"{', '.join(sorted(self._classes))}")

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


backbones = Registry("backbone", "bench.backbones", shipped_index=True)
tasks = Registry("task", "bench.tasks", shipped_index=True)

register_backbone = backbones.register
register_task = tasks.register


if __name__ == "__main__":  # the registries modules register into are bench.registry's
    from bench.registry import write_index as write

    print(f"wrote {write()}")
