"""The layering docs/development/architecture.md states, checked on every import in the source
(module level and inside functions): a change that breaks a boundary fails here, naming it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

BELOW = {  # what each layer may import besides itself, lowest first
    "core": set(), "features": {"core"}, "heads": {"core"}, "results": {"core"},
    "run": {"core", "features", "heads", "results"},
    "study": {"core", "features", "heads", "results", "run"},
    "api": {"core", "features", "heads", "results", "run", "study"},
    "cli": {"core", "features", "heads", "results", "run", "study", "api"},
    "plugins": {"core", "features", "results"},  # backbones/, tasks/
}
SUBPACKAGES = {"features", "heads", "results", "run", "study", "cli"}  # bench/<layer>/


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
    and to docs/development/architecture.md), and each layer's package only documents it."""
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


# --- the engine knows no paper, model or dataset ------------------------------------------------
# Where names of presets and tasks and diffusion layers (``block24@t90``) may be written: the
# study layer and the paper files (papers are its data), and the plugin folders that define them.
KNOWING = ("bench/study/", "bench/papers/", "backbones/", "tasks/")
# A named layer at a timestep: block24@t90, f"block{b}@t{t}", "block{block}@t{t}". The bare
# separator ("@t", f"{base}@t{t}") is the grammar itself, which core parses for every backbone.
GRAMMAR = re.compile(r"[A-Za-z][\w.]*(\{[^}]*\})?@t(\d|\{)")
# Keyword arguments whose strings are another library's vocabulary, never a preset or task:
# numpy's index modes (np.take(mode="clip")), PIL's image modes.
FOREIGN_KEYWORDS = ("mode",)
# Literals that equal a registered name by coincidence, each with why it is not that name.
COINCIDENCES = {
    ("bench/features/cache.py", "clip"): "ShardedArray.take's own mode (np.take's vocabulary)",
    # `bench demo` is the offline example: it runs these named presets on purpose.
    ("bench/cli/demo.py", "pixels"): "the demo's backbone",
    ("bench/cli/demo.py", "random-unet"): "the demo's backbone",
    ("bench/cli/demo.py", "digits"): "the demo's task",
}


def _registered_names() -> set[str]:
    """Every preset and task name, from the registries' generated index (no model imported)."""
    from bench.preset_index import INDEX

    return {preset["name"] for modules in INDEX.values() for module in modules.values()
            for preset in module["presets"]}


def _documentation(tree: ast.AST, path: Path) -> set[int]:
    """ids of the string constants that document rather than act: docstrings, the help
    texts of the CLI's arguments and commands (``help=`` in bench/cli/, where usage examples
    such as ``--layers block1..37@t90`` belong), and other libraries' vocabulary
    (``FOREIGN_KEYWORDS``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
        if (path.parts[-2] == "cli" and isinstance(node, ast.keyword) and node.arg == "help"):
            out |= {id(n) for n in ast.walk(node.value)}
        if isinstance(node, ast.keyword) and node.arg in FOREIGN_KEYWORDS:
            out |= {id(n) for n in ast.walk(node.value)}
    return out


def _strings(tree: ast.AST, documentation: set[int]) -> list[tuple[int, str]]:
    """(line, text) of every string that acts: constants, and each f-string as one text with
    ``{}`` for its fields (its constant parts are not counted again)."""
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
             for v in node.values}
    out = []
    for node in ast.walk(tree):
        if id(node) in documentation or id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}"
                                             for v in node.values)))
    return out


def test_the_engine_names_no_preset_task_or_diffusion_layer():
    """A preset or task name, or a diffusion layer at a timestep, written as a string in engine
    code outside the study layer, the paper files and the plugin folders is a paper's (or a
    model's) fact in the wrong place: it fails here, naming file, line and literal."""
    names = _registered_names()
    assert {"diffusion", "cub", "imagenet", "pixels"} <= names  # the index is read
    found = []
    for module, path in _modules("bench").items():
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(KNOWING) or module == "bench.preset_index":
            continue
        tree = ast.parse(path.read_text())
        for line, text in _strings(tree, _documentation(tree, path)):
            named = text in names and (relative, text) not in COINCIDENCES
            if named or GRAMMAR.search(text):
                found.append(f"{relative}:{line}: {text[:60]!r}")
    assert found == [], "\n".join(found)


def test_the_name_check_catches_what_it_should(tmp_path):
    """The check above is not vacuous: the literals it must catch are caught, the ones it must
    let through are not (checked on a made-up module)."""
    code = ('"""Docstring: block24@t90 and diffusion are fine here."""\n'
            'A = "diffusion"\nB = f"block{n}@t{t}"\nC = "block24@t90"\nD = "cub"\n'
            'E = "diffusion model"\nF = "{block}@t{t}"\nG = f"{base}@t{t}"\nH = "@t"\n'
            'I = "block{block}@t{t}"\nJ = "block1..37@t10"\nK = x.take(i, mode="clip")\n')
    tree = ast.parse(code)
    names = _registered_names()
    hits = sorted(text for _, text in _strings(tree, _documentation(tree, tmp_path / "x.py"))
                  if text in names or GRAMMAR.search(text))
    assert hits == ["block1..37@t10", "block24@t90", "block{block}@t{t}", "block{}@t{}", "cub",
                    "diffusion"]
    cli = ast.parse('p.add_argument("--layers", help="e.g. block1..37@t90")\nx = "block1@t9"\n')
    assert sorted(t for _, t in _strings(cli, _documentation(cli, tmp_path / "cli" / "x.py"))) == [
        "--layers", "block1@t9"]


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
