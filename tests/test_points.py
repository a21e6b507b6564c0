"""The pool and layer grammar, parsed in one place (``bench.points``): every spelling accepted
before it existed parses to the same canonical string (canonical strings are part of result
identities), and every spelling refused before is refused. The expected values were printed by
the code this module replaced (``check_pool``, the ``@t`` parsers of the diffusion families,
similarity's range expansion, the sweep's and reproduce's template handling)."""

from __future__ import annotations

import re

import pytest

import bench
from bench.backbone import FeaturePoint, check_pool
from bench.errors import UsageError
from bench.points import LayerName, LayerTemplate, Pool, expand_layers

ACCEPTED = {  # kind (+cls) -> the pools check_pool accepted
    "map": ["1", "2", "16", "map16", "map1", "max"],
    "tokens+cls": ["cls", "mean", "cls+mean", "tokens"],
    "tokens": ["mean", "tokens"],
    "vector": ["none"],
}
TRIED = ["1", "2", "16", "02", "0", "map16", "map1", "map0", "map", "max", "cls", "mean",
         "cls+mean", "tokens", "none", "mean+cls", "", "avg", "map016", " 2", "2 "]


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_pools_accepted_and_refused_as_before_with_the_same_spelling(kind):
    point = FeaturePoint("x", kind.split("+")[0], has_cls=kind.endswith("+cls"))
    for pool in TRIED:
        if pool in ACCEPTED[kind]:
            check_pool(point, pool)
            assert str(Pool.parse(pool)) == pool
        else:
            with pytest.raises(UsageError, match=re.escape(f"pool {pool!r} does not apply to "
                                                           f"layer 'x' ({point.kind})")):
                check_pool(point, pool)
    for pool in ("02", "0", "map0", "map", "avg", "", "map016", " 2"):
        with pytest.raises(UsageError, match="use one of"):
            Pool.parse(pool)
    assert Pool.parse("map16").keeps_map and not Pool.parse("16").keeps_map
    assert (Pool.parse("map16").size, Pool.parse("4").size, Pool.parse("max").size) == (16, 4, None)


ADM = {  # diffusion-tiny: typed -> canonical (or the error's start)
    "24": "block24@t90", "block24": "block24@t90", "output_blocks.4": "block24@t90",
    "middle_block": "block19@t90", "input_blocks.0": "block1@t90",
    "block24@t90": "block24@t90", "block24@90": "block24@t90", "24@t150": "block24@t150",
    " block24 @ t90 ": "block24@t90", "block1@t0": "block1@t0", "block37@t999": "block37@t999",
    "output_blocks.4@150": "block24@t150", "block24@t0090": "block24@t90",
    "block24@": "block24@t90",
    "block24@x9": "! layer 'block24@x9': write MODULE@tT, e.g. block24@t90",
    "block24@t1000": "! timestep 1000 outside [0, 1000) of this model's noise schedule",
    "block38": "! layer 'block38': blocks are numbered 1..37",
    "blk24": "! layer 'blk24': use a block number or module name",
    "output_blocks.99": "! layer 'output_blocks.99': this U-Net has input_blocks.0..17",
}
DIFFUSERS = {  # ddpm-tiny (default t=50)
    "mid_block": "mid_block@t50", "mid_block@t10": "mid_block@t10",
    "mid_block@10": "mid_block@t10", "up_blocks.0@ t5": "up_blocks.0@t5",
    " down_blocks.1 ": "down_blocks.1@t50",
    "mid_block@t2000": "! timestep 2000 outside [0, 1000)",
    "nope@t3": "! UNet2DModel has no module 'nope'",
    "mid_block@tt3": "! layer 'mid_block@tt3': write MODULE@tT, e.g. mid_block@t90",
}


@pytest.mark.parametrize("preset, table", [("diffusion-tiny", ADM), ("ddpm-tiny", DIFFUSERS)])
def test_layer_spellings_canonicalise_as_before(preset, table):
    backbone = bench.create_backbone(preset)
    for typed, expected in table.items():
        if expected.startswith("!"):
            with pytest.raises(UsageError) as caught:
                backbone.canonical_layer(typed)
            assert str(caught.value).startswith(expected[2:]), typed
        else:
            assert backbone.canonical_layer(typed) == expected, typed
            assert str(LayerName.parse(expected)) == expected
    assert backbone.layer_groups([backbone.canonical_layer(x) for x in (
        "mid_block@t5", "mid_block@t9") if preset == "ddpm-tiny"] or [
        "block19@t90", "block24@t90", "block19@t150", "block24@t150"]) == (
        [["mid_block@t5"], ["mid_block@t9"]] if preset == "ddpm-tiny" else
        [["block19@t90", "block24@t90"], ["block19@t150", "block24@t150"]])


def test_ranges_and_globs_expand_as_before():
    names = [f"block{i}@t90" for i in range(1, 38)]
    expand = lambda specs: expand_layers(specs, lambda: names, "diffusion-tiny")  # noqa: E731
    assert expand(["block1..3@t90", "block24@t0..999:250", "block1..3@t10..20:10",
                   "block2?@t90", "block24@t90"]) == [
        "block1@t90", "block2@t90", "block3@t90", "block24@t0", "block24@t250", "block24@t500",
        "block24@t750", "block1@t10", "block1@t20", "block2@t10", "block2@t20", "block3@t10",
        "block3@t20", "block20@t90", "block21@t90", "block22@t90", "block23@t90", "block24@t90",
        "block25@t90", "block26@t90", "block27@t90", "block28@t90", "block29@t90",
        "block24@t90"]
    assert expand(["block0..3"]) == ["block0", "block1", "block2", "block3"]
    for spec, message in (("block3..1", "layer range '3..1': write low..high"),
                          ("block1..4:0", "layer range '1..4:0'"),
                          ("nothing*", "layer pattern 'nothing\\*' matches none of "
                                       "diffusion-tiny's layers: block1@t90, block2@t90")):
        with pytest.raises(UsageError, match=message):
            expand([spec])


def test_templates_fill_sweep_axes_and_check_names_as_before():
    from bench.run.sweep import grid_layers

    assert grid_layers("block{block}@t{t}", "diffusion", {"block": ["19", "24"],
                                                          "t": ["90", "150"]}) == [
        "block19@t90", "block19@t150", "block24@t90", "block24@t150"]
    assert grid_layers("block{block}@t{t}", "diffusion", {"block": ["19", "24"]}) == [
        "block19", "block24"]
    assert grid_layers("block{block}@t{t}", "diffusion", {"t": ["90"]}) == ["t90"]
    assert grid_layers("block{block}@t{t}", "d", {"layer": ["block1"], "t": ["90"]}) == [
        "block1", "t90"]
    assert grid_layers("{module}@t{t}", "ddpm", {"module": ["mid_block"], "t": ["5", "10"]}) == [
        "mid_block@t5", "mid_block@t10"]
    with pytest.raises(UsageError, match=r"'bb' has no sweep axis x \(its axes are block, t\)"):
        grid_layers("block{block}@t{t}", "bb", {"x": ["1"]})
    with pytest.raises(UsageError, match=r"'bb' has no sweep axis x \(it has none\)"):
        grid_layers(None, "bb", {"x": ["1"]})
    pattern = LayerTemplate("block{block}@t{t}").pattern()
    assert [bool(pattern.fullmatch(x)) for x in (
        "block24@t90", "block24", "24@t90", "blockx@t9", "block24@t90x")] == [
        True, False, False, False, False]
    assert LayerTemplate("{module}@t{t}").axes == {"module", "t"}
