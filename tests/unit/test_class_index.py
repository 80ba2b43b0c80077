"""The class-to-rows index against a brute-force scan, the per-class draws built on it, and the bounded preview."""

import torch

from srel_ray.core.seeding import STREAM_RANDOM_REAL, generator
from srel_ray.storage import files, sets
from srel_ray.data.real import ClassIndex, load_dataset, random_real_indices, random_real_rows, validation_indices
from srel_ray.storage.sets import GRID_CLASSES, GRID_IPC, grid_targets, save_grid


def _labels(n: int = 5000, classes: int = 37, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def _scan_draw(labels, num_classes, ipc, seed):
    """What the draw was before the index: one scan of every label per class."""
    out = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        pick = torch.randperm(len(members), generator=generator(seed, STREAM_RANDOM_REAL, c))[:ipc]
        out.append(members[pick.sort().values])
    return torch.cat(out)


def test_members_are_the_rows_a_scan_finds():
    labels = _labels(classes=36)  # class 36 has no rows
    index = ClassIndex(labels, 37)
    for c in range(37):
        assert torch.equal(index.members(c), torch.nonzero(labels == c).flatten())
    assert torch.equal(index.sizes(), torch.bincount(labels, minlength=37))
    assert len(index.members(36)) == 0


def test_draws_equal_the_scan_and_one_class_alone_equals_its_slice():
    labels = _labels(classes=20)
    got = random_real_indices(labels, 20, 3, seed=7)
    assert torch.equal(got, _scan_draw(labels, 20, 3, 7))
    index = ClassIndex(labels, 20)
    for c in (0, 5, 19):
        assert torch.equal(random_real_rows(index, c, 3, 7), got[3 * c:3 * c + 3])
    val = validation_indices(labels, 20, 0.1, split_seed=0)
    assert len(val) == len(val.unique()) and set(labels[val].tolist()) == set(range(20))


def test_the_preview_is_bounded_spread_and_fixed():
    small = grid_targets(10, 2)
    assert small == [(c, i) for c in range(10) for i in range(2)]  # a small set: every image
    big = grid_targets(21_841, 50)
    classes = sorted({c for c, _ in big})
    assert len(classes) == GRID_CLASSES and classes[0] == 0 and classes[-1] == 21_840
    assert len(big) == GRID_CLASSES * GRID_IPC and big == grid_targets(21_841, 50)
    assert max(b - a for a, b in zip(classes, classes[1:])) - min(b - a for a, b in zip(classes, classes[1:])) <= 1


def test_save_grid_reads_only_the_preview(tmp_path):
    set_dir = str(tmp_path / "set")
    targets = [(c, i) for c in range(150) for i in range(12)]
    images = torch.randint(0, 256, (len(targets), 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    sets.write_image_unit(set_dir, sets.unit_marker(set_dir, "unit-000000"), targets, images)
    files.remove(sets.image_path(set_dir, 1, 11))  # outside the preview: never read
    path = save_grid(set_dir, 150, 12, 3, str(tmp_path / "grid.png"))
    grid = sets.decode_png(files.read_bytes(path), 3)
    assert grid.shape == (3, 1 + GRID_CLASSES * 5, 1 + GRID_IPC * 5)  # 4 px images, 1 px padding
    assert torch.equal(grid[:, 1:5, 1:5], images[0])  # class 0, image 0 at the top left


def test_the_baseline_selected_by_class_slices_is_the_one_drawn_for_all_classes(tmp_path, monkeypatch):
    """The random-real baseline, selected slice by slice where the work runs (Ray tasks), a few images at a time,
    holds exactly the rows and images the one draw over every class gives, whatever the slicing and chunking."""
    from srel_ray.config import DataConfig
    from srel_ray.stages import baselines
    from srel_ray.stages.base import class_slices
    from srel_ray.stages.baselines import select_slice

    monkeypatch.setattr(baselines, "CHUNK_IMAGES", 4)  # slices of 9 and 21 images: 3 and 6 chunks

    cfg = DataConfig()  # digits: 10 classes
    data = load_dataset(cfg)
    set_dir = str(tmp_path / "random_real")
    slices = [range(0, 3), range(3, 10)]
    assert class_slices(10) == [range(c, c + 1) for c in range(10)]
    big = class_slices(21841)  # at most 64 tasks, tiling the classes
    assert len(big) <= 64 and [c for s in big for c in s] == list(range(21841))
    assert [select_slice(cfg, set_dir, s, ipc=3, seed=5) for s in slices] == [9, 21]
    rows = [r for s in slices for r in files.read_json(sets.slice_marker(set_dir, s.start))["train_indices"]]
    expected = random_real_indices(data.labels("train"), 10, 3, seed=5)
    assert rows == expected.tolist()
    assert torch.equal(sets.read_images(set_dir, 10, 3, data.channels), data.images_at("train", expected))
    recorded = [sets.recorded_files(marker) for marker in sets.unit_markers(set_dir)]
    assert sum(len(r) for r in recorded) == 30  # recorded by the slices as they wrote
