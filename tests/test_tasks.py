"""Each dataset task on a tiny tree written in its real layout: splits, labels, verify, bad files."""

from __future__ import annotations

import io
import os
import pickle
import random
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from bench.registry import tasks
from bench.task import CorruptImageError, holdout_split


def jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=80)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def check_splits(task, sizes: dict[str, int], num_classes: int) -> None:
    assert task.verify() == []
    for name, size in sizes.items():
        split = task.split(name)
        assert len(split) == size, name
        assert all(isinstance(i, str) and not os.path.isabs(i) for i in split.items)
        assert split.labels.min() >= 0 and split.labels.max() < num_classes
    assert task.num_classes == num_classes == len(task.class_names)
    assert task.split("train").load(0).mode == "RGB"


def check_bad_files(task, directory: Path, missing: str, corrupt: str) -> None:
    """A deleted image fails the cheap verify, a truncated one --full and loading, both by name."""
    (directory / missing).unlink()
    truncate(directory / corrupt)
    fresh = tasks.create(task.name, **task.kwargs)
    problems = fresh.verify()
    assert any(str(directory / missing) in p and "missing image file" in p for p in problems)
    assert not any(str(directory / corrupt) in p for p in problems)
    full = fresh.verify(full=True)
    assert any(str(directory / corrupt) in p and "cannot decode" in p for p in full)
    with pytest.raises(CorruptImageError, match=str(directory / corrupt)):
        fresh.load(corrupt)


def create(name: str, **kwargs):
    task = tasks.create(name, **kwargs)
    task.kwargs = kwargs
    return task


# --- CUB-200-2011 -----------------------------------------------------------------------------


def cub_tree(root: Path, shuffle_lines: bool = False) -> list[tuple[int, str, int, int]]:
    """3 classes x 10 images (6 train, 4 test); returns (id, path, label, is_train) rows."""
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    rows = []
    for c, cls in enumerate(classes):
        for i in range(10):
            image_id = len(rows) + 1
            path = f"{cls}/{cls[4:]}_{i:04d}.jpg"
            rows.append((image_id, path, c + 1, int(i < 6)))
            jpeg(base / "images" / path, image_id)
    lines = list(rows)
    if shuffle_lines:
        random.Random(1).shuffle(lines)
    write(base / "images.txt", [f"{i} {p}" for i, p, _, _ in lines])
    write(base / "image_class_labels.txt", [f"{i} {c}" for i, _, c, _ in lines])
    write(base / "train_test_split.txt", [f"{i} {t}" for i, _, _, t in lines])
    write(base / "classes.txt", [f"{c + 1} {name}" for c, name in enumerate(classes)])
    return rows


CUB_COUNTS = {"classes": 3, "train": 18, "test": 12}


def test_cub(tmp_path):
    rows = cub_tree(tmp_path)
    task = create("cub", root=str(tmp_path), expected_counts=CUB_COUNTS)
    check_splits(task, {"train": 15, "val": 3, "test": 12}, 3)
    assert task.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    test = task.split("test")
    expected = [(f"images/{p}", c - 1) for _, p, c, t in rows if not t]
    assert list(zip(test.items, test.labels.tolist())) == expected  # official order, 0-based
    assert task.config["val"] == "holdout 0.1 of train"
    check_bad_files(task, task.dir, f"images/{rows[0][1]}", f"images/{rows[-1][1]}")


def test_cub_wrong_count_and_bad_list(tmp_path):
    cub_tree(tmp_path)
    problems = tasks.create("cub", root=str(tmp_path)).verify()  # official counts
    assert any("found 18 train images" in p and "5,994" in p for p in problems)
    assert any("found 3 classes" in p and "200" in p for p in problems)
    base = tmp_path / "CUB_200_2011"
    write(base / "train_test_split.txt", ["1 1"])
    problems = tasks.create("cub", root=str(tmp_path), expected_counts=None).verify()
    assert problems and "train_test_split.txt has no line for image id 2" in problems[0]
    (base / "classes.txt").unlink()
    problems = tasks.create("cub", root=str(tmp_path)).verify()
    fix = "Run `bench data download --task cub` (it re-fetches what is missing)."
    assert problems == [f"cub: missing {base / 'classes.txt'}. {fix}"]


# --- Flowers-102 ------------------------------------------------------------------------------


