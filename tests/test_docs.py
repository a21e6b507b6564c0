"""The documentation holds: every relative link and anchor of README.md and docs/ resolves (the
generated reference parts included), every repository path the pages name exists, the MkDocs site
builds with --strict, and the pages' examples run as written."""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def hooks():
    """docs/hooks.py, the MkDocs hook that generates the reference parts."""
    spec = importlib.util.spec_from_file_location("bench_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RENDERED: dict[Path, str] = {}


def rendered(page: Path) -> str:
    """The page's Markdown as the site shows it: docs pages with their generated parts."""
    if page not in _RENDERED:
        text = page.read_text()
        _RENDERED[page] = hooks().render(text) if DOCS in page.parents else text
    return _RENDERED[page]


def prose(markdown: str) -> str:
    """``markdown`` without its fenced code blocks (links in code are not links)."""
    return re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """The ids MkDocs gives the page's headings (Python-Markdown's toc slugs, numbered when a
    slug repeats) and explicit ``{#id}`` attributes."""
    ids: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose(markdown), flags=re.MULTILINE):
        plain = re.sub(r"`([^`]*)`", r"\1", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))
        slug, n = slugify(plain, "-"), 1
        while slug in ids:
            slug = f"{slugify(plain, '-')}_{n}"
            n += 1
        ids.add(slug)
    ids |= set(re.findall(r"\{#([\w-]+)\}", markdown))
    return ids


