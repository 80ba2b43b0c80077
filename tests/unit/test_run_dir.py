"""The run folder on any filesystem: claiming it, refusing foreign folders, the image grid (no Ray)."""

import pytest
import torch

from srel_ray.config import load_config
from srel_ray.storage import files, sets
from srel_ray.errors import SrelError
from srel_ray.storage.layout import RunDir, prepare_out
from srel_ray.storage.sets import save_grid


def test_local_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunDir.at("runs/a").out == str(tmp_path / "runs" / "a")
    assert RunDir.at("s3://bucket/runs/a/").out == "s3://bucket/runs/a"
    assert RunDir.at("s3://bucket/runs/a").teacher == "s3://bucket/runs/a/teacher/teacher.pt"


def test_claiming_a_folder_saves_the_config_and_refuses_another_run(root):
    cfg = load_config(None, ["recover.ipc=3"])
    run = prepare_out(cfg, root)
    assert files.read_bytes(run.config).decode().startswith("seed: 0")
    assert prepare_out(load_config(None, ["recover.ipc=3", "resources.recover_actors=5"]), root) == run  # resumes
    with pytest.raises(SrelError, match=r"holds a different run \(recover.ipc: 3 there, 4 now\)"):
        prepare_out(load_config(None, ["recover.ipc=4"]), root)


def test_a_non_empty_folder_without_a_run_is_refused(root):
    files.write_bytes_atomic(files.join(root, "notes.txt"), b"mine")
    with pytest.raises(SrelError, match="not empty and holds no srel_ray run"):
        prepare_out(load_config(None), root)


def test_grid_has_one_row_per_class(root):
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sets.write_image_unit(root, sets.unit_marker(root, "unit-000000"), [(c, i) for c in range(3) for i in range(2)], images)
    grid = sets.decode_png(files.read_bytes(save_grid(root, 3, 2, 3, files.join(root, "grid.png"))), 3)
    assert grid.shape == (3, 3 * 9 + 1, 2 * 9 + 1)  # 1-pixel padding around every 8x8 image
    assert torch.equal(grid[:, 1 + 9:1 + 9 + 8, 1:9], images[2])  # class 1, image 0
