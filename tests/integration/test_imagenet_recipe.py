"""The ImageNet recipe's shape end to end: jobs/configs/imagenet1k.yaml on a 1,000-wnid ImageFolder tree in
ImageNet's own layout (train/<wnid>/*.JPEG, flat val/ with LOC_val_solution.csv), with torchvision's ResNet-18 from
a local weights file, through squeeze, recover, relabel and evaluate at a tiny budget."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from srel_ray.cli import main
from srel_ray.data.imagenet_classes import synsets
from srel_ray.storage.sets import read_set
from srel_ray.teacher import load_teacher

from .conftest import as_args

REPO = Path(__file__).resolve().parents[2]
TRAIN_PER_CLASS = 2


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")  # not square
    return buf.getvalue()


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory) -> Path:
    """1,000 wnid folders of tiny JPEGs, a flat val/ of one image per class and its Kaggle CSV, and a randomly
    initialised torchvision ResNet-18 saved as a plain state dict (what a downloaded weights file holds)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    rows = ["ImageId,PredictionString"]
    (root / "val").mkdir()
    for c, wnid in enumerate(synsets("imagenet1k")):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(rng))
        image_id = f"ILSVRC2012_val_{c + 1:08d}"
        (root / "val" / f"{image_id}.JPEG").write_bytes(_jpeg(rng))
        rows.append(f"{image_id},{wnid} 0 0 11 15")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "resnet18.pth")
    return root


def _recipe_args(root: Path, mlflow_uri: str) -> list[str]:
    return ["--config", str(REPO / "jobs/configs/imagenet1k.yaml"), *as_args([
        f"data.path={root}", f"data.val_labels={root / 'LOC_val_solution.csv'}", "data.image_size=16",
        f"teacher.weights_path={root / 'resnet18.pth'}",
        "recover.ipc=1", "recover.iterations=1", "recover.jitter=2", "recover.classes_per_unit=1000",
        "relabel.epochs=1", "evaluate.epochs=1", "evaluate.eval_interval=1",
        "evaluate.baselines=false",  # one student: the baselines' students only repeat the same Ray Train fit
        "resources.use_gpu=false", "resources.train_workers=1", "resources.recover_actors=1",
        "resources.relabel_actors=1", "resources.cpus_per_actor=1", "resources.threads_per_worker=1",
        f"tracking.tracking_uri={mlflow_uri}"])]


def test_imagenet_recipe_end_to_end(ray_cluster, mlflow_uri, imagenet_tree, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # The splits in 8 read tasks, not the default's 200 (a Ray task for every 5 tiny files, half a minute of the
    # suite); which rows each task reads is tests/integration/test_real_data.py's.
    import ray.data

    monkeypatch.setattr(ray.data.DataContext.get_current(), "read_op_min_num_blocks", 8)
    assert main(["run", "--out", str(out), *_recipe_args(imagenet_tree, mlflow_uri)]) == 0
    wnids = list(synsets("imagenet1k"))
    teacher = load_teacher(str(out / "teacher" / "teacher.pt"))
    assert teacher.class_names == wnids and teacher.arch == "resnet18"
    assert 0 <= teacher.metrics["test_top1"] <= 1 and "classes_kept" not in teacher.metrics
    condensed = read_set(str(out / "condensed"))
    assert condensed.class_names == wnids and condensed.label_epochs == 1
    config = (out / "config.yaml").read_text()
    assert "test_resize: 18" in config  # 16 px crops of images whose short side is resized to 18 (256/224)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 1000 and summary["teacher"] == "resnet18" and 0 <= summary["student_top1"] <= 1


def test_a_folder_that_is_not_an_imagenet_wnid_is_refused_before_work(tmp_path, mlflow_uri, imagenet_tree, capsys):
    """Checked on the driver before Ray starts or anything is written (the 1,000-class tree plus one folder)."""
    stray = imagenet_tree / "train" / "n99999999"
    stray.mkdir()
    (stray / "x.JPEG").write_bytes(_jpeg(np.random.default_rng(1)))
    try:
        code = main(["run", "--out", str(tmp_path / "o"), *_recipe_args(imagenet_tree, mlflow_uri)])
    finally:
        (stray / "x.JPEG").unlink()
        stray.rmdir()
    err = capsys.readouterr().err
    assert code == 3 and "class 'n99999999' of dataset 'imagefolder'" in err and "1001 classes" in err
    assert not (tmp_path / "o").exists()
