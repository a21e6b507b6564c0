"""Registries: named plugins of one kind, found in this package and in installed packages.

``Registry[T]`` is the one implementation (lm-evaluation-harness's and timm's shape): entries of
one type, checked against a base class when added (``classes=True``: subclasses of it, e.g.
executors; else instances, e.g. head kinds and metrics, which carry their own ``name``); a
decorator and ``add``; discovery on first use of the entry-point group ``bench.<kind>s`` (an
entry point names a module, which registers on import, an object, or a tuple of objects: a
package's built-ins); ``names(pattern)``; and an unknown name answered with the close matches.
A ``lazy`` registry lists entry points by name and loads one only when it is asked for.

``Presets`` layers the backbone and task presets on top of it (``backbones``, ``tasks``). A preset
is a factory plus default keyword arguments, a one-line description and (for weights) a licence.
Several presets may share one factory (``mae``, ``mae-large``); ``create`` merges the user's
overrides over the preset's defaults. Family modules register themselves on import; the registry
imports a module when a preset of it is first created, so the CLI pays for model code only when
it builds a model.

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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.errors import UsageError


class UnknownNameError(UsageError, KeyError):
    """An unknown backbone, task, head, metric or executor name; the message suggests close
    matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


class InvalidArgumentError(UsageError):
    """A backbone or task argument of the wrong name, type or JSON syntax."""


class FactoryError(UsageError):
    """A user factory (``file.py:factory``, ``pkg.mod:factory``) that cannot be loaded or returns
    the wrong kind of object."""


class DuplicateNameError(UsageError):
    """Two different things registered under one name (two plugins, two paper files)."""


class RegistrationError(FactoryError, TypeError):
    """Something registered that is not of the registry's type (not a subclass, not an
    instance of its base)."""