def test_flowers(tmp_path):
    base = tmp_path / "flowers-102"
    labels = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]  # image i has labels[i - 1]
    for i in range(1, 13):
        jpeg(base / f"jpg/image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    ids = {"trnid": [9, 1, 5], "valid": [2, 6, 10], "tstid": [12, 3, 4, 7, 8, 11]}
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    counts = {"classes": 3, "train": 3, "val": 3, "test": 6}
    task = create("flowers", root=str(tmp_path), expected_counts=counts)
    check_splits(task, {"train": 3, "val": 3, "test": 6}, 3)
    train = task.split("train")
    assert train.items == ["jpg/image_00009.jpg", "jpg/image_00001.jpg", "jpg/image_00005.jpg"]
    assert train.labels.tolist() == [2, 0, 1]
    assert task.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert task.headline_metric == "mean_per_class" and task.config["val"] == "official"
    # the tiny .mat files are not the published ones: --full names them by their md5
    full = task.verify(full=True)
    assert any("imagelabels.mat has md5" in p and "e0620be6f572b9609742df49c70aed4d" in p for p in full)
    check_bad_files(task, base, "jpg/image_00012.jpg", "jpg/image_00009.jpg")


# --- FGVC-Aircraft ----------------------------------------------------------------------------


def test_aircraft(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "F/A-18", "Cessna 172"]
    write(data / "variants.txt", variants)
    image_id = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for v in variants:
            for _ in range(2):
                image_id += 1
                jpeg(data / f"images/{image_id}.jpg", image_id, size=(60, 50))
                lines.append(f"{image_id} {v}")
        write(data / f"images_variant_{split}.txt", lines)
    counts = {"classes": 3, "train": 6, "val": 6, "test": 6}
    task = create("aircraft", root=str(tmp_path), expected_counts=counts)
    check_splits(task, {"train": 6, "val": 6, "test": 6}, 3)
    assert task.split("val").labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert task.class_names == variants
    assert task.split("train").load(0).size == (60, 30)  # 20 px banner cropped
    uncropped = tasks.create("aircraft", root=str(tmp_path), crop_banner=False, expected_counts=counts)
    assert uncropped.split("train").load(0).size == (60, 50)
    assert task.config["crop_banner"] is True and uncropped.config["crop_banner"] is False
    write(data / "images_variant_test.txt", ["1000013 Boeing 747-400"])
    problems = tasks.create("aircraft", root=str(tmp_path), expected_counts=None).verify()
    assert "variant 'Boeing 747-400' of image 1000013 is not in data/variants.txt" in problems[0]


def test_aircraft_bad_files(tmp_path):
    test_aircraft(tmp_path)
    write(tmp_path / "fgvc-aircraft-2013b/data/images_variant_test.txt", ["1000013 707-320"])
    task = create("aircraft", root=str(tmp_path), expected_counts=None)
    check_bad_files(task, task.dir, "data/images/1000001.jpg", "data/images/1000013.jpg")


# --- Stanford Cars ----------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "Tesla Model S 2012"]


def cars_rows(split: str) -> list[tuple[str, int]]:
    """(file name, 1-based class): 10 train / 4 test images per class, names as in the devkit."""
    per_class = 10 if split == "train" else 4
    return [(f"{i * 3 + c + 1:05d}.jpg", c + 1) for i in range(per_class) for c in range(3)]


def annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("fname", "O")]
    return np.array([[(1, 1, 30, 30, c, f) for f, c in rows]], dtype=dtype)


def cars_torchvision_tree(root: Path) -> Path:
    base = root / "stanford_cars"
    for split in ("train", "test"):
        for fname, c in cars_rows(split):
            jpeg(base / f"cars_{split}" / fname, c)
    (base / "devkit").mkdir()
    savemat(base / "devkit/cars_meta.mat", {"class_names": np.array([CAR_NAMES], dtype=object)})
    savemat(base / "devkit/cars_train_annos.mat", {"annotations": annotations(cars_rows("train"))})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations(cars_rows("test"))})
    return base


def cars_kaggle_tree(root: Path) -> Path:
    base = root / "stanford-car-dataset-by-classes-folder"
    write(base / "names.csv", CAR_NAMES)
    for split in ("train", "test"):
        rows = cars_rows(split)
        write(base / f"anno_{split}.csv", [f"{f},1,1,30,30,{c}" for f, c in rows])
        for fname, c in rows:
            jpeg(base / "car_data/car_data" / split / CAR_NAMES[c - 1].replace("/", "-") / fname, c)
    return base


CARS_COUNTS = {"classes": 3, "train": 30, "test": 12}


