"""The WebDataset source: tar shards written with the ``webdataset`` package, read without Ray."""

import io

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from srel_ray.config import DataConfig
from srel_ray.data.imagenet_classes import synsets
from srel_ray.data.real import load_dataset
from srel_ray.errors import DataError

CLASSES = ["n01440764", "n01443537", "n01484850"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(root, split: str, n: int, seed: int, shards: int = 1, label="cls", ext="png", labels=None,
                 prefix="imagenet") -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples over ``shards`` tars named <prefix>-<split>-<i>.tar, as the webdataset package writes them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(n) % len(CLASSES) if labels is None else np.asarray(labels)
    per = -(-n // shards)
    for s in range(shards):
        with webdataset.TarWriter(str(root / f"{prefix}-{split}-{s:04d}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                sample = {"__key__": f"{split}_{i:06d}", ext: _png(images[i])}
                if label == "cls":
                    sample["cls"] = int(labels[i])
                elif label == "cls text":
                    sample["cls"] = "tench"  # a class name where the index belongs
                elif label == "json":
                    sample["json"] = {"label": int(labels[i]), "width": 12}
                sink.write(sample)
    return images.transpose(0, 3, 1, 2), labels


def test_shards_with_a_sidecar_class_list(tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    train_images, train_labels = write_shards(tmp_path, "train", 10, 0, shards=3)
    test_images, test_labels = write_shards(tmp_path, "validation", 4, 1, label="json")
    data = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12))
    assert data.class_names == CLASSES and len(data.shards("train")) == 3
    assert torch.equal(data.labels("train"), torch.from_numpy(train_labels))
    assert torch.equal(data.images_at("train", torch.tensor([9, 0, 4])), torch.from_numpy(train_images[[9, 0, 4]]))
    streamed = list(data.batches("test", 3))
    assert torch.equal(torch.cat([x for x, _ in streamed]), torch.from_numpy(test_images))
    assert torch.equal(torch.cat([y for _, y in streamed]), torch.from_numpy(test_labels))


def test_the_first_open_keeps_an_index_that_later_opens_read(tmp_path, monkeypatch):
    """Reading a million tar headers once, not at every open (the driver's, and every task's and actor's): later
    opens read the index; a shard added or changed reads the shards again; data.index puts the index elsewhere."""
    from srel_ray.data.webdataset import WebDatasetData

    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    train_images, _ = write_shards(tmp_path, "train", 10, 0, shards=2)
    write_shards(tmp_path, "validation", 4, 1)
    cfg = DataConfig(name="webdataset", path=str(tmp_path), image_size=12)
    first = load_dataset(cfg)
    assert (tmp_path / ".srel_ray_index" / "index.json").exists()
    scanned = []
    original = WebDatasetData._scan_shard
    monkeypatch.setattr(WebDatasetData, "_scan_shard", lambda self, path: scanned.append(path) or original(self, path))
    again = load_dataset(cfg)
    assert scanned == []  # no tar was read
    for split in ("train", "test"):
        assert torch.equal(again.labels(split), first.labels(split)) and again.shards(split) == first.shards(split)
    assert torch.equal(again.images_at("train", torch.tensor([9, 0, 5])), torch.from_numpy(train_images[[9, 0, 5]]))

    write_shards(tmp_path, "train", 3, 2, prefix="more")  # a third train shard
    grown = load_dataset(cfg)
    assert len(scanned) == 4 and len(grown.labels("train")) == 13  # every shard read again, the index rewritten
    elsewhere = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12,
                                        index=str(tmp_path / "my-index")))
    assert (tmp_path / "my-index" / "train" / "part-00000.parquet").exists()
    assert torch.equal(elsewhere.labels("train"), grown.labels("train"))


def test_an_index_made_a_shard_a_part_reads_as_one_made_whole(tmp_path, monkeypatch):
    """Parts of one shard and row groups of 3 samples: labels, images at rows across parts (unordered, repeated)
    and the batch stream are those of an index of one part and one group."""
    from srel_ray.data import file_index, webdataset as wds

    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    train_images, train_labels = write_shards(tmp_path, "train", 11, 0, shards=3)  # 4, 4 and 3 samples
    write_shards(tmp_path, "validation", 4, 1)
    whole = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12, index=str(tmp_path / "a")))
    monkeypatch.setattr(wds, "PART_SHARDS", 1)
    monkeypatch.setattr(file_index, "ROW_GROUP", 3)
    parted = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12, index=str(tmp_path / "b")))
    assert parted.index.part_rows("train") == [4, 4, 3] and whole.index.part_rows("train") == [11]
    assert torch.equal(parted.labels("train"), torch.from_numpy(train_labels))
    rows = torch.tensor([10, 0, 5, 5, 3, 8])
    assert torch.equal(parted.images_at("train", rows), torch.from_numpy(train_images[rows.numpy()]))
    assert torch.equal(parted.images_at("train", rows), whole.images_at("train", rows))
    assert parted.images_at("train", torch.tensor([], dtype=torch.long)).shape == (0, 3, 12, 12)
    for a, b in zip(parted.batches("train", 5), whole.batches("train", 5), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_shards_on_a_remote_filesystem_are_read_in_parallel_into_the_same_index(tmp_path):
    """fsspec's memory filesystem stands in for an object store: shards are read by threads (local ones one at a
    time), and the index is the same."""
    import uuid

    import fsspec

    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    write_shards(tmp_path, "train", 10, 0, shards=4)
    write_shards(tmp_path, "validation", 4, 1, shards=2)
    local = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12))
    root = f"memory://wds-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for path in tmp_path.iterdir():
        if path.is_file():
            fs.pipe(f"{root}/{path.name}", path.read_bytes())
    try:
        remote = load_dataset(DataConfig(name="webdataset", path=root, image_size=12))
        assert fs.exists(f"{root}/.srel_ray_index/index.json")
        for split in ("train", "test"):
            assert torch.equal(remote.labels(split), local.labels(split))
        assert torch.equal(remote.images_at("train", torch.tensor([7, 2])), local.images_at("train", torch.tensor([7, 2])))
    finally:
        fs.rm(root, recursive=True)


