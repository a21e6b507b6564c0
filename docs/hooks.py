"""MkDocs hook: the reference pages' generated parts, read from the code when the site is built.

A page asks for a part with a line ``<!-- generate: NAME -->``; ``render`` replaces it with the
Markdown that ``GENERATORS[NAME]`` builds from the code as it is now (the registries, the CLI's
argparse parser, the record's MLflow names, the paper-file schema, the folders and environment
variables), so the reference cannot drift from the code. An unknown name, or a generator that
fails, stops the build with the reason.

Listing presets imports no model code: it reads ``bench/preset_index.py``, the no-import index
the registries keep (``python -m bench.registry`` rewrites it; a test fails while it is stale).
Presets of packages installed in the build's environment (entry points) are deliberately left
out: the site documents what this repository ships.

``tests/test_docs.py`` renders every page through ``render`` too, to check the links and anchors
of the generated Markdown.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generate: ([\w-]+) -->[ \t]*$", re.MULTILINE)


# --- helpers ---------------------------------------------------------------------------------------
def cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text(value: object) -> str:
    """Free text (a help string, a description) shown as written: Markdown's emphasis and HTML
    characters escaped outside its `code` spans."""
    parts = str(value).split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = re.sub(r"([\\*_\[\]])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "`".join(parts)


def code(text: object) -> str:
    """``text`` as inline code (a backtick inside it widens the fence)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else ""


def first_line(doc: str | None) -> str:
    return (inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else "")


def rst_to_markdown(doc: str) -> str:
    """A module docstring as Markdown: reStructuredText's ``code`` is Markdown's `code`."""
    return re.sub(r"``(.+?)``", r"`\1`", inspect.cleandoc(doc))


def module_source(module: str) -> tuple[Path, ast.Module]:
    """A module's file and syntax tree, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"docs: module {module} not found")
    path = Path(spec.origin)
    return path, ast.parse(path.read_text(), str(path))


def inline_comments(path: Path) -> dict[int, str]:
    """Line number -> the ``# comment`` ending that line (the source's own notes on a name)."""
    import io
    import tokenize

    out = {}
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = token.string.lstrip("#").strip()
    return out


# --- presets: backbones and tasks --------------------------------------------------------------------
def _index(package: str) -> dict:
    from bench.preset_index import INDEX  # data only: no model code imported

    if package not in INDEX:
        raise RuntimeError(f"docs: bench/preset_index.py has no {package}; run "
                           "`python -m bench.registry`")
    return INDEX[package]


def presets(package: str, what: str) -> str:
    rows = []
    for module, listed in sorted(_index(package).items()):
        for preset in listed["presets"]:
            rows.append([preset["name"], text(preset["description"]),
                         text(preset.get("licence", "")), code(module)])
    if not rows:
        raise RuntimeError(f"docs: no {what} in bench/preset_index.py")
    rows = [[code(name), *rest] for name, *rest in sorted(rows)]
    header = ["name", "description", "weights licence", "module"]
    if what == "tasks":
        rows = [[name, description, module] for name, description, _, module in rows]
        header = ["name", "description", "module"]
    return (f"{len(rows)} {what}, as `bench list {what}` prints them (read from the preset "
            "index, which imports no model code).\n\n" + table(header, rows))


# --- heads, metrics, executors -------------------------------------------------------------------------
def _settings(config: type) -> list[list[object]]:
    """A head's settings: every field of its settings dataclass but the head and the seed."""
    rows = []
    for f in dataclasses.fields(config):
        if f.name in ("head", "seed"):
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append([code(f.name), code(kind), code(default)])
    return rows


def heads() -> str:
    from bench import protocol

    kinds = protocol.HEADS.values()
    out = [f"Protocol version: **{protocol.PROTOCOL_VERSION}** "
           "(`bench.protocol.PROTOCOL_VERSION`, part of every result's identity).", "",
           table(["head", "what", "reads", "`--protocol` it ranks under", "CLI flags"],
                 [[code(k.name), text(k.description), k.inputs + (f" (default pool {k.default_pool})"
                                                            if k.default_pool else ""),
                   code(k.leaderboard_family()), ", ".join(map(code, k.flags)) or "-"]
                  for k in kinds])]
    families = protocol.protocols()
    out += ["", "`bench leaderboard --protocol` takes: " + ", ".join(
        f"{code(name)} ({', '.join(heads) if heads else 'every head'})"
        for name, heads in families.items()) + "."]
    for kind in kinds:
        config = kind.config_class()
        out += ["", f"## `{kind.name}`", "", text(kind.description) + ".", "",
                f"Settings (`--probe-arg NAME=VALUE`, or the CLI flags above), from "
                f"`{config.__module__}.{config.__qualname__}`:", "",
                table(["setting", "type", "default"], _settings(config))]
        if kind.default_seeds != 1:
            out += ["", f"Runs seeds 0..{kind.default_seeds - 1} when none are asked for."]
    return "\n".join(out)


def metrics() -> str:
    from bench import metrics as module

    return table(["metric", "what", "averaged within classes first"],
                 [[code(m.name), text(m.description), "yes" if m.stratified else "no"]
                  for m in module.METRICS.values()])


def executors() -> str:
    from bench.run.scheduler import executors as registry

    rows = []
    for name in registry.names():
        cls = registry.get(name)
        what = rst_to_markdown(first_line(cls.__doc__))
        if cls.__module__ == "bench.run.scheduler":  # the generic class: one of submitit's kinds
            what = f"submitit's executor {code(name)}, passed through as it is. " + what
        rows.append([code(name), code(f"{cls.__module__}.{cls.__qualname__}"), what])
    return table(["`--executor`", "class", "what"], rows)


