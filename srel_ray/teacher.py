"""Teachers: the model, its class order and its input normalisation, saved and loaded as one checkpoint.

A teacher comes from squeeze (trained here), from torchvision by name with pretrained weights, or from a
``teacher.pt`` file. Every source yields the same ``Teacher``, so recovery and relabel never care which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import nn

from srel_ray.config import ExtraTeacherConfig, TeacherConfig
from srel_ray.core.class_stats import ClassStats
from srel_ray.core.normalization import IMAGENET, Normalization
from srel_ray.core.precision import prepare_model
from srel_ray.core.recover import freeze
from srel_ray.data import imagenet_classes
from srel_ray.errors import DataError
from srel_ray.models import create_model, list_models, pretrained
from srel_ray.storage.files import exists, join, read_torch, write_json_atomic, write_torch


@dataclass
class Teacher:
    arch: str
    arch_kwargs: dict
    class_names: list[str]
    in_channels: int
    image_size: int
    norm: Normalization
    state_dict: dict = field(repr=False)
    metrics: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self) -> nn.Module:
        """The frozen-ready model with its weights (still in train mode; callers freeze it)."""
        model = create_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                             image_size=self.image_size, **self.arch_kwargs)
        model.load_state_dict(self.state_dict)
        return model

    def describe(self) -> dict:
        return {"arch": self.arch, "arch_kwargs": self.arch_kwargs, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size, "metrics": self.metrics}

    def check_classes(self, class_names: list[str], what: str) -> None:
        """A dataset whose class order differs from the teacher's silently wrecks results: refuse it, naming the
        first class that differs (by wnid, with its human name, for ImageNet classes)."""
        if len(class_names) != self.num_classes:
            reason = ""
            if set(class_names) < set(self.class_names):
                reason = (f": {what} holds a subset of the teacher's classes, and a teacher.pt must have exactly "
                          "the dataset's classes (a torchvision teacher, teacher.source=torchvision, keeps the "
                          "outputs of the dataset's wnids only)")
            raise DataError(f"the teacher has {self.num_classes} classes but {what} has {len(class_names)}{reason}")
        for i, (mine, theirs) in enumerate(zip(self.class_names, class_names)):
            if mine != theirs:
                raise DataError(f"class order differs between the teacher and {what}: index {i} is "
                                f"{imagenet_classes.describe(mine)} in the teacher, "
                                f"{imagenet_classes.describe(theirs)} in {what}")


def save_teacher(teacher: Teacher, path: str) -> None:
    payload = {"format_version": 1, "arch": teacher.arch, "arch_kwargs": teacher.arch_kwargs,
               "class_names": teacher.class_names, "in_channels": teacher.in_channels,
               "image_size": teacher.image_size, "norm": {"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
               # Through JSON: pickle's bytes depend on which strings are shared objects, and a history restored
               # from a Ray Train checkpoint shares fewer than one built in one process. Canonical, the same
               # teacher gives the same file however its training was interrupted.
               "state_dict": teacher.state_dict, "metrics": json.loads(json.dumps(teacher.metrics))}
    write_torch(path, payload)


def load_teacher(path: str) -> Teacher:
    if not exists(path):
        raise DataError(f"teacher checkpoint {path!r} does not exist")
    payload = read_torch(path)
    if not isinstance(payload, dict) or "state_dict" not in payload or "class_names" not in payload:
        raise DataError(f"{path!r} is not a srel_ray teacher checkpoint (expected keys arch, class_names, "
                        "state_dict, ...); for a bare torchvision state dict use teacher.source=torchvision "
                        "with teacher.weights_path")
    return Teacher(payload["arch"], payload["arch_kwargs"], list(payload["class_names"]), payload["in_channels"],
                   payload["image_size"], Normalization(tuple(payload["norm"]["mean"]), tuple(payload["norm"]["std"])),
                   payload["state_dict"], payload.get("metrics", {}))


def load_frozen(paths: list[str], device: torch.device | str, compile_model: bool = False
                ) -> tuple[Teacher, list[nn.Module]]:
    """The first teacher of ``paths``, and the frozen models of all of them on ``device`` (the first, then the extra
    teachers), as recovery and relabel use them."""
    loaded = [load_teacher(p) for p in paths]
    return loaded[0], [prepare_model(freeze(t.build()).to(device), device, compile_model) for t in loaded]


def torchvision_teacher(cfg: TeacherConfig, image_size: int = 224, class_names: list[str] | None = None) -> Teacher:
    """An off-the-shelf torchvision ImageNet-1K classifier with its published weights (V1 by default).

    Its classes are ImageNet-1K's wnids in the standard order. ``class_names`` (a dataset's wnids): the teacher
    keeps only those outputs, in that order, so a subset of ImageNet (ImageNet-100, Imagenette) works with a 1K
    teacher; each kept logit is the 1K model's logit of that wnid. ``weights_path`` loads the same architecture
    from a local state-dict file instead (offline clusters, tests); otherwise torchvision resolves the weights
    (its cache in $TORCH_HOME first, then a download).
    """
    import torchvision

    weights = torchvision_weights(cfg)
    model = torchvision.models.get_model(cfg.arch, weights=None)
    if cfg.weights_path:
        if not exists(cfg.weights_path):
            raise DataError(f"teacher.weights_path {cfg.weights_path!r} does not exist")
        state = read_torch(cfg.weights_path)
    else:
        state = weights.get_state_dict(progress=False)
    model.load_state_dict(state)
    wnids = list(imagenet_classes.synsets("imagenet1k"))
    assert len(wnids) == len(weights.meta["categories"]), "torchvision's ImageNet weights have 1,000 classes"
    state = model.state_dict()
    metrics = {"top1_published": weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
    if class_names is not None and class_names != wnids:
        rows = torch.tensor(imagenet_indices(class_names, f"teacher {cfg.arch} ({cfg.weights})"))
        head = _classifier_head(state, len(weights.meta["categories"]))
        state = {**state, **{key: state[key][rows].clone() for key in head}}
        wnids = list(class_names)
        metrics["classes_kept"] = f"{len(wnids)} of ImageNet-1K's 1000, by wnid"
    arch = cfg.arch if cfg.arch in list_models() else f"torchvision:{cfg.arch}"  # the registry's name for it
    return Teacher(arch, {}, wnids, 3, image_size, IMAGENET, state, metrics)


def timm_teacher(cfg: TeacherConfig, image_size: int = 224, class_names: list[str] | None = None) -> Teacher:
    """A timm ImageNet-1K classifier with pretrained weights: ``teacher.arch`` is its timm name with the weights'
    tag (``resnet50.a1_in1k``). Classes, subsets by wnid and ``weights_path`` work as for torchvision teachers;
    the input normalisation is the weights' own (timm's pretrained config)."""
    import timm

    name = pretrained.timm_name(cfg.arch)
    info = pretrained.timm_pretrained_cfg(name)
    wnids = list(imagenet_classes.synsets("imagenet1k"))
    if info.get("num_classes") != len(wnids):
        raise DataError(f"teacher.arch: timm's {name!r} has {info.get('num_classes')} outputs; a teacher known by "
                        "wnid needs ImageNet-1K weights (a tag ending in in1k, or fine-tuned to in1k)")
    if cfg.weights_path:
        if not exists(cfg.weights_path):
            raise DataError(f"teacher.weights_path {cfg.weights_path!r} does not exist")
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(read_torch(cfg.weights_path))
    else:
        model = timm.create_model(name, pretrained=True)  # timm's hub cache first, then a download
    state = model.state_dict()
    metrics = {"weights": f"timm {name}"}
    if class_names is not None and class_names != wnids:
        rows = torch.tensor(imagenet_indices(class_names, f"teacher timm:{name}"))
        state = {**state, **{key: state[key][rows].clone() for key in _classifier_head(state, len(wnids))}}
        wnids = list(class_names)
        metrics["classes_kept"] = f"{len(wnids)} of ImageNet-1K's 1000, by wnid"
    norm = Normalization(tuple(info["mean"]), tuple(info["std"]))
    return Teacher(f"timm:{name}", {}, wnids, 3, image_size, norm, state, metrics)


def pretrained_teacher(cfg: TeacherConfig, image_size: int, class_names: list[str] | None = None) -> Teacher:
    """A published ImageNet-1K model as teacher: ``cfg.source`` torchvision or timm."""
    if cfg.source == "timm":
        return timm_teacher(cfg, image_size, class_names)
    return torchvision_teacher(cfg, image_size, class_names)


def _classifier_head(state: dict, classes: int) -> list[str]:
    """The state-dict keys of the last layer that maps features to the ``classes`` outputs (its weight and bias):
    ``fc`` for ResNets, ``classifier.1`` for MobileNets and EfficientNets, ``heads.head`` for ViTs, ..."""
    weight = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2 and v.shape[0] == classes][-1]
    bias = weight[:-len("weight")] + "bias"
    return [weight, bias] if bias in state else [weight]


def imagenet_indices(class_names: list[str], what: str, dataset: str = "the dataset") -> list[int]:
    """Each dataset class's output index in an ImageNet-1K classifier; a class that is not one of its wnids (the
    dataset's class folder, class-list line or ClassLabel name) is an error naming it, before any work."""
    index = {wnid: i for i, wnid in enumerate(imagenet_classes.synsets("imagenet1k"))}
    for name in class_names:
        if name not in index:
            raise DataError(f"{what} knows the 1000 ImageNet-1K classes by wnid (timm's imagenet_synsets.txt); "
                            f"class {name!r} of {dataset} ({len(class_names)} classes) is not one of them: name classes by "
                            "wnid (train/n01440764/...) or use a teacher trained on this dataset")
    return [index[name] for name in class_names]


