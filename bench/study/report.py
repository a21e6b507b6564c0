"""``bench report``: a paper's tables beside our results, written and logged once.

``make_report`` plans the paper like ``bench reproduce`` (``bench.study.plan``, under its
``--recipe``, and again under every other recipe: results the suite holds under those are shown
beside), judges every cell, claim and matrix (``bench.study.judge``), writes ``results/reports/PAPER/`` (Markdown and
standalone HTML pages per table, an index, figures, ``report.json``; ``bench.study.pages``) with
the CSV/JSON export across papers beside it, and logs the folder as one MLflow run (``bench.kind
= report``). The same content is logged once: a rerun that finds a finished report of the same
paper and tables saying the same (every number, verdict, title, source and note) keeps that
run; a changed report is a new run and the older ones are marked superseded.
"""

from __future__ import annotations

import json
from dataclasses import replace

from bench.errors import UsageError
from bench.run.spec import RunOptions, RunSpec
from bench.study.judge import Report, build


def make_report(paper_name: str, tables: list[str] | None = None,
                options: RunOptions | None = None, template: RunSpec | None = None) -> Report:
    """Judge, write and log the report of a paper (a name or a .yaml path) in ``options.suite``;
    ``template``: the spec fields no cell sets, as ``bench reproduce`` was given them (seed,
    precision, cache dtype), so the cells resolve to the identities it ran."""
    from bench.digest import json_digest
    from bench.paths import reports_dir
    from bench.results.publish import log_report
    from bench.results.store import ensure_experiment
    from bench.study.pages import ReportError, write
    from bench.study.paper import load_paper
    from bench.protocol import RECIPES
    from bench.study.plan import STUDY_RECIPE, plan_paper

    options = options or RunOptions()
    whole = load_paper(paper_name)
    paper = whole.select(tables)
    template = template or RunSpec(backbone="", task="", recipe=STUDY_RECIPE)
    others = tuple(plan_paper(paper, options, replace(template, recipe=recipe))
                   for recipe in RECIPES.names() if recipe != template.recipe)
    report = build(paper, plan_paper(paper, options, template), options.suite, options,
                   all_tables=len(paper.tables) == len(whole.tables), others=others)
    if not report.any_run():
        unavailable = [c for c in report.cells.values() if c.verdict == "unavailable here"]
        where = (f"; {len(unavailable)} of {len(report.cells)} cells are unavailable here "
                 f"({unavailable[0].why}): report where their weights and data are"
                 ) if unavailable else ""
        raise UsageError(f"paper {paper.name!r} has no results in suite {options.suite!r} yet: "
                         f"run `bench reproduce {paper_name}` first (or name the suite they are "
                         f"in with --suite){where}")
    report.folder = reports_dir() / paper.name
    report.files = write(report, reports_dir(), paper.origin)
    keys = [t.key for t in paper.tables]
    try:
        logged = log_report(ensure_experiment(options.suite), paper.name, keys,
                            report.all_tables, json_digest(json.loads(report.to_json()))[:32],
                            report.summary(), report.folder)
    except OSError as e:  # a full disk under a local store's artifacts
        raise ReportError(f"the report was written to {report.folder} but could not be logged "
                          f"to MLflow: {e.strerror or e}; run `bench report` again once there is "
                          "room") from None
    report.run_id, report.reused = logged.run_id, logged.reused
    return report
