"""Teachers from torchvision by name (the real loading code, fed local files) and from checkpoints."""

import pytest
import torch
import torchvision

from srel_ray.cli import main
from srel_ray.config import TeacherConfig
from srel_ray.errors import DataError
from srel_ray.teacher import load_teacher, save_teacher, torchvision_teacher


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchvision_teacher_from_a_local_weights_file(tmp_path, resnet18_state):
    path = tmp_path / "resnet18_v1.pth"
    torch.save(resnet18_state, path)
    teacher = torchvision_teacher(TeacherConfig(source="torchvision", arch="resnet18", weights_path=str(path)), 224)
    assert teacher.num_classes == 1000 and teacher.class_names[0] == "tench"
    assert teacher.norm.mean == (0.485, 0.456, 0.406)
    assert teacher.metrics["top1_published"] == pytest.approx(69.758)
    assert _same_weights(teacher.build().state_dict(), resnet18_state)


def test_torchvision_teacher_through_the_hub_cache(tmp_path, monkeypatch, resnet18_state):
    """With no weights_path, torchvision's own resolver runs; a file in $TORCH_HOME's cache means no download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18_state, cache / weights.url.rsplit("/", 1)[-1])
    teacher = torchvision_teacher(TeacherConfig(source="torchvision", arch="resnet18"), 224)
    assert _same_weights(teacher.build().state_dict(), resnet18_state)


def test_torchvision_teacher_checkpoint_round_trip(tmp_path, resnet18_state):
    path = tmp_path / "w.pth"
    torch.save(resnet18_state, path)
    teacher = torchvision_teacher(TeacherConfig(source="torchvision", arch="resnet18", weights_path=str(path)), 224)
    save_teacher(teacher, str(tmp_path / "teacher.pt"))
    loaded = load_teacher(str(tmp_path / "teacher.pt"))
    assert loaded.class_names == teacher.class_names and loaded.arch == "resnet18"
    assert _same_weights(loaded.state_dict, teacher.state_dict)


def test_unknown_torchvision_weights(tmp_path):
    with pytest.raises(DataError, match="no weights 'IMAGENET9K'"):
        torchvision_teacher(TeacherConfig(source="torchvision", arch="resnet18", weights="IMAGENET9K"), 224)


def test_torchvision_teacher_on_a_ten_class_dataset_is_refused_before_work(tmp_path, capsys):
    code = main(["quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.source=torchvision",
                 "--set", "teacher.arch=resnet18"])
    err = capsys.readouterr().err
    assert code == 3 and "1000 classes" in err and "10" in err
    assert not (tmp_path / "o").exists()
