"""Degenerate tasks are refused, not scored (issue 31, item 6): a task with fewer than two
classes, or a split holding images of fewer than two, is refused for every head before any
work (every score on it would be a perfect 100.00); a class absent from a split is named."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import UsageError

from .conftest import records

PLUGIN = '''
import numpy as np
from PIL import Image

from bench.task import Split, Task


class Plain(Task):
    def __init__(self, classes, labels):
        super().__init__(name="plain", num_classes=classes)
        self.given = labels

    def build_splits(self):
        def loader(i):
            return Image.new("RGB", (8, 8), (i * 37 % 256, i * 11 % 256, 0))
        return {s: Split(s, list(range(len(y))), np.array(y), loader)
                for s, y in self.given.items()}


def one_class():
    return Plain(1, {"train": [0] * 20, "val": [0] * 6, "test": [0] * 6})


def test_of_one_class():
    return Plain(3, {"train": [0, 1, 2] * 8, "val": [0, 1, 2] * 2, "test": [2] * 6})
'''
HEADS = ["linear", "mlp", "bn-linear", "logreg", "knn", "few-shot", "attention"]
FAST = ["--backbone", "pixels", "--backbone-arg", "size=4", "--workers", "0", "--no-progress"]


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain_tasks.py"
    path.write_text(PLUGIN)
    return str(path)


def _pool(head: str) -> list[str]:
    return ["--pool", "map2"] if head == "attention" else []


@pytest.mark.parametrize("head", HEADS)
def test_a_task_with_one_class_is_refused_for_every_head_before_any_work(head, plain, capsys,
                                                                         tmp_path):
    from bench.cli import main

    assert main(["run", "--task", f"{plain}:one_class", "--head", head, *FAST,
                 *_pool(head)]) == 2
    err = capsys.readouterr().err
    assert (f"task '{plain}:one_class' has 1 class: a classification task needs at least 2 "
            "(every score would be perfect)") in err
    assert "Traceback" not in err and "extracting" not in err
    assert not (tmp_path / "results" / "cache").exists() and records() == []


def test_a_split_with_one_class_is_refused_naming_what_it_lacks(plain, capsys, tmp_path):
    from bench.cli import main

    assert main(["run", "--task", f"{plain}:test_of_one_class", *FAST]) == 2
    err = capsys.readouterr().err
    assert (f"task '{plain}:test_of_one_class': the test split holds images of 1 class only, "
            "so every score on it would be perfect; no image there of '0' (train 8, val 2, test "
            "0), '1' (train 8, val 2, test 0). Give every class images in train, val and test") in err
    assert not (tmp_path / "results" / "cache").exists()


def _folder(root, counts: dict[str, int]):
    from PIL import Image

    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (6, 6), (40 * len(cls), 7 * i, 90)).save(root / cls / f"{i}.png")
    return root


def test_a_folder_class_with_one_image_never_reaches_val_or_test_and_is_refused(tmp_path,
                                                                                capsys):
    """The fault pass's case: two class folders, one with a single image, logged 100.00
    [100, 100] (its only image stays in train, so val and test hold one class)."""
    from bench.cli import main

    root = _folder(tmp_path / "tree", {"cat": 12, "dog": 1})
    assert main(["run", "--task", f"folder:{root}", *FAST]) == 2
    err = capsys.readouterr().err
    assert ("the val split holds images of 1 class only, so every score on it would be "
            "perfect; no image there of 'dog' (train 1, val 0, test 0)") in err
    assert records() == []


def test_a_class_absent_from_a_split_is_named(tmp_path, capsys):
    from bench.cli import main

    root = _folder(tmp_path / "tree", {"cat": 12, "dog": 12, "emu": 1})
    assert main(["run", "--task", f"folder:{root}", *FAST, "--epochs", "2", "--lrs", "1e-2",
                 "--wds", "0"]) == 0
    err = capsys.readouterr().err
    for split in ("val", "test"):
        assert (f"note: task 'folder:{root}': the {split} split has no image of 1 class: "
                "'emu' (train 1, val 0, test 0); its scores leave it out") in err
    assert len(records()) == 1


@pytest.mark.parametrize("head", ["linear", "logreg", "knn", "few-shot"])
def test_the_library_refuses_labels_of_fewer_than_two_classes_in_any_split(head):
    from bench.precision import FP32
    from bench.protocol import ProbeData, evaluate, head_kind

    rng = np.random.default_rng(0)
    x = {s: rng.normal(size=(30, 4)).astype(np.float32) for s in ("train", "val", "test")}
    kind = head_kind(head)
    trainer = kind.make_trainer(kind.make_config({}, 0), "cpu", FP32, False)
    items = [str(i) for i in range(30)]
    one = {s: np.zeros(30, int) for s in x}
    with pytest.raises(UsageError, match="1 class: a classification task needs at least 2"):
        evaluate(trainer, ProbeData(x, one, 1, items))
    two = {"train": np.arange(30) % 2, "val": np.arange(30) % 2, "test": np.ones(30, int)}
    with pytest.raises(UsageError, match=r"the test split holds images of 1 class \(1\) only"):
        evaluate(trainer, ProbeData(x, two, 2, items))
