"""A condensed set (or the random-real baseline) as a plain ``torch.utils.data.Dataset``: train on it without Ray.

Each item is one stored view, rendered exactly as the relabel stage rendered it for the teacher, with the teacher's
logits on that view as the target (or the class index with ``hard=True``)::

    ds = CondensedDataset("out/condensed")
    loader = DataLoader(ds, batch_size=64, shuffle=True)
    for epoch in range(epochs):
        ds.set_epoch(epoch)  # the stored label epoch epoch % ds.label_epochs
        for x, t in loader:
            loss = soft_label_kl(model(x), t, temperature=4.0)  # srel_ray.core.losses; then backward, step
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from srel_ray.config import ResourcesConfig
from srel_ray.core.normalization import Normalization
from srel_ray.core.relabel import view_pixels
from srel_ray.core.views import Views
from srel_ray.storage import sets
from srel_ray.errors import DataError


class CondensedDataset(Dataset):
    """The rows of one label epoch of a set at ``path`` (local path or fsspec URL): ``(view, target)``.

    ``view`` is the normalised float32 (C, S, S) view; ``target`` the float32 teacher logits (num_classes,), or the
    int class index when ``hard``. Up to ``cache_mb`` MB of the decoded images are held (all of a set that fits),
    the others read and decoded as items ask for them (srel_ray.storage.sets.SetImages); ``set_epoch`` switches the
    label epoch.
    """

    def __init__(self, path: str, epoch: int = 0, hard: bool = False,
                 cache_mb: int = ResourcesConfig.student_cache_mb) -> None:
        self.info = sets.read_set(str(path))
        if self.info.label_epochs == 0:
            raise DataError(f"set {self.info.path!r} has no labels: run the relabel stage on it first")
        self.hard = hard
        norm = self.info.manifest["normalization"]
        self._norm = Normalization(tuple(norm["mean"]), tuple(norm["std"]))
        self._images = sets.SetImages(self.info, range(self.info.num_classes * self.info.ipc), cache_mb * 2**20)
        self.stored_epoch = -1  # the label epoch whose rows are loaded
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use label epoch ``epoch % label_epochs`` (the one the student replays at its epoch ``epoch``)."""
        stored = epoch % self.label_epochs
        if stored != self.stored_epoch:
            self._labels = sets.read_label_epoch(self.info.path, stored, hard=self.hard)
            self.stored_epoch = stored

    def __len__(self) -> int:
        return len(self._labels.image_index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        i = int(i) + len(self) if int(i) < 0 else int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        labels = self._labels
        index = int(labels.image_index[i])
        views = Views(labels.views.boxes[i:i + 1], labels.views.flips[i:i + 1])
        view = view_pixels(self._images[torch.tensor([index])], views, self.info.image_size, self._norm)[0]
        if self.hard:
            return view, index // self.info.ipc
        return view, labels.targets(torch.tensor([i]))[0]

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def ipc(self) -> int:
        return self.info.ipc

    @property
    def label_epochs(self) -> int:
        return self.info.label_epochs

    @property
    def normalization(self) -> Normalization:
        return self._norm