def test_cars_torchvision_layout(tmp_path):
    base = cars_torchvision_tree(tmp_path)
    task = create("cars", root=str(tmp_path), expected_counts=CARS_COUNTS)
    check_splits(task, {"train": 27, "val": 3, "test": 12}, 3)
    assert task.class_names == CAR_NAMES and task.config["layout"] == "stanford_cars"
    test = task.split("test")
    assert test.items[:2] == ["cars_test/00001.jpg", "cars_test/00002.jpg"]
    assert test.labels.tolist() == [c - 1 for _, c in cars_rows("test")]
    check_bad_files(task, base, "cars_train/00004.jpg", "cars_test/00012.jpg")


def test_cars_kaggle_layout_gives_the_same_splits(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cars_torchvision_tree(tmp_path / "a")
    base = cars_kaggle_tree(tmp_path / "b")
    ours = create("cars", root=str(tmp_path / "b"), expected_counts=CARS_COUNTS)
    theirs = tasks.create("cars", root=str(tmp_path / "a"), expected_counts=CARS_COUNTS)
    check_splits(ours, {"train": 27, "val": 3, "test": 12}, 3)
    assert ours.config["layout"] == "stanford-car-dataset-by-classes-folder"
    for split in ("train", "val", "test"):
        a, b = ours.split(split), theirs.split(split)
        assert [i.rsplit("/", 1)[1] for i in a.items] == [i.rsplit("/", 1)[1] for i in b.items]
        assert a.labels.tolist() == b.labels.tolist()
    ram = f"car_data/car_data/train/{CAR_NAMES[1].replace('/', '-')}/00002.jpg"
    (base / ram).unlink()
    problems = tasks.create("cars", root=str(tmp_path / "b")).verify()
    assert "1 image(s) listed in" in problems[0] and "anno_train.csv" in problems[0]
    assert "00002.jpg" in problems[0]


def test_cars_without_data_explains_where_to_get_it(tmp_path):
    [problem] = tasks.create("cars", root=str(tmp_path)).verify()
    assert "official URL is dead" in problem and "jutrera/stanford-car-dataset-by-classes-folder" in problem
    assert "cars_test_annos_withlabels.mat" in problem


# --- ImageNet ---------------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850"]


def imagenet_images(root: Path) -> None:
    for c, wnid in enumerate(WNIDS):
        for i in range(10):
            jpeg(root / f"train/{wnid}/{wnid}_{i}.JPEG", c * 100 + i)
        for i in range(2):
            jpeg(root / f"val/{wnid}/ILSVRC2012_val_{c * 2 + i + 1:08d}.JPEG", 1000 + c * 2 + i)


IMAGENET_COUNTS = {"classes": 3, "train": 30, "test": 6}


def test_imagenet_folders(tmp_path):
    imagenet_images(tmp_path / "imagenet")
    task = create("imagenet", root=str(tmp_path), expected_counts=IMAGENET_COUNTS)
    check_splits(task, {"train": 27, "val": 3, "test": 6}, 3)
    assert task.class_names == WNIDS  # no meta.bin: WordNet ids
    assert task.split("test").items[0] == f"val/{WNIDS[0]}/ILSVRC2012_val_00000001.JPEG"
    elsewhere = tasks.create(f"imagenet:{tmp_path / 'imagenet'}", expected_counts=IMAGENET_COUNTS)
    assert elsewhere.split("val").items == task.split("val").items
    problems = tasks.create("imagenet", root=str(tmp_path)).verify()
    assert any("found 6 val/ images (the official val, our test)" in p and "50,000" in p
               for p in problems)
    corrupt = f"train/{WNIDS[2]}/{WNIDS[2]}_9.JPEG"
    truncate(tmp_path / "imagenet" / corrupt)
    full = tasks.create("imagenet", root=str(tmp_path), expected_counts=None).verify(full=True)
    assert len(full) == 1 and corrupt in full[0]


def _tar(path: Path, files: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_imagenet_torchvision_archives(tmp_path, monkeypatch):
    """The devkit + tars layout is unpacked by `bench data download` through torchvision."""
    from torchvision.datasets import imagenet as tv

    from bench.features import data
    source, folder = tmp_path / "src", tmp_path / "imagenet"
    imagenet_images(source)
    folder.mkdir()
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    synsets = np.array([(i + 1, w, f"name{i}, other", "gloss", 0, np.zeros(0), 0, 10)
                        for i, w in enumerate(WNIDS)], dtype=[(f, "O") for f in fields])
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    val_files = sorted((source / "val").glob("*/*.JPEG"), key=lambda p: p.name)
    truth = "".join(f"{WNIDS.index(p.parent.name) + 1}\n" for p in val_files).encode()
    _tar(folder / "ILSVRC2012_devkit_t12.tar.gz", {
        "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth,
    }, "w:gz")
    _tar(folder / "ILSVRC2012_img_val.tar", {p.name: p.read_bytes() for p in val_files})
    for wnid in WNIDS:
        _tar(tmp_path / f"{wnid}.tar",
             {p.name: p.read_bytes() for p in (source / "train" / wnid).iterdir()})
    _tar(folder / "ILSVRC2012_img_train.tar",
         {f"{w}.tar": (tmp_path / f"{w}.tar").read_bytes() for w in WNIDS})
    from bench.features.weights import file_digests

    official = dict(tv.ARCHIVE_META)  # the real archives' md5s: our tiny archives differ
    for key, (name, _) in official.items():
        monkeypatch.setitem(tv.ARCHIVE_META, key, (name, file_digests(folder / name)["md5"]))

    [problem] = tasks.create("imagenet", root=str(tmp_path)).verify()
    assert "not unpacked yet" in problem
    assert data.download("imagenet", tmp_path, expected_counts=IMAGENET_COUNTS) == []
    assert not list(folder.glob(".*.partial"))
    task = tasks.create("imagenet", root=str(tmp_path), expected_counts=IMAGENET_COUNTS)
    check_splits(task, {"train": 27, "val": 3, "test": 6}, 3)
    assert task.class_names == ["name0", "name1", "name2"]  # from torchvision's meta.bin
    assert task.verify(full=True) == []  # archive md5s (patched) and every image
    # The check can fail: against the official md5, our tiny devkit archive is named as damaged.
    monkeypatch.setitem(tv.ARCHIVE_META, "devkit", official["devkit"])
    [damaged] = task.verify(full=True)
    assert "ILSVRC2012_devkit_t12.tar.gz has md5" in damaged and official["devkit"][1] in damaged


# --- folder:PATH ------------------------------------------------------------------------------


def test_folder_layouts(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        for c in ("cat", "dog"):
            for i in range(n):
                jpeg(tmp_path / "tree" / split / c / f"{i}.png", i)
    task = tasks.create(f"folder:{tmp_path / 'tree'}")
    check_splits(task, {"train": 18, "val": 2, "test": 6}, 2)
    assert task.class_names == ["cat", "dog"] and task.config["layout"] == "train/test"
    jpeg(tmp_path / "tree/test/bird/0.png")
    assert "classes that train/ lacks: bird" in tasks.create(f"folder:{tmp_path / 'tree'}").verify()[0]
    flat = tasks.create(f"folder:{tmp_path / 'tree' / 'train'}")
    check_splits(flat, {"train": 14, "val": 2, "test": 4}, 2)
    assert flat.config["layout"] == "flat"
    assert "is not a folder" in tasks.create(f"folder:{tmp_path / 'nothing'}").verify()[0]


# --- torchvision-layout sets ------------------------------------------------------------------


def test_cifar10_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 10) for i in range(1, 6)), ("test_batch", 10)]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    counts = {"classes": 10, "train": 50, "test": 10}
    task = tasks.create("cifar10", root=str(tmp_path), expected_counts=counts)
    check_splits(task, {"train": 40, "val": 10, "test": 10}, 10)
    assert task.split("test").load(3).size == (32, 32)
    (base / "test_batch").write_bytes(b"\x80\x04broken")
    problems = tasks.create("cifar10", root=str(tmp_path)).verify()
    assert str(base / "test_batch") in problems[0] and "cannot read" in problems[0]



