"""Everything that can be wrong with a command's inputs, checked before any heavy work starts. What is checked
follows the stages' plans: an output that a stage of this command makes is checked at its source (the teacher's
checkpoint or torchvision weights), one it only reads must already be in the run folder."""

from __future__ import annotations

import torch

from srel_ray.config import Config, TeacherConfig
from srel_ray.data.real import RealData, check_images_per_class, load_dataset
from srel_ray.errors import SrelError
from srel_ray.models import create_model, has_batchnorm, list_models, pretrained
from srel_ray.models.registry import check_model_fits
from srel_ray.stages.base import CONDENSED, LABELS, RANDOM_REAL, SCORES, TEACHER, check_same_input, check_teacher
from srel_ray.stages.registry import UNITS
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir, check_out_is_folder
from srel_ray.teacher import imagenet_indices, load_teacher, torchvision_weights


def made_by(cfg: Config, stages: tuple[str, ...]) -> set[str]:
    """What the ``stages`` of one command make, from their plans."""
    return {m for stage in stages for m in UNITS[stage].plan(cfg).makes}


def read_from_folder(cfg: Config, stages: tuple[str, ...]) -> set[str]:
    """What the ``stages`` of one command need and no stage of it makes: it must be in the run folder."""
    return {n for stage in stages for n in UNITS[stage].plan(cfg).needs} - made_by(cfg, stages)


def check_inputs(cfg: Config, run: RunDir, stages: tuple[str, ...]) -> RealData:
    """The dataset's index, once every input of ``stages`` is there and consistent."""
    check_out_is_folder(run)
    data = load_dataset(cfg.data)
    made = made_by(cfg, stages)
    if cfg.relabel.top_k >= data.num_classes:
        raise SrelError(f"relabel.top_k={cfg.relabel.top_k} must be below the class count {data.num_classes} "
                        "(0 keeps all logits)")
    if RANDOM_REAL in made:
        check_images_per_class(data.class_sizes(), cfg.recover.ipc)
    if TEACHER in made and cfg.teacher.source == "checkpoint":
        check_teacher(load_teacher(cfg.teacher.checkpoint), data)
    elif TEACHER in made and cfg.teacher.source in ("torchvision", "timm"):
        check_pretrained(cfg.teacher, "teacher", data, _dataset(cfg, data))
    elif TEACHER in read_from_folder(cfg, stages):
        if not files.exists(run.teacher):
            raise SrelError(f"no teacher at {run.teacher!r}: run the squeeze stage first (srel-ray squeeze)")
        check_teacher(load_teacher(run.teacher), data)
    if cfg.relabel.teacher and LABELS in made:
        check_teacher(load_teacher(cfg.relabel.teacher), data)
    check_models(cfg, run, data, made)
    check_method_inputs(cfg, run, data, stages)
    return data


def check_models(cfg: Config, run: RunDir, data: RealData, made: set[str]) -> None:
    """The models fit the data (built on the meta device: no memory, no weights), and recovery's teacher has the
    BatchNorm statistics it matches."""
    if TEACHER in made and cfg.teacher.source == "squeeze":
        check_model_fits(cfg.teacher.arch, data.num_classes, data.channels, cfg.data.image_size,
                         cfg.teacher.arch_kwargs, "teacher.arch")
    if SCORES in made:
        check_model_fits(cfg.evaluate.arch, data.num_classes, data.channels, cfg.data.image_size,
                         cfg.evaluate.arch_kwargs, "evaluate.arch")
    if CONDENSED in made and cfg.recover.iterations:
        name, kwargs, classes, channels, size = _recovery_teacher(cfg, run, data, made)
        with torch.device("meta"):
            model = create_model(name, classes, channels, size, **kwargs)
        if not has_batchnorm(model):
            raise SrelError(f"the teacher {name!r} has no BatchNorm layers, and recovery matches BatchNorm "
                            "statistics: squeeze a model with BN (convnet, resnet18_small, ...); for a ViT use "
                            "bnvit_tiny, the SRe2L paper's BN-ViT (BatchNorm for LayerNorm)")


def _recovery_teacher(cfg: Config, run: RunDir, data: RealData, made: set[str]) -> tuple[str, dict, int, int, int]:
    """(model name, arch_kwargs, classes, channels, image size) of the teacher recovery will use."""
    t = cfg.teacher
    if TEACHER in made and t.source == "squeeze":
        return t.arch, t.arch_kwargs, data.num_classes, data.channels, cfg.data.image_size
    if TEACHER in made and t.source == "timm":
        return f"timm:{pretrained.timm_name(t.arch)}", {}, data.num_classes, 3, cfg.data.image_size
    if TEACHER in made and t.source == "torchvision":
        name = t.arch if t.arch in list_models() else f"torchvision:{t.arch}"
        return name, {}, data.num_classes, 3, cfg.data.image_size
    teacher = load_teacher(t.checkpoint if TEACHER in made else run.teacher)
    return teacher.arch, teacher.arch_kwargs, teacher.num_classes, teacher.in_channels, teacher.image_size


def check_method_inputs(cfg: Config, run: RunDir, data: RealData, stages: tuple[str, ...]) -> None:
    """What the successors' options (docs/methods.md) need from the data and the extra teachers."""
    r, made = cfg.recover, made_by(cfg, stages)
    if CONDENSED in made and r.init == "real":
        check_images_per_class(data.class_sizes(), r.ipc)
    if CONDENSED in made and r.init == "rded":
        need = r.ipc * r.rded_factor ** 2
        smallest = int(data.class_sizes().min())
        if min(r.rded_pool, smallest) < need:
            raise SrelError(f"RDED needs ipc * rded_factor^2 = {need} candidate images per class, but "
                            f"recover.rded_pool={r.rded_pool} and the smallest class has {smallest}")
    for i, (spec, path) in enumerate(zip(cfg.teacher.extra, run.extra_teachers(cfg))):
        if TEACHER in read_from_folder(cfg, stages):
            if not files.exists(path):
                raise SrelError(f"no extra teacher at {path!r}: run the squeeze stage first (srel-ray squeeze)")
            check_teacher(load_teacher(path), data)
            check_same_input(load_teacher(path), load_teacher(run.teacher), path)
        elif spec.source == "checkpoint":
            check_teacher(load_teacher(spec.checkpoint), data)
        else:
            check_pretrained(TeacherConfig(source=spec.source, arch=spec.arch, weights=spec.weights),
                             f"teacher.extra[{i}]", data, _dataset(cfg, data))


def check_pretrained(spec: TeacherConfig, field: str, data: RealData, dataset: str) -> None:
    """A published ImageNet-1K model: its weights exist (metadata only, no download) and the dataset's classes are
    among its wnids."""
    if spec.source == "timm":
        pretrained.timm_pretrained_cfg(spec.arch, field)
        what = f"{field}: timm {pretrained.timm_name(spec.arch)}"
    else:
        torchvision_weights(spec)
        what = f"{field}: torchvision {spec.arch} ({spec.weights})"
    imagenet_indices(data.class_names, what, dataset)


def _dataset(cfg: Config, data: RealData) -> str:
    return f"dataset {data.name!r}" + (f" at {cfg.data.path!r}" if cfg.data.path else "")
