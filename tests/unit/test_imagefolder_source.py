"""The ImageFolder source (and Tiny-ImageNet's val layout), read without Ray, locally and on memory://."""

import io
import uuid

import fsspec
import numpy as np
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
    train_paths, train_labels = data.files["train"]
    assert len(train_paths) == 9 and sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for p, label in zip(train_paths, train_labels):
        assert data.class_names[label] == written[p][1]
    test_labels = data.labels("test")
    assert len(test_labels) == 9
    x = data.images_at("test", torch.tensor([4, 0]))
    for row, i in enumerate([4, 0]):
        expected, cls = written[data.files["test"][0][i]]
        assert np.array_equal(x[row].numpy(), expected) and data.class_names[test_labels[i]] == cls
    streamed = torch.cat([y for _, y in data.batches("test", 4)])
    assert torch.equal(streamed, test_labels)


def test_corrupt_images_are_counted_in_streams_and_named_when_needed(tmp_path):
    _tree(fsspec.filesystem("file"), str(tmp_path), corrupt=True)
    data = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=10))
    assert len(data.labels("train")) == 10
    assert sum(len(y) for _, y in data.batches("train", 4)) == 9  # the broken file is dropped from the stream
    broken = data.files["train"][0].index(f"{tmp_path}/train/n01/images/broken.png")
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