class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar10_tree(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(10)]}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))  # as the official files
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return base


def test_cifar_batch_that_would_run_code_is_refused_unrun(tmp_path):
    base = cifar10_tree(tmp_path)
    marker = tmp_path / "ran"
    batch = {"data": np.zeros((10, 3072), np.uint8), "labels": _RunsCode(marker)}
    (base / "data_batch_1").write_bytes(pickle.dumps(batch))
    problems = tasks.create("cifar10", root=str(tmp_path)).verify()
    assert not marker.exists()
    assert str(base / "data_batch_1") in problems[0] and "would run code" in problems[0]


def test_cifar_batch_rewritten_under_the_old_mtime_changes_the_split_digest(tmp_path):
    base = cifar10_tree(tmp_path)

    def batch(value: int) -> bytes:
        return pickle.dumps({"data": np.full((10, 3072), value, np.uint8),
                             "labels": [i % 10 for i in range(10)]}, protocol=4)

    (base / "test_batch").write_bytes(batch(0))
    counts = {"classes": 10, "train": 50, "test": 10}
    before = tasks.create("cifar10", root=str(tmp_path), expected_counts=counts)
    digest = before.split("test").manifest_digest()
    stat = (base / "test_batch").stat()
    time.sleep(0.05)  # past the kernel's coarse clock tick, so ctime moves
    with open(base / "test_batch", "r+b") as f:  # in place: same inode, same size
        f.write(batch(1))
    os.utime(base / "test_batch", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = tasks.create("cifar10", root=str(tmp_path), expected_counts=counts)
    assert after.split("test").manifest_digest() != digest
    assert after.split("train").manifest_digest() == before.split("train").manifest_digest()

def test_dtd_pets_food(tmp_path):
    dtd = tmp_path / "dtd/dtd"
    for s in ("train", "val", "test"):
        lines = [f"{c}/{c}_{s}{i}.jpg" for c in ("banded", "zigzagged") for i in range(2)]
        write(dtd / f"labels/{s}2.txt", lines)
        for line in lines:
            jpeg(dtd / "images" / line)
    task = tasks.create("dtd", root=str(tmp_path), partition=2, expected_counts=None)
    check_splits(task, {"train": 4, "val": 4, "test": 4}, 2)
    assert task.config["partition"] == 2 and task.config["val"] == "official"

    pets = tmp_path / "oxford-iiit-pet"
    for s, n in (("trainval", 10), ("test", 2)):
        ids = [f"{breed}_{s}{i}" for breed in ("Abyssinian", "american_bulldog") for i in range(n)]
        write(pets / f"annotations/{s}.txt",
              [f"{i} {1 + ('bulldog' in i)} {1 + ('bulldog' in i)} 1" for i in ids])
        for i in ids:
            jpeg(pets / f"images/{i}.jpg")
    task = tasks.create("pets", root=str(tmp_path), expected_counts={"train": 20, "test": 4})
    check_splits(task, {"train": 18, "val": 2, "test": 4}, 2)
    assert task.class_names == ["Abyssinian", "American Bulldog"]
    problems = tasks.create("pets", root=str(tmp_path)).verify()
    assert any("found 20 trainval images" in p and "3,680" in p for p in problems)

    food = tmp_path / "food-101"
    write(food / "meta/classes.txt", ["apple_pie", "baby_back_ribs"])
    for s, n in (("train", 10), ("test", 3)):
        lines = [f"{c}/{s}{i}" for c in ("apple_pie", "baby_back_ribs") for i in range(n)]
        write(food / f"meta/{s}.txt", lines)
        for line in lines:
            jpeg(food / f"images/{line}.jpg")
    task = tasks.create("food101", root=str(tmp_path), expected_counts=None)
    check_splits(task, {"train": 18, "val": 2, "test": 6}, 2)


# --- validation holdouts ----------------------------------------------------------------------


def test_holdout_is_disjoint_balanced_and_order_independent(tmp_path):
    cub_tree(tmp_path / "a")
    cub_tree(tmp_path / "b", shuffle_lines=True)  # same files, list lines in another order
    a = tasks.create("cub", root=str(tmp_path / "a"), expected_counts=CUB_COUNTS)
    b = tasks.create("cub", root=str(tmp_path / "b"), expected_counts=CUB_COUNTS)
    for split in ("train", "val", "test"):
        assert a.split(split).items == b.split(split).items
        # (digests differ: they cover each file's mtime, and the trees were written apart)
        assert a.split(split).labels.tolist() == b.split(split).labels.tolist()
    train, val, test = (set(a.split(s).items) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert np.bincount(a.split("val").labels).tolist() == [1, 1, 1]

    items = [f"class{c}/img{i:03d}.jpg" for c in range(4) for i in range(50)]
    labels = [c for c in range(4) for _ in range(50)]
    _, val_idx = holdout_split(items, labels)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    _, shuffled_idx = holdout_split([items[i] for i in order], [labels[i] for i in order])
    assert {items[i] for i in val_idx} == {items[order[i]] for i in shuffled_idx}
    assert np.bincount([labels[i] for i in val_idx]).tolist() == [5, 5, 5, 5]
    # pinned: the rule (sha256 of "bench-val/" + name) must not drift between machines or versions
    assert [items[i] for i in val_idx[:5]] == [
        "class0/img014.jpg", "class0/img016.jpg", "class0/img035.jpg", "class0/img037.jpg",
        "class0/img041.jpg",
    ]
