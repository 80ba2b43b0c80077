"""Real-image initialisation and RDED candidates read the images of the classes asked for, and no others."""

import pytest
import torch

from srel_ray.config import DataConfig
from srel_ray.data.class_images import rded_candidates, real_init_images
from srel_ray.data.imagefolder import ImageFolderData
from srel_ray.data.real import random_real_indices
from srel_ray.errors import DataError

from .test_imagefolder_source import CLASSES, _tree


@pytest.fixture
def tree(root):
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    _tree(fs, path)
    data = ImageFolderData(DataConfig(name="imagefolder", path=root, image_size=10, channels=3))
    return fs, path, data


def _remove_other_classes(fs, path, keep: str) -> None:
    """After the index is built: only class ``keep``'s files remain, so reading any other image fails."""
    for cls in CLASSES:
        if cls != keep:
            fs.rm(f"{path}/train/{cls}", recursive=True)


def test_real_init_reads_only_the_owned_classes(tree):
    fs, path, data = tree
    owned = data.class_names.index("n02")  # class index 1 (sorted order n01, n02, n03)
    everything = real_init_images(data, [(c, i) for c in range(3) for i in range(2)], 2, seed=0)
    _remove_other_classes(fs, path, keep="n02")
    targets = [(owned, 1), (owned, 0)]
    images = real_init_images(data, targets, 2, seed=0)
    # Image (c, i) starts from the random-real baseline's image i of class c.
    assert torch.equal(images, torch.stack([everything[owned * 2 + 1], everything[owned * 2]]))
    baseline = random_real_indices(data.labels("train"), 3, 2, seed=0)
    assert torch.equal(images, data.images_at("train", baseline[[owned * 2 + 1, owned * 2]]))
    with pytest.raises((DataError, FileNotFoundError)):  # the check above is not vacuous: others are gone
        real_init_images(data, [(0, 0)], 2, seed=0)


def test_rded_candidates_read_only_their_class(tree):
    fs, path, data = tree
    owned = data.class_names.index("n03")
    before = rded_candidates(data, owned, pool=2, seed=4)
    _remove_other_classes(fs, path, keep="n03")
    after = rded_candidates(data, owned, pool=2, seed=4)
    assert after.shape == (2, 3, 10, 10) and torch.equal(before, after)
    assert len(rded_candidates(data, owned, pool=50, seed=4)) == 3  # capped at the class size
    assert "norm" not in vars(data)  # nothing estimated the normalisation (it would read every class)


def test_without_rows_leaves_the_given_training_rows_out_and_keeps_the_test_split():
    from srel_ray.data.real import InMemoryData, Split, WithoutRows

    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    train = Split(images, torch.tensor([0, 1, 0, 1, 0, 1]))
    test = Split(images[:2], torch.tensor([1, 0]))
    data = InMemoryData("toy", ["a", "b"], train, test)
    view = WithoutRows(data, torch.tensor([1, 4]))
    assert view.labels("train").tolist() == [0, 0, 1, 1]  # rows 0, 2, 3, 5
    assert view.images_at("train", torch.tensor([3, 0]))[:, 0, 0, 0].tolist() == [5, 0]
    assert [b[0][:, 0, 0, 0].tolist() for b in view.batches("train", 3)] == [[0, 2, 3], [5]]
    assert torch.equal(view.labels("test"), test.labels) and torch.equal(view.images_at("test", torch.tensor([1])),
                                                                         images[1:2])
    assert (view.num_classes, view.channels, view.image_size, view.norm) == (2, 1, 2, data.norm)
