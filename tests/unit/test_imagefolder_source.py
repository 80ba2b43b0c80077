"""The ImageFolder source (and Tiny-ImageNet's val layout), read without Ray, locally and on memory://."""

import io
import uuid

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from srel_ray.config import DataConfig
from srel_ray.data.imagefolder import ImageFolderData
from srel_ray.errors import DataError

CLASSES = ["n02", "n01", "n03"]  # folder names; the class order is their sorted order


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tree(fs, root: str, tiny: bool = False, corrupt: bool = False) -> dict:
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "val"):
        for c, cls in enumerate(CLASSES):
            for i in range(3):
                img = rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
                if split == "val" and tiny:
                    path = f"{root}/val/images/{cls}_{i}.png"
                else:
                    sub = f"{cls}/images" if split == "train" else cls
                    path = f"{root}/{split}/{sub}/{i}.png"
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                fs.pipe_file(path, _png(img))
                written[path] = (img.transpose(2, 0, 1), cls)
    if tiny:
        lines = [f"{cls}_{i}.png\t{cls}\t0\t0\t9\t9" for cls in CLASSES for i in range(3)]
        fs.pipe_file(f"{root}/val/val_annotations.txt", "\n".join(lines).encode())
    if corrupt:
        fs.pipe_file(f"{root}/train/n01/images/broken.png", b"not a png")
    return written


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
    else:
        url = f"memory://folder-{uuid.uuid4().hex}"
        yield url
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(path, recursive=True)


@pytest.mark.parametrize("tiny", [False, True])
def test_class_order_labels_and_images(root, tiny):
    fs, path = fsspec.core.url_to_fs(root)
    written = _tree(fs, path, tiny=tiny)
    data = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=10))
    assert data.class_names == ["n01", "n02", "n03"]
    train_labels = data.labels("train")
    train_paths = data.paths_at("train", range(len(train_labels)))
    assert len(train_paths) == 9 and sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for p, label in zip(train_paths, train_labels):
        assert data.class_names[label] == written[p][1]
    test_labels = data.labels("test")
    assert len(test_labels) == 9
    x = data.images_at("test", torch.tensor([4, 0]))
    for row, i in enumerate([4, 0]):
        expected, cls = written[data.paths_at("test", [i])[0]]
        assert np.array_equal(x[row].numpy(), expected) and data.class_names[test_labels[i]] == cls
    streamed = torch.cat([y for _, y in data.batches("test", 4)])
    assert torch.equal(streamed, test_labels)


def test_corrupt_images_are_counted_in_streams_and_named_when_needed(tmp_path):
    _tree(fsspec.filesystem("file"), str(tmp_path), corrupt=True)
    data = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=10))
    assert len(data.labels("train")) == 10
    assert sum(len(y) for _, y in data.batches("train", 4)) == 9  # the broken file is dropped from the stream
    broken = data.paths_at("train", range(10)).index(f"{tmp_path}/train/n01/images/broken.png")
    with pytest.raises(DataError, match="unreadable image: .*broken.png"):
        data.images_at("train", torch.tensor([broken]))


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no train/ folder"):
        ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path)))
    fs = fsspec.filesystem("file")
    _tree(fs, str(tmp_path))
    fs.makedirs(f"{tmp_path}/val/n99", exist_ok=True)
    fs.pipe_file(f"{tmp_path}/val/n99/0.png", _png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="class folder 'n99' that train/ does not have"):
        ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path)))
    assert not fs.exists(f"{tmp_path}/.srel_ray_index/train")  # found before any class folder was listed


def _flat_val(fs, root: str, labels: dict[str, str]) -> None:
    """ImageNet's official val/: every image in one folder, named ILSVRC2012_val_<n>.JPEG."""
    for image_id in labels:
        fs.makedirs(f"{root}/val", exist_ok=True)
        fs.pipe_file(f"{root}/val/{image_id}.JPEG", _png(np.full((6, 6, 3), 7, np.uint8)))


def _train_only(fs, root: str) -> None:
    _tree(fs, root)
    fs.rm(f"{root}/val", recursive=True)


VAL_LABELS = {"ILSVRC2012_val_00000001": "n03", "ILSVRC2012_val_00000002": "n01", "ILSVRC2012_val_00000003": "n03"}


def test_flat_val_with_kaggle_csv(root):
    fs, path = fsspec.core.url_to_fs(root)
    _train_only(fs, path)
    _flat_val(fs, path, VAL_LABELS)
    rows = [f"{i},{wnid} 1 2 5 5 {wnid} 0 0 3 3" for i, wnid in VAL_LABELS.items()]
    fs.pipe_file(f"{path}/LOC_val_solution.csv", ("ImageId,PredictionString\n" + "\n".join(rows) + "\n").encode())
    data = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=6))
    labels = data.labels("test")
    paths = data.paths_at("test", range(len(labels)))
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"{i}.JPEG" for i in VAL_LABELS]
    assert [data.class_names[i] for i in labels] == list(VAL_LABELS.values())
    assert data.images_at("test", torch.tensor([1])).shape == (1, 3, 6, 6)