def torchvision_weights(cfg: TeacherConfig):
    """The torchvision weights enum entry named by the config (its metadata needs no download)."""
    return pretrained.torchvision_weights(cfg.arch, cfg.weights)


def extra_teacher(spec: ExtraTeacherConfig, image_size: int, class_names: list[str] | None = None) -> Teacher:
    """One of ``teacher.extra``: a teacher.pt, or a torchvision or timm model with its published weights."""
    if spec.source == "checkpoint":
        return load_teacher(spec.checkpoint)
    return pretrained_teacher(TeacherConfig(source=spec.source, arch=spec.arch, weights=spec.weights,
                                            weights_path=spec.weights_path), image_size, class_names)


# ------------------------------------------------------------------------------- per-class BN statistics
#
#   <dir>/class-<c:05d>.pt   {"mean": [per BN layer (channels,)], "var": [...]} of class c
#   <dir>/manifest.json      written last: the folder is complete when it exists
#
# One file per class, so a recovery actor reads only the classes of its units.


def class_stats_complete(folder: str) -> bool:
    return exists(join(folder, "manifest.json"))


def save_class_stats(stats: ClassStats, folder: str, describe: dict) -> None:
    """Every class's file, then the manifest (``describe``: what produced them, for people reading it)."""
    save_class_files(stats, folder)
    write_class_stats_manifest(folder, len(stats.classes), [int(m.shape[1]) for m in stats.mean], describe)


