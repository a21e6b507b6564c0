"""Paper files: the schema check (one line naming file, table, cell and field), loading by name,
path and entry point, and the shipped seed file against the CSVs it was generated from."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from bench.results.papers import (Paper, PaperError, load_paper, paper_names, parse_paper)

REPO = Path(__file__).resolve().parents[1]


def minimal(**table) -> dict:
    cells = [{"id": "a", "backbone": "pixels", "value": 50.0},
             {"id": "b", "backbone": "pixels", "pool": 2, "value": 60}]
    return {"name": "tiny", "title": "T", "citation": "C", "tables": [
        {"key": "t1", "kind": "table", "source": "Table 1",
         "defaults": {"task": "digits", "head": "linear", "metric": "top1"}, "cells": cells,
         **table}],
        "claims": [{"text": "b beats a", "higher": "b", "lower": "a"}]}


def test_parse_merges_defaults_and_normalises():
    paper = parse_paper(minimal(), "tiny.yaml")
    a, b = paper.cells()
    assert (a.task, a.head, a.metric, a.source, a.layer, a.pool) == (
        "digits", "linear", "top1", "Table 1", None, None)
    assert b.pool == "2" and b.value == 60.0 and isinstance(b.value, float)
    assert paper.cell("b") is b and paper.table("t1").cells == (a, b)
    assert paper.claims[0].higher == "b"


def bad(data: dict, path: str = "p.yaml") -> str:
    with pytest.raises(PaperError) as info:
        parse_paper(data, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_errors_name_file_table_cell_and_field():
    data = minimal()
    data["tables"][0]["cells"][1]["value"] = "64.9%"
    message = bad(data)
    assert message.startswith("p.yaml, table 't1', cell 'b', field 'value':"), message
    assert "must be a number" in message
    data["tables"][0]["cells"][1]["value"] = True  # YAML's yes/no is not a number either
    assert "field 'value'" in bad(data)
    data = minimal()
    data["tables"][0]["cells"][0]["pol"] = "1"
    assert "cell 'a', field 'pol': unknown field" in bad(data)
    data = minimal()
    data["tables"][0]["cells"][0]["metric"] = "top2"
    assert "field 'metric': 'top2'" in bad(data)
    data = minimal()
    del data["tables"][0]["defaults"]["task"]
    assert "cell 'a', field 'task': required" in bad(data)
    data = minimal()
    data["tables"][0]["cells"][1]["id"] = "a"
    assert "field 'id': two cells" in bad(data)
    assert "field 'kind'" in bad(minimal(kind="chart"))
    assert "table 't1', field 'x': required for a curve" in bad(minimal(kind="curve"))
    assert "cell 'a', field 'x': required in a curve" in bad(minimal(kind="curve", x="pool"))
    data = minimal()
    data["claims"][0]["lower"] = "zzz"
    assert "field 'lower': no cell 'zzz'" in bad(data)
    assert "field 'similarity'" in bad({"name": "n", "tables": [
        {"key": "s", "kind": "similarity", "source": "Fig. 1"}]})


def test_curve_x_from_a_cell_field():
    data = minimal(kind="curve", x="pool", series="layer")
    data["tables"][0]["cells"][0]["pool"] = "1"
    paper = parse_paper(data, "p.yaml")
    assert [c.x for c in paper.cells()] == ["1", 2]


def test_select_keeps_claims_whose_cells_remain():
    data = minimal()
    data["tables"].append({"key": "t2", "kind": "similarity", "source": "Fig. 2",
                           "similarity": {"preset": "paper-cka"}})
    paper = parse_paper(data, "p.yaml")
    assert paper.select(["t2"]).claims == () and len(paper.select(["t1"]).claims) == 1
    assert paper.select(None) is paper
    with pytest.raises(PaperError, match="no table 'zz'; its tables: t1, t2"):
        paper.select(["zz"])


def test_load_by_path_name_and_entry_point(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    assert load_paper(str(path)).path == str(path)
    with pytest.raises(PaperError, match="unknown paper 'nope'; papers: .*mukhopadhyay2023"):
        load_paper("nope")
    with pytest.raises(PaperError, match="no such file"):
        load_paper(str(tmp_path / "missing.yaml"))
    path.write_text("tables: [unclosed")
    with pytest.raises(PaperError, match="not valid YAML"):
        load_paper(str(path))

    class Point:  # an installed package's entry point returning a mapping
        name, value = "plugin-paper", "pkg:paper"

        def load(self):
            return lambda: minimal()

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [Point()] if group == "bench.papers" else [])
    assert "plugin-paper" in paper_names()
    assert load_paper("plugin-paper").name == "tiny"


def test_seed_paper_matches_the_csvs():
    """Every number of the shipped seed file is the one its CSV prints (no hand-copied typo)."""
    paper: Paper = load_paper("mukhopadhyay2023")
    assert "mukhopadhyay2023" in paper_names()
    folder = REPO / "backbones" / "adm" / "paper"

    def rows(name):
        return list(csv.DictReader(open(folder / name)))

    for row in rows("ablation_block.csv"):
        assert paper.cell(f"block-b{row['block']}-t{row['t']}").value == float(row["acc"])
    for row in rows("ablation_timestep.csv"):
        cell = paper.cell(f"timestep-b{row['block']}-t{row['t']}")
        assert (cell.value, cell.layer, cell.pool) == (float(row["acc"]),
                                                       f"block19@t{row['t']}", "1")
    for row in rows("ablation_pool.csv"):
        cell = paper.cell(f"pool-b{row['block']}-t{row['t']}-p{row['pool']}")
        assert (cell.value, cell.pool) == (float(row["acc"]), row["pool"])
    for row in rows("cub_timestep.csv"):
        cell = paper.cell(f"cub-b{row['block']}-t{row['t']}")
        assert (cell.value, cell.task, cell.pool) == (float(row["acc"]), "cub", "4")
    methods = {"GD linear": "linear", "GD MLP": "mlp", "GD attention": "attention",
               "SimCLR linear": "simclr-linear"}
    shipped = {c.id for c in paper.table("finegrained").cells}
    for row in rows("finegrained.csv"):
        if row["study"] != "seed paper" or row["method"] not in methods:
            continue
        cell_id = f"fg-{row['method'].lower().replace(' ', '-')}-{row['task']}"
        if row["task"] in ("dogs", "nabirds"):  # no bench task
            assert cell_id not in shipped
        else:
            assert paper.cell(cell_id).value == float(row["acc"])
    headline = {r["method"]: float(r["acc"]) for r in rows("imagenet_headline.csv")
                if r["study"] == "seed paper"}
    assert paper.cell("gd-b24-t90-p2").value == headline["GD linear, block 24, t 90, pool 2"]
    assert paper.cell("bigbigan").value == headline["BigBiGAN RevNet-50x4"]
    assert paper.cell("gd-attention").value == headline["GD attention head"]
    assert {t.key for t in paper.tables if t.kind == "similarity"} >= {"cka-blocks-timesteps"}
    assert all(c.protocol for c in paper.cells() if c.head == "linear")
