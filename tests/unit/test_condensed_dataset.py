"""CondensedDataset: a stored set as a plain PyTorch dataset, on local disk and fsspec memory."""

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from srel_ray.core.normalization import Normalization
from srel_ray.core.relabel import view_pixels
from srel_ray.core.views import Views
from srel_ray.storage import sets
from srel_ray.data.condensed import CondensedDataset
from srel_ray.errors import DataError

CLASSES, IPC, SIZE, EPOCHS, K = ["zero", "one", "two"], 2, 8, 2, 2
NORM = {"mean": [0.5], "std": [0.25]}


def _columns(epoch: int) -> dict[str, np.ndarray]:
    """One epoch's rows, already in file order (image id, then view), with boxes, flips and logits per epoch."""
    rng = np.random.default_rng(100 + epoch)
    rows = len(CLASSES) * IPC * K
    image_id = np.repeat(np.arange(len(CLASSES) * IPC), K)
    top, left = rng.integers(0, 4, rows), rng.integers(0, 4, rows)
    return {
        "image_id": image_id, "label": image_id // IPC, "epoch": np.full(rows, epoch),
        "view": np.tile(np.arange(K), rows // K),
        "top": top, "left": left, "height": rng.integers(3, SIZE - top + 1), "width": rng.integers(3, SIZE - left + 1),
        "flip": np.arange(rows) % 2 == epoch, "logits": rng.normal(0, 3, (rows, len(CLASSES))).astype(np.float32),
    }


def _write(root: str, labels: bool = True) -> tuple[torch.Tensor, list[dict]]:
    images = torch.randint(0, 256, (len(CLASSES) * IPC, 1, SIZE, SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    sets.write_image_unit(root, sets.unit_marker(root, "unit-000000"), [(c, i) for c in range(len(CLASSES)) for i in range(IPC)], images)
    epochs = [_columns(e) for e in range(EPOCHS)] if labels else []
    for e, cols in enumerate(epochs):
        sets.write_label_epoch(root, e, cols, len(CLASSES), "float16")
    sets.write_manifest(root, kind="condensed", dataset="tiny", class_names=CLASSES, ipc=IPC, channels=1,
                        image_size=SIZE, normalization=NORM, teacher={}, config={},
                        labels={"epochs": EPOCHS, "views_per_epoch": K} if labels else None)
    return images, epochs


def _expected(images: torch.Tensor, cols: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's view as the relabel stage renders it, and its logits as stored (fp16) read back as float32."""
    boxes = torch.from_numpy(np.stack([cols[k] for k in ("top", "left", "height", "width")], 1).astype(np.float32))
    flips = torch.from_numpy(cols["flip"])
    norm = Normalization(tuple(NORM["mean"]), tuple(NORM["std"]))
    views = torch.cat([view_pixels(images[int(cols["image_id"][r])][None], Views(boxes[r:r + 1], flips[r:r + 1]),
                                   SIZE, norm) for r in range(len(boxes))])
    return views, torch.from_numpy(cols["logits"].astype(np.float16).astype(np.float32))


def _assert_rows(ds: CondensedDataset, views: torch.Tensor, logits: torch.Tensor) -> None:
    assert len(ds) == len(views)
    for i in range(len(ds)):
        view, target = ds[i]
        assert view.dtype == torch.float32 and view.shape == (1, SIZE, SIZE)
        assert target.dtype == torch.float32 and target.shape == (len(CLASSES),)
        torch.testing.assert_close(view, views[i], rtol=0, atol=0)
        torch.testing.assert_close(target, logits[i], rtol=0, atol=0)


def test_items_are_the_stored_views_and_logits(root):
    images, epochs = _write(root)
    ds = CondensedDataset(root)
    assert (ds.class_names, ds.num_classes, ds.ipc, ds.label_epochs) == (CLASSES, 3, IPC, EPOCHS)
    assert ds.normalization == Normalization((0.5,), (0.25,))
    assert len(ds) == len(CLASSES) * IPC * K == 12
    views, logits = _expected(images, epochs[0])
    assert views.abs().sum() > 0 and views.min() < -1 and views.max() > 1  # normalised, not raw [0, 1] pixels
    _assert_rows(ds, views, logits)


def test_hard_returns_the_class_label(root):
    _, epochs = _write(root)
    ds = CondensedDataset(root, hard=True)
    got = [ds[i][1] for i in range(len(ds))]
    assert all(isinstance(t, int) for t in got)
    assert got == epochs[0]["label"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_set_epoch_switches_and_wraps(root):
    images, epochs = _write(root)
    (views0, logits0), (views1, logits1) = _expected(images, epochs[0]), _expected(images, epochs[1])
    assert not torch.equal(views0, views1) and not torch.equal(logits0, logits1)  # the epochs are told apart
    ds = CondensedDataset(root)
    ds.set_epoch(1)
    _assert_rows(ds, views1, logits1)
    ds.set_epoch(2)
    _assert_rows(ds, views0, logits0)
    _assert_rows(CondensedDataset(root, epoch=3), views1, logits1)


def test_data_loader_iterates_every_row(root):
    images, epochs = _write(root)
    views, logits = _expected(images, epochs[0])
    batches = list(DataLoader(CondensedDataset(root), batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 4]
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), views, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([t for _, t in batches]), logits, rtol=0, atol=0)


def test_missing_manifest_and_missing_labels_are_data_errors(root):
    with pytest.raises(DataError, match=re.escape(root)):
        CondensedDataset(root)
    _write(root, labels=False)
    with pytest.raises(DataError, match=re.escape(root) + ".*no labels"):
        CondensedDataset(root)