def _devkit(tmp_path, ids: list[int]) -> str:
    """The ILSVRC2012 devkit's data/: ground truth (ILSVRC2012_IDs, one a line) and meta.mat mapping ids to wnids.
    The ids deliberately differ from the sorted-wnid order."""
    import scipy.io

    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for row, (ilsvrc_id, wnid) in enumerate([(1, "n03"), (2, "n01"), (3, "n02")]):
        synsets[row] = (ilsvrc_id, wnid, wnid, 0)
    data = tmp_path / "devkit" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    return str(data / "ILSVRC2012_validation_ground_truth.txt")


def test_flat_val_with_devkit_ground_truth(tmp_path):
    fs = fsspec.filesystem("file")
    _train_only(fs, str(tmp_path))
    _flat_val(fs, str(tmp_path), VAL_LABELS)
    truth = _devkit(tmp_path, [1, 2, 1])  # n03, n01, n03 as VAL_LABELS
    data = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=6, val_labels=truth))
    assert [data.class_names[i] for i in data.labels("test")] == list(VAL_LABELS.values())


@pytest.mark.parametrize("case", ["no labels file", "unknown wnid", "missing image"])
def test_flat_val_errors_name_file_and_key(tmp_path, case):
    fs = fsspec.filesystem("file")
    _train_only(fs, str(tmp_path))
    _flat_val(fs, str(tmp_path), VAL_LABELS)
    rows = {"no labels file": None, "unknown wnid": "ILSVRC2012_val_00000002,n99 0 0 1 1",
            "missing image": "ILSVRC2012_val_00000009,n01 0 0 1 1"}[case]
    if rows:
        (tmp_path / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\n{rows}\n")
    message = {"no labels file": "holds images but no class folders, and its labels file .*LOC_val_solution.csv",
               "unknown wnid": "LOC_val_solution.csv': image 'ILSVRC2012_val_00000002' has class 'n99' that train/",
               "missing image": "names image 'ILSVRC2012_val_00000009', which is not in"}[case]
    with pytest.raises(DataError, match=message):
        ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path)))


def test_test_transform_resizes_the_short_side_then_crops_the_centre(tmp_path):
    """ImageNet's evaluation transform (torchvision weights: resize 256, centre crop 224), at 8 px from 10 x 20."""
    fs = fsspec.filesystem("file")
    _train_only(fs, str(tmp_path))
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 5:15] = 255  # a white centre band, half the width
    fs.makedirs(f"{tmp_path}/val/n01", exist_ok=True)
    fs.pipe_file(f"{tmp_path}/val/n01/0.png", _png(wide))
    cropped = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8, test_resize=10))
    squashed = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8, test_resize=0))
    x = cropped.images_at("test", torch.tensor([0]))[0]
    assert x.shape == (3, 8, 8) and bool((x[:, 1:-1, 1:-1] == 255).all())  # the centre 8 of the 10 x 20 image
    assert int(squashed.images_at("test", torch.tensor([0]))[0, 0, 4, 0]) == 0  # squashed: the dark border stays
    assert torch.equal(cropped.images_at("train", torch.tensor([0])), squashed.images_at("train", torch.tensor([0])))


def _many_classes(fs, root: str, classes: list[str], per_class: int = 2) -> None:
    image = _png(np.zeros((2, 2, 3), np.uint8))
    for cls in classes:
        for split in ("train", "val"):
            fs.makedirs(f"{root}/{split}/{cls}", exist_ok=True)
            for i in range(per_class):
                fs.pipe_file(f"{root}/{split}/{cls}/{i}.png", image)


def _sequential_listing(fs, root: str, folder: str) -> tuple[list[str], list[int]]:
    """What listing the tree one file after another gives: every image path, sorted, with its folder's class."""
    classes = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/train", detail=False))
    paths = sorted(p for p in fs.find(f"{root}/{folder}") if p.endswith(".png"))
    return paths, [classes.index(p[len(root) + len(folder) + 2:].split("/", 1)[0]) for p in paths]


