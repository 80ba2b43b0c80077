"""Teachers from torchvision by name (the real loading code, fed local files) and from checkpoints."""

import pytest
import torch
import torchvision

from srel_ray.cli import main
from srel_ray.config import TeacherConfig
from srel_ray.errors import DataError
from srel_ray.teacher import Teacher, load_teacher, save_teacher, torchvision_teacher


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
    # Classes are known by wnid, in the standard (sorted-wnid) order that torchvision's outputs follow.
    assert teacher.num_classes == 1000 and teacher.class_names[:2] == ["n01440764", "n01443537"]
    assert teacher.class_names == sorted(teacher.class_names)
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
    assert code == 3 and "1000 ImageNet-1K classes by wnid" in err and "class '0' of dataset 'digits'" in err
    assert not (tmp_path / "o").exists()


def test_a_subset_of_imagenet_keeps_the_teachers_outputs_of_its_wnids(tmp_path, resnet18_state):
    """ImageNet-100 style: the dataset's wnids, in its own order, select the 1K model's logits."""
    path = tmp_path / "w.pth"
    torch.save(resnet18_state, path)
    cfg = TeacherConfig(source="torchvision", arch="resnet18", weights_path=str(path))
    full = torchvision_teacher(cfg, 32).build().eval()
    subset = ["n01443537", "n01440764", "n15075141"]  # goldfish, tench, toilet tissue (indices 1, 0, 999)
    teacher = torchvision_teacher(cfg, 32, subset)
    assert teacher.class_names == subset and teacher.metrics["classes_kept"].startswith("3 of")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher.build().eval()(x), full(x)[:, [1, 0, 999]], atol=1e-5)
    with pytest.raises(DataError, match="class 'n99999999' of the dataset .* is not one of them"):
        torchvision_teacher(cfg, 32, ["n01440764", "n99999999"])


def test_class_order_mismatch_names_the_first_class_by_wnid_and_name():
    teacher = Teacher("convnet", {}, ["n01440764", "n01443537"], 3, 8, None, {})
    with pytest.raises(DataError, match=r"index 0 is 'n01440764' \(tench\) in the teacher, "
                                        r"'n01443537' \(goldfish\) in dataset"):
        teacher.check_classes(["n01443537", "n01440764"], "dataset 'x'")
    with pytest.raises(DataError, match="subset of the teacher's classes"):
        teacher.check_classes(["n01443537"], "dataset 'x'")


@pytest.mark.parametrize("arch,weights,size,expected", [
    ("resnet18", "IMAGENET1K_V1", 224, 256), ("resnet18", "IMAGENET1K_V1", 16, 18),
    ("resnet50", "IMAGENET1K_V2", 224, 232),  # V2 weights evaluate at resize 232, crop 224
])
def test_held_out_images_follow_the_torchvision_weights_own_transform(arch, weights, size, expected):
    from srel_ray.config import load_config

    cfg = load_config(None, ["teacher.source=torchvision", f"teacher.arch={arch}", f"teacher.weights={weights}",
                             f"data.image_size={size}"])
    assert cfg.data.test_resize == expected
    assert load_config(None, [f"data.image_size={size}"]).data.test_resize == 0  # other teachers: whole image
    assert load_config(None, ["teacher.source=torchvision", "data.test_resize=0"]).data.test_resize == 0


def test_timm_teacher_from_a_local_weights_file_keeps_a_subsets_outputs(tmp_path):
    """teacher.source: timm, arch: a timm name with its weights' tag; weights from a local file (offline); the
    normalisation and the held-out resize are the weights' own; a subset of wnids keeps those outputs."""
    import timm

    from srel_ray.config import load_config
    from srel_ray.data import imagenet_classes
    from srel_ray.teacher import timm_teacher

    torch.manual_seed(0)
    full = timm.create_model("resnet18.a1_in1k", pretrained=False).eval()
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    wnids = list(imagenet_classes.synsets("imagenet1k"))
    subset = [wnids[7], wnids[3], wnids[900]]
    cfg = TeacherConfig(source="timm", arch="resnet18.a1_in1k", weights_path=str(tmp_path / "r18.pth"))
    teacher = timm_teacher(cfg, 64, subset)
    assert teacher.arch == "timm:resnet18.a1_in1k" and teacher.class_names == subset
    assert teacher.norm.mean == (0.485, 0.456, 0.406)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(teacher.build().eval()(x), full(x)[:, [7, 3, 900]])
    save_teacher(teacher, str(tmp_path / "teacher.pt"))  # a teacher.pt like any other
    assert load_teacher(str(tmp_path / "teacher.pt")).arch == "timm:resnet18.a1_in1k"
    resolved = load_config(None, ["teacher.source=timm", "teacher.arch=resnet18.a1_in1k", "data.image_size=224"])
    assert resolved.data.test_resize == round(224 / 0.95)  # the weights' crop_pct


@pytest.mark.parametrize("arch,message", [
    ("resnet18.no_such_tag", "timm has no pretrained weights named 'resnet18.no_such_tag'"),
    ("vit_tiny_patch16_224.augreg_in21k", "has 21843 outputs; a teacher known by wnid needs ImageNet-1K weights"),
])
def test_timm_teacher_refuses_weights_it_cannot_use(arch, message):
    from srel_ray.teacher import timm_teacher

    with pytest.raises(DataError, match=message):
        timm_teacher(TeacherConfig(source="timm", arch=arch), 224)