def save_class_files(stats: ClassStats, folder: str) -> None:
    """The files of ``stats``'s classes (any subset: a shard of the classes writes its own)."""
    for row, c in enumerate(stats.classes):
        write_torch(_class_file(folder, c), {"mean": [m[row].clone() for m in stats.mean],
                                             "var": [v[row].clone() for v in stats.var]})


def write_class_stats_manifest(folder: str, num_classes: int, channels: list[int], describe: dict) -> None:
    """The manifest, once every class's file is written: it marks the folder complete."""
    manifest = {"num_classes": num_classes, "layers": len(channels), "channels": channels, **describe}
    write_json_atomic(join(folder, "manifest.json"), manifest)


def _class_file(folder: str, c: int) -> str:
    return join(folder, f"class-{c:05d}.pt")


def load_class_stats(folder: str, classes: list[int]) -> ClassStats:
    """The statistics of ``classes`` only (one small file each)."""
    if not class_stats_complete(folder):
        raise DataError(f"no complete per-class statistics in {folder!r}: run the recover stage (it computes them)")
    rows = [read_torch(_class_file(folder, c)) for c in classes]
    layers = len(rows[0]["mean"])
    return ClassStats(list(classes), [torch.stack([r["mean"][i] for r in rows]) for i in range(layers)],
                      [torch.stack([r["var"][i] for r in rows]) for i in range(layers)])