def test_a_timm_synset_list_names_the_classes(tmp_path):
    write_shards(tmp_path, "train", 3, 0, labels=[0, 11819, 11820], ext="jpg")  # ImageNet-12K's last classes
    write_shards(tmp_path, "val", 1, 1, ext="jpg")
    data = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12, classes="imagenet12k"))
    assert data.num_classes == 11821 and data.class_names[11820] == synsets("imagenet12k")[-1]
    assert data.images_at("train", torch.tensor([2])).shape == (1, 3, 12, 12)  # JPEG decodes (lossy: shape only)


@pytest.mark.parametrize("case", ["no label", "label outside", "label not an index", "no class list",
                                  "no held-out shards"])
def test_bad_shards_are_named_by_file_and_key(tmp_path, case):
    if case != "no class list":
        (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    write_shards(tmp_path, "train", 4, 0, label={"no label": "none", "label not an index": "cls text"}.get(case, "cls"),
                 labels=[0, 1, 3, 2] if case == "label outside" else None)
    if case != "no held-out shards":
        write_shards(tmp_path, "validation", 2, 1)
    message = {"no label": "imagenet-train-0000.tar': sample 'train_000000' has an image but no label",
               "label outside": "imagenet-train-0000.tar': sample 'train_000002' has label 3, outside the class "
                                "list's 3 classes",
               "label not an index": "imagenet-train-0000.tar': sample 'train_000000' \\(.cls\\): label 'tench' is "
                                     "not a class index",
               "no class list": "data.classes: no class list .*classes.txt",
               "no held-out shards": "found 1 tar files, 1 of them train"}[case]
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name="webdataset", path=str(tmp_path)))
