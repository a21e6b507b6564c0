"""The layering README's "Architecture" section states, checked on every import in the source
(module level and inside functions): a change that breaks a boundary fails here, naming it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

BELOW = {  # what each layer may import besides itself, lowest first
    "core": set(), "features": {"core"}, "heads": {"core"}, "results": {"core"},
    "run": {"core", "features", "heads", "results"},
    "api": {"core", "features", "heads", "results", "run"},
    "cli": {"core", "features", "heads", "results", "run", "api"},
    "plugins": {"core", "features", "results"},  # backbones/, tasks/ (published numbers: results)
}
SUBPACKAGES = {"features", "heads", "results", "run", "cli"}  # bench/<layer>/: one folder a layer


PLUGIN_FOLDERS = ("backbones", "tasks")  # installed as bench.backbones, bench.tasks (pyproject)


def _modules(folder: str) -> dict[str, Path]:
    """Module name -> file; the plugin folders under their installed names (``bench.tasks.cub``)."""
    prefix = "bench." if folder in PLUGIN_FOLDERS else ""
    return {prefix + ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((REPO / folder).rglob("*.py"))}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file that runs (``if TYPE_CHECKING:``
    blocks, for annotations only, are left out)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if _is_module(f"{node.module}.{a.name}")]
    return out


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module of this repository (``from bench.run import jobs``)."""
    parts = name.split(".")
    if parts[:2] in (["bench", f] for f in PLUGIN_FOLDERS):
        parts = parts[1:]
    return (REPO.joinpath(*parts).with_suffix(".py")).exists()


def _layer(module: str) -> str | None:
    """The layer of a bench module name, from the package layout: its subpackage
    (``bench.run.jobs`` -> run, ``bench.cli`` -> cli), ``bench.api`` -> api, and a module at the
    top of ``bench/`` (or ``bench`` itself) -> core; None outside bench."""
    parts = module.split(".")
    if parts[0] != "bench":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in PLUGIN_FOLDERS:
        return "plugins"
    if parts[1] == "api":
        return "api"
    if parts[1] in SUBPACKAGES:
        return parts[1]
    assert (REPO / "bench" / f"{parts[1]}.py").exists(), f"bench.{parts[1]} is not a bench module"
    return "core"


def test_the_layout_has_one_folder_per_layer():
    """Every folder under bench/ is a layer (a new one is added to SUBPACKAGES and BELOW here
    and to README's "Architecture" section), and each layer's package only documents it."""
    folders = {p.parent.name for p in (REPO / "bench").glob("*/__init__.py")}
    assert folders == SUBPACKAGES
    for layer in SUBPACKAGES - {"cli"}:
        tree = ast.parse((REPO / "bench" / layer / "__init__.py").read_text())
        assert ast.get_docstring(tree) and len(tree.body) == 1, f"bench/{layer}/__init__.py"


def test_every_import_respects_the_layers():
    broken = []
    sources = {**_modules("bench"), **_modules("backbones"), **_modules("tasks")}
    for module, path in sources.items():
        layer = _layer(module)
        for line, imported in _imports(path):
            target = _layer(imported)
            if target is not None and target != layer and target not in BELOW[layer]:
                broken.append(f"{path.relative_to(REPO)}:{line} ({layer}) imports {imported} "
                              f"({target})")
    assert not broken, "\n".join(broken)


def test_only_the_cli_parses_arguments():
    users = [module for module, path in _modules("bench").items()
             if not module.startswith("bench.cli")
             and any(name == "argparse" for _, name in _imports(path))]
    assert users == []


def test_only_paths_reads_the_environment():
    """Environment variables are read in bench.paths alone (writing one for a library is fine)."""
    readers = []
    for folder in ("bench", "backbones", "tasks"):
        for module, path in _modules(folder).items():
            if module == "bench.paths":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                read = call and (node.func.attr == "getenv" or (
                    node.func.attr == "get" and ast.unparse(node.func.value) == "os.environ"))
                read |= (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                         and ast.unparse(node.value) == "os.environ")
                if read:
                    readers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert readers == []


def test_error_messages_are_one_line():
    """A BenchError prints as one line (`bench: error: ...`): no raise builds a message of
    several lines."""
    multi = []
    for folder in ("bench", "backbones", "tasks"):
        for path in _modules(folder).values():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and node.exc is not None and any(
                        isinstance(c, ast.Constant) and isinstance(c.value, str) and "\n" in c.value
                        for c in ast.walk(node.exc)):
                    multi.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert multi == []


# --- no import circle ---------------------------------------------------------------------------
_LAZY = re.compile(r"(?:bench|[A-Za-z_]\w*)(?:\.\w+)+:[A-Za-z_]\w*")  # "pkg.module:Name"


def _references(path: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, bench module) of everything this file makes Python load: imports at module level,
    inside functions and for annotations alone (a circle through annotations is still one),
    ``importlib.import_module("...")`` of a literal, ``"pkg.module:Name"`` strings (lazy
    references, as a head kind names its trainer) and a dotted module name given to a call (a
    registry told which modules to import). ``from pkg import sub`` refers to the submodule,
    not to the package."""

    def owner(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module")
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _LAZY.fullmatch(
                node.value):
            names = [node.value.split(":")[0]]
        elif isinstance(node, ast.Call):
            names = [c.value for arg in [*node.args, *(k.value for k in node.keywords)]
                     for c in ast.walk(arg) if isinstance(c, ast.Constant)
                     and c.value in modules and "." in c.value]
        out += [(node.lineno, found) for found in map(owner, names) if found]
    return out


def test_no_import_circle_among_bench_modules():
    """No bench module reaches itself through what it loads (any of ``_references``): the
    registries find their plugins by discovery (a package walk, the generated preset index,
    entry points), never by naming a module above them."""
    sources = {**_modules("bench"), **_modules("backbones"), **_modules("tasks")}
    modules = set(sources)
    graph: dict[str, dict[str, str]] = {}  # module -> {module it loads: where}
    for module, path in sources.items():
        graph[module] = {}
        for line, target in _references(path, modules):
            if target != module:
                graph[module].setdefault(target, f"{path.relative_to(REPO)}:{line}")
    circles, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        for target, where in graph[module].items():
            if target in trail:
                circle = trail[trail.index(target):] + [target]
                circles.append(" -> ".join(circle) + f" (last step at {where})")
            elif target not in done:
                visit(target, [*trail, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not circles, "\n".join(sorted(set(circles)))