T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of type ``T``: instances of ``base``, or with ``classes`` subclasses of it.

    ``key`` names an entry that carries its own name (``lambda kind: kind.name``); without it an
    entry is registered under the name it is given (the entry point's, for installed ones).
    ``prepare`` turns what is given into the entry (and may refuse it with a TypeError or
    ValueError); ``also`` adds more once discovery is done (names another library knows).
    Nothing is imported until a name is asked for, so the CLI passes a registry itself as an
    argparse ``choices`` (with a ``metavar``): ``bench --help`` imports no plugin.
    """

    def __init__(self, kind: str, base: type, *, classes: bool = False,
                 key: Callable[[Any], str] | None = None,
                 prepare: Callable[[Any], Any] | None = None,
                 also: Callable[[Registry[T]], None] | None = None,
                 lazy: bool = False, group: str | None = None):
        self.kind, self.base, self.classes, self.key = kind, base, classes, key
        self.prepare, self.also, self.lazy = prepare, also, lazy
        self.group = group or f"bench.{kind}s"
        self._entries: dict[str, T] = {}
        self._pending: dict[str, Callable[[], Any]] = {}  # lazy entries: name -> loader
        self._discovered = False

    # --- adding ---------------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator adding what it decorates (under ``name``, or the entry's own ``key``)."""

        def decorator(obj: Any) -> Any:
            self.add(obj, name)
            return obj

        return decorator

    def add(self, given: Any, name: str | None = None) -> T:
        """Add ``given`` (prepared, then checked against the base) under ``name`` or its own
        name; the same name registered twice with something else is a DuplicateNameError."""
        entry = self.prepare(given) if self.prepare is not None else given
        self._check(entry, name)
        name = self.key(entry) if self.key is not None else name
        if not name:
            raise ValueError(f"a {self.kind} needs a name to be registered under")
        existing = self._entries.get(name)
        if existing is not None and existing is not entry and existing != entry:
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        self._pending.pop(name, None)
        return entry

    def add_lazy(self, name: str, load: Callable[[], Any]) -> None:
        """List ``name`` now; ``load()`` gives what to ``add`` when it is first asked for (a
        name listed already is a DuplicateNameError: neither silently supersedes the other)."""
        if name in self._entries or name in self._pending:
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice")
        self._pending[name] = load

    def _check(self, entry: Any, name: str | None) -> None:
        base = f"{self.base.__module__}.{self.base.__qualname__}"
        if self.classes and not (isinstance(entry, type) and issubclass(entry, self.base)):
            raise RegistrationError(f"{self.kind} {name!r}: {entry!r} is not a subclass of "
                                    f"{base}: derive it from that")
        if not self.classes and not isinstance(entry, self.base):
            raise RegistrationError(f"a {self.kind} must be a {base}, got "
                                    f"{type(entry).__name__}")

    # --- discovery ------------------------------------------------------------------------------
    def discover(self) -> None:
        """Register the built-ins (``_load_builtins``), then installed packages' entry points,
        then ``also``'s: once."""
        if self._discovered:
            return
        self._discovered = True
        self._load_builtins()
        self._load_entry_points()
        if self.also is not None:
            self.also(self)

    def _load_builtins(self) -> None:
        """What the registry finds besides entry points (``Presets``: its package's modules)."""

    def _load_entry_points(self) -> None:
        """Every entry point of ``group``, this project's first: a module registers on import;
        an object (or a tuple of them) is added. One that fails to load or is refused is
        skipped with a warning naming it, so one broken plugin does not hide the others; in a
        lazy registry an entry point is only listed, and loaded (errors raised) when asked for."""
        from importlib.metadata import entry_points

        points = sorted(entry_points(group=self.group),
                        key=lambda point: not point.value.startswith("bench."))
        for point in points:
            if self.lazy:
                self.add_lazy(point.name, point.load)
                continue
            try:
                self._add_loaded(point.name, point.load())
            except Exception as e:
                warnings.warn(f"{self.group} entry point {point.name!r} ({point.value}) is "
                              f"skipped: {type(e).__name__}: {e}", stacklevel=3)

    def _add_loaded(self, name: str, loaded: Any) -> None:
        """What an entry point ``name`` loaded: a module has registered itself on import."""
        if isinstance(loaded, types.ModuleType):
            return
        if isinstance(loaded, tuple) and self.key is not None:
            for item in loaded:
                self.add(item)
        else:
            self.add(loaded, name)

    # --- looking up -----------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        """Every name matching the glob ``pattern``, in the order registered (built-ins first)."""
        self.discover()
        return [n for n in (*self._entries, *self._pending) if fnmatch.fnmatchcase(n, pattern)]

    def values(self) -> list[T]:
        self.discover()
        for name in list(self._pending):
            self.get(name)
        return list(self._entries.values())

    def get(self, name: str) -> T:
        """The entry registered as ``name``; UnknownNameError suggesting close names."""
        self.discover()
        if name in self._pending:  # listed until it loads (a failure stays listed, raised again)
            self._add_loaded(name, self._pending[name]())
        if name in self._entries:
            return self._entries[name]
        raise self.unknown(name)

    def unknown(self, name: str, near: str | None = None) -> UnknownNameError:
        """The error for an unknown ``name``: the names close to it (or to ``near``), then where
        to see them all (``listing``)."""
        close = difflib.get_close_matches(near or name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return UnknownNameError(f"unknown {self.kind} {name!r}.{hint} {self.listing()}")

    def listing(self) -> str:
        """Where a user sees every name (the end of an unknown name's message)."""
        return f"{self.kind}s: {', '.join(self.names()) or '(none)'}"

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# --- presets: backbones and tasks -------------------------------------------------------------------
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
    released: Any = None  # the bench.features.weights.Weights its defaults load (None: none)


@dataclass(frozen=True)
class Preset:
    """What ``bench list`` shows of a preset: read from the index, no model code imported."""

    name: str
    description: str
    licence: str = ""
    module: str = ""


class Presets(Registry[Entry]):
    """The presets of one kind (backbone, task): the modules of ``package`` register them on
    import, the index lists them without importing, installed packages add theirs by entry
    point (a module, or a factory registered under the entry point's name)."""

    def __init__(self, kind: str, package: str, index: dict[str, Any] | None = None,
                 shipped_index: bool = False):
        super().__init__(kind, Entry, key=lambda entry: entry.name)
        self.package = package
        # module -> {"sha256", "presets"}; bench/preset_index.py's (shipped_index), else none
        self._index = index if index is not None or shipped_index else {}
        self._listed: dict[str, Preset] | None = None
        self._entry_points_loaded = False  # listing loads them without a full discovery

    def register(  # type: ignore[override]  # a preset's settings besides its name
        self,
        name: str,
        *,
        description: str,
        licence: str = "",
        argument: str | None = None,
        layer_template: str | None = None,
        released: Any = None,
        **defaults: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``factory`` under ``name`` with preset ``defaults``; stackable.
        ``released``: the ``bench.features.weights.Weights`` the defaults load (its licence is
        the preset's unless ``licence`` is given)."""

        module = sys._getframe(1).f_globals.get("__name__", "")  # the registering module
        licence = licence or (released.licence if released is not None else "")

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, factory, dict(defaults), description, licence, argument,
                           layer_template, module, released))
            return factory

        return decorator

    def _load_entry_points(self) -> None:
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            super()._load_entry_points()

    def _add_loaded(self, name: str, loaded: Any) -> None:
        """An entry point's factory becomes a preset named like the entry point."""
        if isinstance(loaded, types.ModuleType):
            return
        if not callable(loaded):
            raise FactoryError(f"{self.kind} entry point {name!r} is not a factory")
        doc = (inspect.getdoc(loaded) or "").split("\n", 1)[0]
        self.add(Entry(name, loaded, description=doc or f"entry point of {name}",
                       licence="unknown: see the package's documentation"))

    def load_all(self) -> None:
        """Import every module of the package (and the plugins): every preset registered, and
        whatever else the modules register on import."""
        self.discover()

    def _load_builtins(self) -> None:
        package = importlib.import_module(self.package)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
            if not module.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(module.name)

    def modules(self) -> dict[str, Path]:
        """The package's public modules (those ``_load_builtins`` imports) and their files, found
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
            self._load_entry_points()
        listed = self._listed | {e.name: Preset(e.name, e.description, e.licence, e.module)
                                 for e in self._entries.values()}  # what registered wins
        return [listed[n] for n in sorted(listed) if fnmatch.fnmatchcase(n, pattern)]

    def index(self) -> dict[str, Any]:
        """This package's part of ``bench/preset_index.py``, from a full discovery."""
        self.discover()
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

    def names(self, pattern: str = "*") -> list[str]:
        """Every preset name matching ``pattern``, sorted, from the index."""
        return [p.name for p in self.presets(pattern)]

    def get(self, name: str) -> Entry:
        """The preset ``name`` (``family:ARG`` gives the family's entry; a user's factory
        reference a new one), importing only the module the index names, else everything."""
        found = self._registered(name)
        if found is None:
            listed = {p.name: p for p in self.presets()}
            base = _family(name, listed)
            if base in listed:
                importlib.import_module(listed[base].module)
                found = self._registered(name)
        if found is None:
            self.discover()
            found = self._registered(name)
        if found is not None:
            return found
        if is_factory_reference(name):
            return Entry(name, load_factory(name, self.kind), description=f"user factory {name}",
                         licence="unknown: see the model's documentation")
        raise self.unknown(name, near=_family(name, self._entries))

    entry = get  # the name the engine calls it by

    def listing(self) -> str:
        return f"`bench list {self.kind}s` shows all of them."

    def _registered(self, name: str) -> Entry | None:
        return self._entries.get(_family(name, self._entries))

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


def _family(name: str, known: Any) -> str:
    """The registered name ``name`` refers to: itself, or for ``family:ARG`` the family."""
    return name.split(":", 1)[0] if ":" in name and name not in known else name


def write_index(path: Path | None = None) -> Path:
    """Rewrite ``bench/preset_index.py`` from a full discovery of both registries."""
    import pprint

    path = path or Path(__file__).with_name("preset_index.py")
    index = {r.package: r.index() for r in (backbones, tasks)}
    path.write_text('"""Generated by `python -m bench.registry`: each registry module\'s source '
                    'sha256 and\nthe presets it registers, so listing imports no model code. '
                    'Do not edit."""\n\nINDEX = ' + pprint.pformat(index, width=100) + "\n")
    return path


backbones = Presets("backbone", "bench.backbones", shipped_index=True)
tasks = Presets("task", "bench.tasks", shipped_index=True)

register_backbone = backbones.register
register_task = tasks.register


if __name__ == "__main__":  # the registries modules register into are bench.registry's
    from bench.registry import write_index as write

    print(f"wrote {write()}")
