"""A task's cache identity comes from the arguments its factory was called with, not only from
what its ``config`` remembers to list (issue 22, item 7); a split names each item once."""

from __future__ import annotations

import numpy as np
import pytest

import bench
from bench.run.spec import RunOptions, RunSpec, resolve
from bench.task import DatasetError, Split

FORGETFUL = '''
import numpy as np
from bench.task import Split, Task


class Stripes(Task):
    def __init__(self, invert):
        super().__init__(name="stripes", num_classes=2)
        self.invert = invert

    @property
    def config(self):
        return {"task": "stripes"}  # forgets `invert`, which changes every image

    def build_splits(self):
        def load(index):
            from PIL import Image

            value = 255 * (index % 2) if not self.invert else 255 * (1 - index % 2)
            return Image.new("RGB", (4, 4), (value,) * 3)

        return {s: Split(s, list(range(8)), np.arange(8) % 2, load) for s in ("train", "val", "test")}


def stripes(invert: bool = False) -> Stripes:
    return Stripes(invert)
'''


def test_an_argument_config_forgets_still_separates_caches_and_results(tmp_path):
    (tmp_path / "stripes.py").write_text(FORGETFUL)
    task = f"{tmp_path / 'stripes.py'}:stripes"
    options = RunOptions(workers=0, progress=False)
    plain, inverted, spelled = (
        resolve(RunSpec(backbone="pixels", task=task, task_args=args), options).run
        for args in ({}, {"invert": True}, {"invert": False}))
    assert plain.task_config == {"task": "stripes", "arguments": {"invert": False}}
    assert inverted.task_config["arguments"] == {"invert": True}
    assert plain.cells[0].identity != inverted.cells[0].identity
    assert spelled.cells[0].identity == plain.cells[0].identity  # the default, typed: the same

    from bench.features.cache import cache_key
    from bench.features.extract import entry_fields

    backbone = bench.create_backbone("pixels")
    split = bench.create_task(task).split("train")
    keys = {cache_key(entry_fields(backbone, run.task_config, split, "image", "16", run.precision))
            for run in (plain, inverted)}
    assert len(keys) == 2  # two feature caches, not one served for both


def test_data_location_is_not_identity(tmp_path):
    """``root`` only says where the files are (the split manifests identify them) and
    ``expected_counts`` what verify checks; the holdout fraction changes the data."""
    arguments = bench.create_task("cub", root=str(tmp_path)).identity["arguments"]
    assert arguments == {"val_fraction": 0.1}
    arguments = bench.create_task(f"imagenet:{tmp_path}").identity["arguments"]
    assert arguments == {"val_fraction": 0.1}


def test_a_split_names_each_item_once():
    with pytest.raises(DatasetError, match="item 'a.jpg' is listed twice"):
        Split("train", ["a.jpg", "b.jpg", "a.jpg"], np.zeros(3), str)
