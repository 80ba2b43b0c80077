"""SetImages: a share of a set's images served by row like a uint8 tensor, decoded on demand beyond a memory
budget; a student trained from it is the student trained from the tensor, bit for bit (no Ray)."""

import pickle

import numpy as np
import pytest
import torch

from srel_ray.core.normalization import Normalization
from srel_ray.core.seeding import seeded_init
from srel_ray.core.student import EpochLabels, stretched_cosine, train_student_epoch
from srel_ray.core.views import Views
from srel_ray.models import create_model
from srel_ray.storage import sets

CLASSES, IPC, SIZE = 4, 5, 8
IMAGE_BYTES = 3 * SIZE * SIZE


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[sets.SetInfo, torch.Tensor]:
    root = str(tmp_path_factory.mktemp("set"))
    images = torch.randint(0, 256, (CLASSES * IPC, 3, SIZE, SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    sets.write_image_unit(root, sets.unit_marker(root, "unit-000000"),
                          [(c, i) for c in range(CLASSES) for i in range(IPC)], images)
    sets.write_manifest(root, kind="condensed", dataset="tiny", class_names=[str(c) for c in range(CLASSES)],
                        ipc=IPC, channels=3, image_size=SIZE, normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
                        teacher={}, config={})
    return sets.read_set(root), images


@pytest.mark.parametrize("budget_images", [0, 3, 7, 1000])
def test_rows_are_what_read_images_at_returns_and_the_cache_keeps_its_budget(stored, budget_images):
    info, _ = stored
    share = range(6, 17)  # image ids 6..16: classes 1 to 3
    source = sets.SetImages(info, share, cache_bytes=budget_images * IMAGE_BYTES + IMAGE_BYTES - 1)
    assert len(source) == len(share) and source.held_bytes == 0
    gen = torch.Generator().manual_seed(0)
    for n in (1, 4, 11, 30):
        rows = torch.randint(0, len(share), (n,), generator=gen)
        expected = sets.read_images_at(info.path, [divmod(share[r], IPC) for r in rows.tolist()], info.channels)
        got = source[rows]
        assert got.dtype == torch.uint8 and torch.equal(got, expected)
        assert source.held_bytes <= budget_images * IMAGE_BYTES + IMAGE_BYTES - 1
    assert source.held_bytes == min(budget_images, len(share)) * IMAGE_BYTES
    copy = pickle.loads(pickle.dumps(source))  # a DataLoader worker's copy: its own (empty) cache, the same rows
    assert copy.held_bytes == 0 and torch.equal(copy[torch.arange(len(share))], source[torch.arange(len(share))])


def _epoch_labels(rows: int, images: int, classes: int) -> EpochLabels:
    gen = torch.Generator().manual_seed(5)
    top, left = torch.randint(0, 3, (rows,), generator=gen), torch.randint(0, 3, (rows,), generator=gen)
    boxes = torch.stack([top, left, SIZE - top, SIZE - left], 1).float()
    return EpochLabels(torch.arange(rows) % images, Views(boxes, torch.rand(rows, generator=gen) < 0.5),
                       logits=torch.randn(rows, classes, generator=gen))


def _train(images, class_labels, labels) -> tuple[float, dict]:
    with seeded_init(0):
        model = create_model("convnet", num_classes=CLASSES, in_channels=3, image_size=SIZE, width=8, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = stretched_cosine(optimizer, 8)
    losses = [train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=epoch, seed=1,
                                  batch_size=6, temperature=4.0, image_size=SIZE,
                                  norm=Normalization((0.5,) * 3, (0.25,) * 3)) for epoch in range(2)]
    return losses, model.state_dict()


def test_a_student_epoch_from_the_lazy_source_equals_one_from_the_tensor(stored):
    info, images = stored
    class_labels = torch.arange(CLASSES).repeat_interleave(IPC)
    labels = _epoch_labels(2 * len(images), len(images), CLASSES)
    loss, weights = _train(images, class_labels, labels)
    for budget in (0, 5 * IMAGE_BYTES):  # nothing held; the first 5 images held, the others decoded per batch
        lazy_loss, lazy_weights = _train(sets.SetImages(info, range(len(images)), budget), class_labels, labels)
        assert lazy_loss == loss
        assert all(torch.equal(weights[k], lazy_weights[k]) for k in weights)
    assert np.isfinite(loss).all()