def links(markdown: str) -> list[str]:
    """Targets of the Markdown links outside code blocks and code spans."""
    text = re.sub(r"`[^`\n]*`", "", prose(markdown))
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_and_anchor_resolves():
    problems = []
    for page in PAGES:
        for target in links(rendered(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not file.exists():
                problems.append(f"{where}: no file {file}")
            elif file.is_dir():
                problems.append(f"{where}: a folder; link a page of it")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(rendered(file))):
                problems.append(f"{where}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_every_page_is_in_the_site_navigation():
    import yaml

    def listed(nav) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        if isinstance(nav, dict):
            return set().union(*map(listed, nav.values()))
        return set().union(*map(listed, nav))

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == listed(config["nav"])


# Folders of this repository; a code span naming a path under one of them must name a real one
# (placeholders in capitals, such as bench/papers/NAME.yaml, aside).
TOP = ("bench/", "backbones/", "tasks/", "benchmarks/", "scripts/", "tests/", ".ci/", "docs/")


def test_repository_paths_named_in_the_pages_exist():
    problems = []
    for page in PAGES:
        for span in re.findall(r"`([^`\s]+)`", prose(page.read_text())):
            path = span.split("::")[0].split("'")[0].rstrip(".,:;")
            if not path.startswith(TOP) or re.search(r"[A-Z]{3,}|\.\.\.|\{", path):
                continue
            if not glob.glob(str(REPO / path)):
                problems.append(f"{page.relative_to(REPO)}: `{span}`: no such path")
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_links_into_the_docs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 10_240
    assert {f"docs/{p.relative_to(DOCS)}" for p in DOCS.rglob("*.md")} <= set(links(readme))


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`, as .ci/run runs it: a broken link or anchor, an object the API
    reference names that the code no longer has, or a generator that fails is an error."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert 'id="bench-run"' in cli and "--memory-budget" in cli  # generated from the parser
    heads = (tmp_path / "site" / "reference" / "heads" / "index.html").read_text()
    assert "halving" in heads  # a setting of the linear head, from its settings dataclass


# --- generated parts ----------------------------------------------------------------------------
def test_generated_parts_follow_the_code():
    """Each generated part names what the code defines now, not what a page once listed."""
    from bench.cli import build_parser
    from bench.preset_index import INDEX
    from bench.protocol import HEADS

    parts = hooks()
    presets = [p["name"] for module in INDEX["bench.backbones"].values() for p in module["presets"]]
    backbones = parts.render("<!-- generate: backbones -->")
    assert all(f"| `{name}` |" in backbones for name in presets)
    commands = re.findall(r"^## bench (\S+)$", parts.render("<!-- generate: cli -->"), re.M)
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert commands == list(sub.choices)
    heads = parts.render("<!-- generate: heads -->")
    assert all(f"## `{name}`" in heads for name in HEADS.names())
    names = parts.render("<!-- generate: mlflow-names -->")
    assert "| `IDENTITY` | `bench.identity` |" in names
    with pytest.raises(RuntimeError, match="unknown generated part 'nope'"):
        parts.render("<!-- generate: nope -->")


def test_the_api_reference_lists_names_the_code_defines():
    """mkdocstrings fails on a missing module or object but skips a missing name in `members:`;
    each listed member must be defined at the top of its module's source."""
    import ast

    page = (DOCS / "reference" / "api.md").read_text()
    problems = []
    for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", page, re.M):
        members = re.findall(r"^        - (\w+)$", options, re.M)
        module, *attribute = target.split(".")  # the longest importable prefix is the module
        for part in target.split(".")[1:]:
            try:
                found = importlib.util.find_spec(f"{module}.{part}")
            except ModuleNotFoundError:
                found = None
            if found is None:
                break
            module, attribute = f"{module}.{part}", attribute[1:]
        members += attribute
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Name)}
        problems += [f"{module}.{m}" for m in members if m not in defined]
    assert not problems, f"docs/reference/api.md lists names the code no longer has: {problems}"


# --- examples, run as written -----------------------------------------------------------------------
def block(page: str, after: str, fence: str) -> str:
    """The first ```fence block after the text ``after`` in docs/``page``."""
    text = (DOCS / page).read_text()
    return text[text.index(after):].split(f"```{fence}\n", 1)[1].split("```", 1)[0]


def commands(page: str, after: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in block(page, after, "bash").splitlines()]
    return [shlex.split(line) for line in lines if line]


def bench(argv: list[str], capsys) -> str:
    """``argv`` through the CLI, as typed: its exit status must be 0; what it printed."""
    from bench.cli import main

    assert argv[0] == "bench", argv
    code = main(argv[1:])
    out = capsys.readouterr()
    assert code == 0, (argv, out.err[-2000:])
    return out.out


@pytest.mark.usefixtures("one_thread")
def test_toy_paper_reproduces_as_written(tmp_path, monkeypatch, capsys):
    """docs/guides/reproduce.md's tiny example: the file and the three commands, offline."""
    import yaml

    page, section = "guides/reproduce.md", "## A tiny example, offline"
    source = block(page, section, "yaml")
    (tmp_path / "tiny-paper.yaml").write_text(source)
    monkeypatch.chdir(tmp_path)
    cells = [c["id"] for t in yaml.safe_load(source)["tables"] for c in t.get("cells", [])]
    steps = commands(page, section)
    assert [argv[1] for argv in steps] == ["reproduce", "reproduce", "report"]
    plan = bench(steps[0], capsys)
    assert all(re.search(rf"^  {cell}: .*: to run", plan, re.M) for cell in cells), plan
    bench(steps[1], capsys)
    assert all(re.search(rf"^  {cell}: .*: done", bench(steps[0], capsys), re.M)
               for cell in cells)  # the page says: run the dry run again, every cell is done
    bench(steps[2], capsys)
    name = yaml.safe_load(source)["name"]
    folder = tmp_path / "results" / "reports" / name
    assert (folder / "index.md").is_file() and (folder / "pools.png").is_file()
    for table in yaml.safe_load(source)["tables"]:
        page_text = (folder / f"{table['key']}.md").read_text()
        assert all(f"| {c['id']} " in page_text for c in table.get("cells", []))


@pytest.mark.usefixtures("one_thread")
def test_own_task_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/guides/new-task.md's task, saved as my_task.py, through the page's commands."""
    from .conftest import records

    page = "guides/new-task.md"
    (tmp_path / "my_task.py").write_text(textwrap.dedent(block(page, "save it as `my_task.py`",
                                                               "python")))
    monkeypatch.chdir(tmp_path)
    steps = commands(page, "save it as `my_task.py`")
    assert "OK (train 102, val 24, test 54 images, 3 classes)" in bench(steps[0], capsys)
    for argv in steps[1:]:
        bench(argv, capsys)
    found = records()
    assert len(found) == 2 and {r.task for r in found} == {"my_task.py:stripes"}
    assert len({r.identity for r in found}) == 2  # per_class is part of the task's identity