# --- the command line ---------------------------------------------------------------------------------
def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    formatter = argparse.HelpFormatter(parser.prog)
    helps = {a.dest: formatter._expand_help(a) if a.help else "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _arguments(parser: argparse.ArgumentParser) -> list[list[object]]:
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(action.option_strings) or action.metavar or action.dest
        help_text = formatter._expand_help(action) if action.help else ""
        default = action.default
        flag = action.nargs == 0  # --force, --no-keep-features: their stored value is no default
        shown = ("" if flag or default in (None, argparse.SUPPRESS) or not action.option_strings
                 else code(",".join(map(str, default)) if isinstance(default, list) else default))
        rows.append([code(names), text(help_text), shown])
    return rows


def cli() -> str:
    from bench.cli import build_parser

    parser = build_parser()
    commands = _commands(parser)
    out = [table(["command", "what"], [[f"[`bench {name}`](#bench-{name})", text(help_text)]
                                       for name, help_text, _ in commands])]
    for name, help_text, sub in commands:
        out += ["", f"## bench {name}", "", text(help_text[:1].upper() + help_text[1:]) + ".", "",
                "```text",
                _usage(sub), "```"]
        rows = _arguments(sub)
        if rows:
            out += ["", table(["argument", "what", "default"], rows)]
    return "\n".join(out)


# --- MLflow names ---------------------------------------------------------------------------------------
def mlflow_names() -> str:
    """The module docstring of ``bench.results.record`` (the table of what each name means) and
    every name it defines, read from its source."""
    path, tree = module_source("bench.results.record")
    notes = inline_comments(path)
    rows = []
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, (ast.Constant, ast.Tuple)):
            continue
        for target in node.targets:
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            values = (node.value.elts if isinstance(target, ast.Tuple)
                      and isinstance(node.value, ast.Tuple) else [node.value])
            for name, value in zip(names, values):
                if (isinstance(name, ast.Name) and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)):
                    rows.append([code(name.id), code(value.value), notes.get(node.lineno, "")])
    if not rows:
        raise RuntimeError("docs: bench/results/record.py defines no names")
    return (rst_to_markdown(ast.get_docstring(tree) or "") + "\n\n## Every name, as defined\n\n"
            f"The string constants of `bench/results/record.py` ({len(rows)}), with the source's "
            "own note where it has one:\n\n" + table(["constant", "value", "note"], rows))


# --- the paper-file schema -----------------------------------------------------------------------------
SCHEMA_CLASS = "PaperCell"  # the schema's module is the one defining this dataclass


def _schema_module() -> tuple[str, Path, ast.Module]:
    """The module that defines the paper file's dataclasses, found by reading the sources (the
    study layer may move it)."""
    found = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(n, ast.ClassDef) and n.name == SCHEMA_CLASS for n in tree.body):
            found.append((path, tree))
    if len(found) != 1:
        raise RuntimeError(f"docs: expected one module under bench/ defining {SCHEMA_CLASS}, "
                           f"found {[str(p) for p, _ in found]}: update docs/hooks.py")
    path, tree = found[0]
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return module, path, tree


def paper_schema() -> str:
    module, path, tree = _schema_module()
    notes = inline_comments(path)
    out = [f"Read from `{module}` (`{path.relative_to(REPO)}`)."]
    doc = ast.get_docstring(tree)
    if doc:
        out += ["", rst_to_markdown(doc)]
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or not any(
                "dataclass" in ast.unparse(d) for d in node.decorator_list):
            continue
        rows = []
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                default = "(required)" if item.value is None else ast.unparse(item.value)
                default = re.sub(r"field\(default_factory=(\w+)\)", r"\1()", default)
                rows.append([code(item.target.id), code(ast.unparse(item.annotation)),
                             code(default), notes.get(item.lineno, "")])
        out += ["", f"### `{node.name}`", ""]
        if ast.get_docstring(node):
            out += [rst_to_markdown(ast.get_docstring(node)), ""]
        out += [table(["field", "type", "default", "note"], rows)]
    return "\n".join(out)


# --- folders and environment variables -------------------------------------------------------------
def environment() -> str:
    """``bench.paths``' docstring (its table of folders and variables) and the variables its
    code reads: the one module that reads ``os.environ``."""
    path, tree = module_source("bench.paths")
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                r"[A-Z][A-Z0-9]*_[A-Z0-9_]+", node.value):
            read.add(node.value)
    return (rst_to_markdown(ast.get_docstring(tree) or "") + "\n\nEvery variable its code reads: "
            + ", ".join(map(code, sorted(read))) + ".")


GENERATORS: dict[str, Callable[[], str]] = {
    "backbones": lambda: presets("bench.backbones", "backbones"),
    "tasks": lambda: presets("bench.tasks", "tasks"),
    "heads": heads,
    "metrics": metrics,
    "executors": executors,
    "cli": cli,
    "mlflow-names": mlflow_names,
    "paper-schema": paper_schema,
    "environment": environment,
}


def render(markdown: str) -> str:
    """``markdown`` with every ``<!-- generate: NAME -->`` line replaced by its part."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise RuntimeError(f"docs: unknown generated part {name!r}; known: "
                               f"{', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **kwargs) -> str:  # noqa: ARG001 (MkDocs passes page, config)
    return render(markdown)