@pytest.mark.parametrize("part_classes", [1, 4])
def test_the_index_is_the_sequential_listing_made_in_parts_and_kept(root, part_classes, monkeypatch):
    """The tree is listed a part of its class folders at a time into an index beside the data; the parts
    concatenated equal a sequential listing (path order across classes, as 'a-b' sorts before 'a/', also when the
    two are parts of their own), and the next open reads it instead of listing."""
    from srel_ray.data import folder_index

    monkeypatch.setattr(folder_index, "PART_CLASSES", part_classes)
    fs, path = fsspec.core.url_to_fs(root)
    classes = [f"n{c:03d}" for c in range(40)] + ["a", "a-b"]
    _many_classes(fs, path, classes)
    data = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=2))
    for split, folder in (("test", "val"), ("train", "train")):
        paths, labels = _sequential_listing(fs, path, folder)
        assert data.paths_at(split, range(len(paths))) == paths and data.labels(split).tolist() == labels
    assert data.paths_at("train", [83, 0, 41]) == [paths[i] for i in (83, 0, 41)]
    assert paths[0].endswith("train/a-b/0.png") and data.labels("train")[:2].tolist() == [1, 1]
    index = f"{path}/.srel_ray_index"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(index, detail=False)) == ["index.json", "test", "train"]
    parts = -(-42 // part_classes)
    assert data.index.part_rows("train") == data.index.part_rows("test") == [2 * part_classes] * (parts - 1) + [
        84 - 2 * part_classes * (parts - 1)]
    listed = fs.cat_file(f"{index}/train/part-00000.parquet")

    fs.pipe_file(f"{path}/train/n000/9.png", _png(np.zeros((2, 2, 3), np.uint8)))  # the class list is the same
    again = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=2))
    assert len(again.labels("train")) == 84  # read from the index: the new file is not listed
    assert fs.cat_file(f"{index}/train/part-00000.parquet") == listed

    _many_classes(fs, path, ["n999"])  # a new class folder: the index is listed again, the old parts replaced
    monkeypatch.setattr(folder_index, "PART_CLASSES", 43)
    grown = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=2))
    assert grown.num_classes == 43 and len(grown.labels("train")) == 87
    assert grown.paths_at("train", range(87)) == _sequential_listing(fs, path, "train")[0]
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{index}/train", detail=False)] == ["part-00000.parquet"]


def test_the_index_can_live_in_a_folder_of_its_own(tmp_path):
    fs = fsspec.filesystem("file")
    _tree(fs, str(tmp_path / "data"))
    cfg = DataConfig(name="imagefolder", path=str(tmp_path / "data"), image_size=10, index=str(tmp_path / "idx"))
    data = ImageFolderData(cfg)
    assert (tmp_path / "idx" / "index.json").exists() and not (tmp_path / "data" / ".srel_ray_index").exists()
    assert torch.equal(ImageFolderData(cfg).images_at("train", [8, 1]), data.images_at("train", [8, 1]))


def test_a_row_range_is_read_from_the_row_groups_that_hold_it(root, monkeypatch):
    """What a Ray read task of a split reads: a range of the index's rows, across row groups, in index order; the
    ranges tile the split as ray.data.from_items splits its items into blocks (the first ones a row longer); a
    worker opens a file at the URL prefix and its index path."""
    from srel_ray.data import file_index, folder_index
    from srel_ray.distributed.datasets import block_ranges

    assert file_index.group_spans([4, 4, 2], 3, 9) == [(0, 3, 4), (1, 0, 4), (2, 0, 1)]
    assert file_index.group_spans([4, 4, 2], 4, 8) == [(1, 0, 4)]
    assert file_index.group_spans([4, 4, 2], 9, 10) == [(2, 1, 2)]
    assert block_ranges(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert block_ranges(500, 200) == [(3 * i, 3 * i + 3) for i in range(100)] + [
        (300 + 2 * i, 302 + 2 * i) for i in range(100)]

    monkeypatch.setattr(file_index, "ROW_GROUP", 4)
    monkeypatch.setattr(folder_index, "PART_CLASSES", 3)
    fs, path = fsspec.core.url_to_fs(root)
    _many_classes(fs, path, [f"n{c}" for c in range(5)])  # 10 training images, 2 a class
    data = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=2))
    assert data.index.part_rows("train") == [6, 4]
    groups = []
    for part in (0, 1):
        with data.fs.open(data.index.part_file("train", part), "rb") as f:
            meta = pq.ParquetFile(f).metadata
            groups.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    assert groups == [[4, 2], [4]]  # rows 0-3, 4-5 | 6-9: the ranges below cross groups and parts
    tables = [data.index.rows("train", start, stop, ["path", "label"]) for start, stop in block_ranges(10, 4)]
    assert [len(t) for t in tables] == [3, 3, 2, 2]
    relative = [p for t in tables for p in t.column("path").to_pylist()]
    assert [f"{path}/{p}" for p in relative] == data.paths_at("train", range(10))
    assert [v for t in tables for v in t.column("label").to_pylist()] == data.labels("train").tolist()
    url = data.url_prefix() + relative[5]
    assert url.startswith("memory://" if root.startswith("memory://") else "/")
    assert fsspec.open(url, "rb").open().read() == fs.cat_file(f"{path}/{relative[5]}")
