"""CIFAR-10/100 in torchvision's pickled layout, written here in miniature."""

import pickle

import numpy as np
import pytest
import torch

from srel_ray.config import DataConfig
from srel_ray.data.real import load_dataset
from srel_ray.errors import DataError


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=per_batch))
        _dump(folder / name, {b"data": data, b"labels": labels})
        batches.append((data, labels))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names]})
    return batches, names


def test_cifar10_layout(tmp_path):
    batches, names = _cifar10(tmp_path)
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_dataset(DataConfig(name="cifar", path=str(path), image_size=32))
        assert data.name == "cifar10" and data.class_names == names
        assert torch.equal(data.labels("train"), torch.tensor(sum((b[1] for b in batches[:5]), []), dtype=torch.int64))
        first = data.images_at("train", torch.tensor([0]))[0]
        assert torch.equal(first, torch.from_numpy(batches[0][0][0].reshape(3, 32, 32)))
        assert len(data.labels("test")) == 4


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        _dump(folder / name, {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                              b"fine_labels": list(range(n)), b"coarse_labels": [0] * n})
    _dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    data = load_dataset(DataConfig(name="cifar", path=str(tmp_path), image_size=16))
    assert data.name == "cifar100" and data.num_classes == 100
    assert data.images_at("test", torch.tensor([2])).shape == (1, 3, 16, 16)


def test_cifar_missing_layout(tmp_path):
    with pytest.raises(DataError, match="neither cifar-10-batches-py"):
        load_dataset(DataConfig(name="cifar", path=str(tmp_path)))
