"""Typed, validated configuration: one dataclass per stage, loaded from YAML, overridable with ``--set``.

Hyper-parameters (``data``, ``teacher``, ``recover``, ``relabel``, ``evaluate``) decide *what* is computed;
``resources`` and ``tracking`` decide only *where and how fast*. Two runs with equal hyper-parameters produce
equal outputs whatever their resources, which is why only the hyper-parameter sections identify a run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srel_ray.errors import ConfigError
from srel_ray.methods import method_spec

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """The real dataset: where it is and how images are presented to models."""

    # digits (embedded) | parquet | imagefolder (train/<class>/...) | cifar (torchvision files) | webdataset (tars)
    name: str = "digits"
    path: str | None = None  # where the data lives (local path or fsspec URL), for sources that are not embedded
    image_size: int = 16  # side length models see; images of another size are resized to this
    channels: int = 3  # 1 (grey) or 3 (RGB) for decoded sources; digits are always grey
    max_corrupt: int = 100  # unreadable training images tolerated (skipped and counted); more stops the run
    test_fraction: float = 0.25  # held-out share for sources without a test split
    split_seed: int = 0  # the held-out split is stable across runs, independent of ``seed``
    val_fraction: float = 0.1  # srel-ray tune: share of each training class held out to score trials (never test)
    hflip: bool = True  # mirror images in augmentation and views; off for data that is not mirror-symmetric
    # imagefolder, flat val/ (ImageNet's official layout): LOC_val_solution.csv (Kaggle) or the ILSVRC2012 devkit's
    # data/ILSVRC2012_validation_ground_truth.txt (its meta.mat beside it). None: data.path/LOC_val_solution.csv
    val_labels: str | None = None
    image_column: str = "image"  # parquet: encoded bytes, or a {bytes, path} struct (Hugging Face exports)
    label_column: str = "label"  # parquet: the integer class index column; webdataset: its key in .json labels
    # webdataset: the class list, a file of one class name a line (relative to data.path or a URL), or a list timm
    # ships: imagenet1k | imagenet12k | imagenet21k | imagenet21k_p | imagenet22k. None: data.path/classes.txt
    classes: str | None = None
    # Held-out images: resize the short side to this, then centre-crop image_size (ImageNet's test transform).
    # 0: resize the whole image to image_size x image_size. None: a torchvision teacher's own (its weights'
    # resize/crop ratio, 256/224 for the V1 weights), else 0.
    test_resize: int | None = None
    # imagefolder, webdataset: the folder (local or URL, reachable and writable by every worker) of the index made
    # on first open (an ImageFolder's file list, srel_ray/data/folder_index.py; where each tar sample's image lies
    # and its label, srel_ray/data/webdataset.py) and read by every later one. None: data.path/.srel_ray_index.
    index: str | None = None

    def validate(self) -> None:
        _check(self.name in DATASETS, "data.name", f"must be one of {sorted(DATASETS)}, got {self.name!r}")
        _check(self.image_size >= 8, "data.image_size", f"must be >= 8, got {self.image_size}")
        _check(self.channels in (1, 3), "data.channels", f"must be 1 or 3, got {self.channels}")
        _check(self.max_corrupt >= 0, "data.max_corrupt", f"must be >= 0, got {self.max_corrupt}")
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(self.test_resize is None or self.test_resize == 0 or self.test_resize >= self.image_size,
               "data.test_resize", f"must be 0 or >= data.image_size={self.image_size}, got {self.test_resize}")


@dataclass
class ExtraTeacherConfig:
    """One more teacher (EDC's multi-teacher recovery and relabel): a teacher.pt or a torchvision model by name."""

    source: str = "checkpoint"  # checkpoint | torchvision | timm (arch: its name with the weights' tag)
    checkpoint: str | None = None  # source=checkpoint: a teacher.pt written by squeeze (another run's teacher)
    arch: str = "resnet18"  # source=torchvision
    weights: str = "IMAGENET1K_V1"  # source=torchvision
    weights_path: str | None = None  # source=torchvision: a local state-dict file instead of the hub

    def validate(self, name: str) -> None:
        _check(self.source in ("checkpoint", "torchvision", "timm"), f"{name}.source",
               f"must be 'checkpoint', 'torchvision' or 'timm', got {self.source!r}")
        if self.source == "checkpoint":
            _check(bool(self.checkpoint), f"{name}.checkpoint", "is required when its source is 'checkpoint'")


@dataclass
class TeacherConfig:
    """Squeeze: where the frozen BN teacher comes from, and how it is trained when it is trained here."""

    # squeeze (train with Ray Train) | torchvision (pretrained by name) | timm (pretrained by name and weights tag,
    # e.g. arch: resnet50.a1_in1k) | checkpoint
    source: str = "squeeze"
    arch: str = "convnet"
    arch_kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None  # source=checkpoint: a teacher.pt written by squeeze
    weights: str = "IMAGENET1K_V1"  # source=torchvision: the weights enum name (the paper uses V1)
    weights_path: str | None = None  # source=torchvision or timm: a local state-dict file instead of the hub
    epochs: int = 20
    batch_size: int = 64  # global, split across workers
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # light crop-and-flip only: heavy augmentation in squeeze hurts recovery
    # global: a seeded shuffle of all (still encoded) rows, right for shards sorted by class; it exchanges every
    # row between Ray tasks once per epoch. files: a seeded new order of the files each epoch plus each worker's
    # local buffer, no exchange: for pre-shuffled shards at ImageNet-21K scale. ImageFolder sources shuffle
    # their (url, label) rows, seeded, before reading files, in both modes (a full shuffle moving no image bytes).
    shuffle: str = "global"
    shuffle_buffer: int = 0  # rows in each worker's local shuffle buffer; 0: four per-worker batches
    # More teachers: recovery cycles through [teacher, *extra] one step each, relabel averages their logits.
    extra: list[ExtraTeacherConfig] = field(default_factory=list)

    def validate(self) -> None:
        for i, extra in enumerate(self.extra):
            extra.validate(f"teacher.extra[{i}]")
        _check(self.source in TEACHER_SOURCES, "teacher.source",
               f"must be one of {sorted(TEACHER_SOURCES)}, got {self.source!r}")
        _check(self.shuffle in ("global", "files"), "teacher.shuffle",
               f"must be 'global' or 'files', got {self.shuffle!r}")
        _check(self.shuffle_buffer >= 0, "teacher.shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        if self.source == "checkpoint":
            _check(bool(self.checkpoint), "teacher.checkpoint", "is required when teacher.source is 'checkpoint'")
        _check(self.epochs >= 1, "teacher.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "teacher.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "teacher.lr", f"must be > 0, got {self.lr}")


@dataclass
class RecoverConfig:
    """Recover: optimise synthetic images so the frozen teacher classifies them and their BN statistics match."""

    ipc: int = 10  # images per class
    iterations: int = 1000  # optimisation steps per unit (the recovery budget)
    lr: float = 0.25
    bn_weight: float = 0.01  # alpha_BN
    first_bn_multiplier: float = 10.0  # the first BN layer's distance counts this many times
    tv_weight: float = 0.0  # total-variation prior (off in SRe2L)
    l2_weight: float = 0.0  # L2 prior (off in SRe2L)
    jitter: int = 4  # random roll of up to this many pixels
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range ("multi-crop optimisation")
    classes_per_unit: int = 100  # classes mixed in one optimisation batch (capped at the class count)
    ipc_per_unit: int = 1  # images of each class in one batch
    # Adam's (L2) weight decay on the images, as the SRe2L supplementary's recovery tables give it (1e-4); its
    # reference code uses none, hence the default 0 (docs/methods.md, "The seed's recipes").
    weight_decay: float = 0.0
    # Methods beyond SRe2L (docs/methods.md). Defaults are SRe2L's: each option is off.
    init: str = "noise"  # noise | real (the random-real baseline's images) | rded (RDED-selected crops)
    class_bn_weight: float = 0.0  # w: match (1 - w) * global + w * per-class BN statistics (EDC: 0.5)
    flatness_weight: float = 0.0  # EDC's flatness term: KL between the teacher on x and on an EMA of x
    flatness_ema: float = 0.99  # decay of that EMA of the images
    crop_curriculum: str = "none"  # CDA: none | step | linear | cosine annealing of the crop scale's lower bound
    crop_min_start: float = 1.0  # the lower bound at step 0; it anneals to crop_scale[0]
    crop_milestone: float = 1.0  # share of the iterations over which it anneals
    rded_pool: int = 300  # RDED: real candidate images per class (capped at the class size)
    rded_crops: int = 5  # RDED: random square crops scored per candidate image
    # RDED: stitch factor x factor crops per image, each at 1/factor resolution. None: RDED's published choice for
    # the input size (its scripts), which ``resolve`` writes in: 2 from 128 px up (ImageNet and its subsets), 1
    # below (CIFAR, Tiny-ImageNet).
    rded_factor: int | None = None
    rded_crop_scale: tuple[float, float] = (0.08, 1.0)  # RDED: area range of the candidate crops

    def validate(self) -> None:
        _check(self.ipc >= 1, "recover.ipc", f"must be >= 1, got {self.ipc}")
        _check(self.init in RECOVER_INITS, "recover.init", f"must be one of {list(RECOVER_INITS)}, got {self.init!r}")
        _check(self.iterations >= (1 if self.init == "noise" else 0), "recover.iterations",
               f"must be >= 1 (0, no optimisation, needs recover.init real or rded), got {self.iterations}")
        _check(0.0 <= self.class_bn_weight <= 1.0, "recover.class_bn_weight",
               f"must be in [0, 1], got {self.class_bn_weight}")
        _check(self.flatness_weight >= 0, "recover.flatness_weight", f"must be >= 0, got {self.flatness_weight}")
        _check(0.0 <= self.flatness_ema < 1.0, "recover.flatness_ema", f"must be in [0, 1), got {self.flatness_ema}")
        _check(self.crop_curriculum in CROP_CURRICULA, "recover.crop_curriculum",
               f"must be one of {list(CROP_CURRICULA)}, got {self.crop_curriculum!r}")
        if self.crop_curriculum != "none":
            _check(self.crop_scale[0] <= self.crop_min_start <= self.crop_scale[1], "recover.crop_min_start",
                   f"must lie between crop_scale's bounds {list(self.crop_scale)} (it anneals down to the lower), "
                   f"got {self.crop_min_start}")
        _check(0.0 < self.crop_milestone <= 1.0, "recover.crop_milestone",
               f"must be in (0, 1], got {self.crop_milestone}")
        _check(self.rded_pool >= 1, "recover.rded_pool", f"must be >= 1, got {self.rded_pool}")
        _check(self.rded_crops >= 1, "recover.rded_crops", f"must be >= 1, got {self.rded_crops}")
        _check(self.rded_factor is None or self.rded_factor >= 1, "recover.rded_factor",
               f"must be >= 1 (or null: by image size), got {self.rded_factor}")
        _check_scale(self.rded_crop_scale, "recover.rded_crop_scale")
        _check(self.lr > 0, "recover.lr", f"must be > 0, got {self.lr}")
        _check(self.bn_weight >= 0, "recover.bn_weight", f"must be >= 0, got {self.bn_weight}")
        _check(self.jitter >= 0, "recover.jitter", f"must be >= 0, got {self.jitter}")
        _check_scale(self.crop_scale, "recover.crop_scale")
        _check(self.classes_per_unit >= 1, "recover.classes_per_unit", f"must be >= 1, got {self.classes_per_unit}")
        _check(self.ipc_per_unit >= 1, "recover.ipc_per_unit", f"must be >= 1, got {self.ipc_per_unit}")
        _check(self.weight_decay >= 0, "recover.weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class RelabelConfig:
    """Relabel: E epochs x K views of every image, each view's teacher logits stored for exact replay."""

    epochs: int = 100  # E: label epochs; the student's epoch e replays label epoch e mod E
    views_per_epoch: int = 1  # K
    crop_scale: tuple[float, float] = (0.08, 1.0)
    batch_size: int = 256  # views per teacher forward pass
    logits_dtype: str = "float16"
    top_k: int = 0  # 0: store all logits; k: store the k largest per view, the rest as uniform mass
    # Label with another teacher than the one that recovered the images (the SRe2L paper's Fig. 3 ablation; an
    # independent check of a set): a teacher.pt of the same classes and input normalisation, e.g. another run's.
    # It labels the condensed set and the random-real baseline alike; teacher.extra then recovers only. None: the
    # recovery teacher(s).
    teacher: str | None = None

    def validate(self) -> None:
        _check(self.epochs >= 1, "relabel.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.views_per_epoch >= 1, "relabel.views_per_epoch", f"must be >= 1, got {self.views_per_epoch}")
        _check_scale(self.crop_scale, "relabel.crop_scale")
        _check(self.batch_size >= 1, "relabel.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.top_k >= 0, "relabel.top_k", f"must be >= 0, got {self.top_k}")
        _check(self.logits_dtype in ("float16", "float32"), "relabel.logits_dtype",
               f"must be 'float16' or 'float32', got {self.logits_dtype!r}")


@dataclass
class StudentArchConfig:
    """One more student architecture for the evaluate stage (any model name, srel_ray.models)."""

    arch: str = "convnet"
    arch_kwargs: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Its folder name under DIR/evaluate/: the name, and a hash of arch_kwargs when there are any."""
        import hashlib

        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.arch)
        if not self.arch_kwargs:
            return name
        return f"{name}-{hashlib.sha256(repr(sorted(self.arch_kwargs.items())).encode()).hexdigest()[:8]}"


@dataclass
class EvaluateConfig:
    """Evaluate: train a student from scratch on a set's stored views and labels; test on real held-out data."""

    arch: str = "convnet"
    arch_kwargs: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 32  # global, split across workers
    optimizer: str = "adamw"  # adamw (the seed's ImageNet-1K student) | sgd (its Tiny-ImageNet student)
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    # CutMix per batch (srel_ray.core.cutmix): with this probability a batch pastes a box of its views, shuffled,
    # into its views; the mixed image's target is the area-weighted mix of the two views' stored labels. 0: off.
    cutmix_prob: float = 0.0
    cutmix_beta: float = 1.0  # the box's area share is drawn from Beta(cutmix_beta, cutmix_beta)
    temperature: float = 4.0  # T of the KL loss on soft labels
    baselines: bool = True  # also train on IPC random real images, hard and teacher-relabelled
    eval_interval: int = 10  # test every this many epochs (and after the last); 0: after the last only
    lr_stretch: float = 1.0  # cosine over this many times the steps: 2 ends at half the peak (EDC's smoothing)
    ema_decay: float = 0.0  # > 0: test an exponential moving average of the weights (EDC: 0.99)
    # More student architectures (cross-architecture generalisation, the SRe2L paper's Table 5): each is trained on
    # the condensed set and, with baselines, on both random-real sets, by this section's protocol. Not part of a
    # run's identity: adding one to a finished run trains only the new students (srel-ray evaluate).
    students: list[StudentArchConfig] = field(default_factory=list)

    def validate(self) -> None:
        seen = {(self.arch, repr(sorted(self.arch_kwargs.items())))}
        for i, student in enumerate(self.students):
            key = (student.arch, repr(sorted(student.arch_kwargs.items())))
            _check(key not in seen, f"evaluate.students[{i}]",
                   f"repeats {student.arch!r} with the same arch_kwargs (evaluate.arch or an earlier entry)")
            seen.add(key)
        _check(self.lr_stretch >= 1.0, "evaluate.lr_stretch", f"must be >= 1, got {self.lr_stretch}")
        _check(0.0 <= self.ema_decay < 1.0, "evaluate.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.epochs >= 1, "evaluate.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "evaluate.lr", f"must be > 0, got {self.lr}")
        _check(self.optimizer in STUDENT_OPTIMIZERS, "evaluate.optimizer",
               f"must be one of {list(STUDENT_OPTIMIZERS)}, got {self.optimizer!r}")
        _check(self.weight_decay >= 0, "evaluate.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.momentum < 1.0, "evaluate.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(0.0 <= self.cutmix_prob <= 1.0, "evaluate.cutmix_prob", f"must be in [0, 1], got {self.cutmix_prob}")
        _check(self.cutmix_beta > 0, "evaluate.cutmix_beta", f"must be > 0, got {self.cutmix_beta}")
        _check(self.temperature > 0, "evaluate.temperature", f"must be > 0, got {self.temperature}")
        _check(self.eval_interval >= 0, "evaluate.eval_interval", f"must be >= 0, got {self.eval_interval}")


@dataclass
class ResourcesConfig:
    """Where work runs. Changing these never changes results (threads per worker held equal)."""

    ray_address: str | None = None  # None: start a local cluster; "auto" or ray://... to join one
    num_cpus: int | None = None  # local cluster only; None lets Ray count the cores
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    train_workers: int = 1  # Ray Train workers for squeeze and evaluate
    recover_actors: int = 2
    relabel_actors: int = 1
    gpus_per_actor: float = 1.0  # recover/relabel actors, when use_gpu
    cpus_per_actor: float = 1.0  # CPUs Ray reserves for each recover/relabel actor
    threads_per_worker: int = 1  # torch intra-op threads in every worker and actor
    cpus_per_trial: float = 1.0  # srel-ray tune: CPUs Ray reserves for each trial (its torch threads: threads_per_worker)
    gpus_per_trial: float = 1.0  # srel-ray tune, when use_gpu: a fraction (0.25) lets trials share a GPU
    # Forward passes of recover, relabel, squeeze and students: fp32 | bf16 | fp16 | None (auto: bf16 on GPUs that
    # have it, else fp32). bf16/fp16 change outputs, so an explicit value is part of a run's identity (below).
    precision: str | None = None
    compile: bool = False  # torch.compile the models (opt-in: minutes of compilation before the first step)
    # Each student (evaluate worker, tune trial) holds up to this many MB of its share of the set's decoded images
    # and reads and decodes the rest a batch at a time (srel_ray.storage.sets.SetImages); results do not depend on it.
    student_cache_mb: int = 2048
    # A student checkpoints at its test points (evaluate.eval_interval) and, with this > 0, every this many epochs
    # too, so a worker group restarted after a failure, or a command run again, loses fewer epochs; results do not
    # depend on it (a checkpoint holds the whole training state). 0: at test points only.
    student_checkpoint_epochs: int = 0
    # Students trained at once on Ray, each its own Ray Train fit of train_workers workers: the evaluate stage's (the
    # condensed set's, the baselines', each evaluate.students architecture's) and srel-ray continual's step students.
    # On a cluster of N GPUs with train_workers 1, N of them train side by side. The cluster must hold them all at
    # once (checked at start); results do not depend on it. The in-process executor trains one at a time.
    concurrent_students: int = 1

    @property
    def student_cache_bytes(self) -> int:
        return self.student_cache_mb * 2**20

    def validate(self) -> None:
        _check(self.train_workers >= 1, "resources.train_workers", f"must be >= 1, got {self.train_workers}")
        _check(self.recover_actors >= 1, "resources.recover_actors", f"must be >= 1, got {self.recover_actors}")
        _check(self.relabel_actors >= 1, "resources.relabel_actors", f"must be >= 1, got {self.relabel_actors}")
        _check(0 < self.gpus_per_actor, "resources.gpus_per_actor", f"must be > 0, got {self.gpus_per_actor}")
        _check(0 < self.cpus_per_actor, "resources.cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        _check(self.threads_per_worker >= 1, "resources.threads_per_worker",
               f"must be >= 1, got {self.threads_per_worker}")
        _check(0 < self.cpus_per_trial, "resources.cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        _check(0 < self.gpus_per_trial, "resources.gpus_per_trial", f"must be > 0, got {self.gpus_per_trial}")
        _check(self.student_cache_mb >= 0, "resources.student_cache_mb",
               f"must be >= 0 (0: decode every batch's images when it needs them), got {self.student_cache_mb}")
        _check(self.student_checkpoint_epochs >= 0, "resources.student_checkpoint_epochs",
               f"must be >= 0 (0: checkpoint students at their test points only), got {self.student_checkpoint_epochs}")
        _check(self.concurrent_students >= 1, "resources.concurrent_students",
               f"must be >= 1 (1: one student at a time), got {self.concurrent_students}")
        _check(self.precision in (None, *PRECISIONS), "resources.precision",
               f"must be one of {list(PRECISIONS)} or null (auto), got {self.precision!r}")


@dataclass
class TrackingConfig:
    """MLflow tracking. ``tracking_uri`` None honours MLFLOW_TRACKING_URI, else MLflow's default SQLite file."""

    enabled: bool = True
    experiment: str = "srel_ray"
    tracking_uri: str | None = None
    artifact_root: str | None = None  # None: an absolute ``mlartifacts`` folder beside the SQLite file
    system_metrics: bool = True  # MLflow's CPU/memory/disk (and GPU) samples beside the run (needs psutil)
    loss_interval: int = 50  # recovery losses reach MLflow and the console every this many iterations (0: off)

    def validate(self) -> None:
        _check(self.loss_interval >= 0, "tracking.loss_interval", f"must be >= 0, got {self.loss_interval}")


# What every tuning trial reports after each scored student epoch (srel_ray.trial); a tune metric must be one of them.
TRIAL_METRICS = ("val_top1", "val_top5", "train_loss")
SEARCHES = ("grid", "random", "optuna")


@dataclass
class TuneConfig:
    """``srel-ray tune``: a Ray Tune search over fields of recover, relabel and evaluate (srel_ray.search_space)."""

    search: str = "grid"  # grid (every point once) | random | optuna
    num_samples: int | None = None  # random/optuna: trials (None: 8); grid: passes over the grid (None: 1)
    metric: str = "val_top1"  # on the validation split carved from the training data, never the test split
    mode: str = "max"
    space: dict = field(default_factory=lambda: {  # the paper's two knobs: recovery budget, soft-label temperature
        "recover.iterations": {"grid": [500, 1000, 2000]},
        "evaluate.temperature": {"grid": [1.0, 4.0, 20.0]},
    })
    asha: bool = True  # stop trials whose validation accuracy trails at a rung (ASHA, per student epoch)
    grace_period: int = 10  # student epochs every trial runs before ASHA may stop it
    # Student epochs between two validation scores (the last epoch is always scored). Each score is a pass over the
    # validation split and one report to Tune (ASHA counts epochs, not reports): without ASHA, only the last
    # epoch's score decides, so a larger interval saves most of a trial's student time.
    score_interval: int = 1
    reduction_factor: float = 3.0  # ASHA keeps 1/reduction_factor of the trials at each rung
    max_concurrent_trials: int = 0  # 0: as many as resources.cpus_per_trial / gpus_per_trial allow

    def validate(self) -> None:
        _check(self.search in SEARCHES, "tune.search", f"must be one of {list(SEARCHES)}, got {self.search!r}")
        _check(self.metric in TRIAL_METRICS, "tune.metric",
               f"must be a metric the trials report, one of {list(TRIAL_METRICS)}, got {self.metric!r}")
        _check(self.mode in ("max", "min"), "tune.mode", f"must be 'max' or 'min', got {self.mode!r}")
        _check(isinstance(self.space, dict) and bool(self.space), "tune.space",
               "must be a non-empty mapping of section.key -> spec, e.g. {recover.iterations: {grid: [500, 1000]}}")
        if self.num_samples is not None:
            _check(self.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {self.num_samples}")
            _check(self.search != "grid" or self.num_samples == 1, "tune.num_samples",
                   f"must be 1 (or left out) with search 'grid': trials are deterministic, so repeating the grid "
                   f"recomputes the same numbers; got {self.num_samples}")
        _check(self.grace_period >= 1, "tune.grace_period", f"must be >= 1, got {self.grace_period}")
        _check(self.score_interval >= 1, "tune.score_interval", f"must be >= 1, got {self.score_interval}")
        _check(self.reduction_factor > 1, "tune.reduction_factor", f"must be > 1, got {self.reduction_factor}")
        _check(self.max_concurrent_trials >= 0, "tune.max_concurrent_trials",
               f"must be >= 0, got {self.max_concurrent_trials}")

    def samples(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 8)


@dataclass
class Config:
    """A whole run. ``seed`` is the one source of all randomness."""

    seed: int = 0
    method: str = "sre2l"  # a registered method (srel_ray/methods.py): sre2l | cda | rded | edc
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        # A default that depends on the teacher's weights, made concrete here so the saved config says what ran.
        # (Defaults that depend on the image size and the method are ``resolve``'s, before the config is built.)
        if self.data.test_resize is None:
            self.data.test_resize = 0
            if self.teacher.source == "torchvision":
                from srel_ray.models.pretrained import eval_resize  # torchvision's metadata; keep imports light

                self.data.test_resize = eval_resize(self.teacher.arch, self.teacher.weights, self.data.image_size)
            elif self.teacher.source == "timm":
                from srel_ray.models.pretrained import timm_eval_resize

                self.data.test_resize = timm_eval_resize(self.teacher.arch, self.data.image_size)

    def validate(self) -> "Config":
        method_spec(self.method)  # a ConfigError naming ``method`` and the registered ones
        for section in (self.data, self.teacher, self.recover, self.relabel, self.evaluate, self.resources,
                        self.tracking, self.tune):
            section.validate()
        from srel_ray.models import check_model_name  # models import torch; keep config import light

        if self.teacher.source in ("squeeze", "torchvision"):  # timm's names carry their weights' tag: checked then
            check_model_name(self.teacher.arch, "teacher.arch")
        check_model_name(self.evaluate.arch, "evaluate.arch")
        for i, student in enumerate(self.evaluate.students):
            check_model_name(student.arch, f"evaluate.students[{i}].arch")
        return self

    def identity(self) -> dict:
        """The sections that decide outputs; equal identities mean an output folder can be resumed."""
        d = to_dict(self)
        d.pop("resources")
        # Precision is the one resource that changes numbers (bf16/fp16 round every activation). An explicit value
        # identifies the run; null (auto) does not, so runs configured before it existed keep their identity, and
        # the precision auto resolved to is recorded beside each output instead (recover's unit records).
        if self.resources.precision is not None:
            d["precision"] = self.resources.precision
        d.pop("tracking")
        d.pop("tune")  # how a search explores configs; never what one run computes
        d["data"].pop("index")  # where the file index is kept; the index lists the same files wherever it is
        d["evaluate"].pop("students")  # more students add outputs and change none (see EvaluateConfig.students)
        return d


# ---------------------------------------------------------------------------------------------- studies
# The seed's studies of a finished run (srel_ray/studies/): sections of their own commands, given as --set
# continual.key=value or tsne.key=value, never part of a run's config.yaml.


@dataclass
class ContinualConfig:
    """``srel-ray continual DIR``: class-incremental learning with the condensed set, and random real images of
    the same size, as the memory (GDumb-style, the SRe2L paper's section 3.7; srel_ray/studies/continual.py)."""

    steps: list[int] = field(default_factory=lambda: [5, 10])  # each: the classes arrive in this many groups
    seed: int | None = None  # the order in which the classes arrive; None: the run's seed
    epochs: int | None = None  # each step's student; None: the run's evaluate.epochs
    # Train the step students one after another in this process (its GPU when resources.use_gpu allows and there is
    # one) instead of on Ray Train: for small sets, where a Train fit's start-up outweighs a student's training.
    in_process: bool = False

    def validate(self) -> None:
        _check(bool(self.steps), "continual.steps", "must list at least one step count, e.g. [5, 10]")
        for i, steps in enumerate(self.steps):
            _check(steps >= 2, f"continual.steps[{i}]",
                   f"must be >= 2 (one step is plain training on the whole set), got {steps}")
        _check(len(set(self.steps)) == len(self.steps), "continual.steps", f"repeats a step count: {self.steps}")
        _check(self.epochs is None or self.epochs >= 1, "continual.epochs", f"must be >= 1, got {self.epochs}")


@dataclass
class FeatureSpaceConfig:
    """``srel-ray tsne DIR``: t-SNE of the teacher's penultimate features of condensed and real images of a few
    classes (the SRe2L paper's appendix C; srel_ray/studies/feature_space.py)."""

    classes: int = 5  # how many classes are shown, drawn from the seed
    real_per_class: int = 50  # real training images of each shown class (capped at the class size)
    seed: int | None = None  # the classes shown, their real images and t-SNE's start; None: the run's seed
    perplexity: float = 30.0  # t-SNE's; must stay below the number of points

    def validate(self) -> None:
        _check(self.classes >= 1, "tsne.classes", f"must be >= 1, got {self.classes}")
        _check(self.real_per_class >= 1, "tsne.real_per_class", f"must be >= 1, got {self.real_per_class}")
        _check(self.perplexity > 0, "tsne.perplexity", f"must be > 0, got {self.perplexity}")


STUDY_SECTIONS = {"continual": ContinualConfig, "tsne": FeatureSpaceConfig}


def load_study_section(name: str, overrides: list[str]) -> Any:
    """A study's section (``STUDY_SECTIONS``) from the ``name.key=value`` items of ``overrides``, validated."""
    raw = apply_overrides({}, [o for o in overrides if o.strip().startswith(f"{name}.")]).get(name, {})
    section = _build(STUDY_SECTIONS[name], raw, prefix=f"{name}.")
    section.validate()
    return section


PRECISIONS = ("fp32", "bf16", "fp16")  # srel_ray.core.precision (kept here so config imports no torch)
DATASETS = {"digits", "parquet", "imagefolder", "cifar", "webdataset"}
# RDED's scripts stitch 2 x 2 crops per image from this input size up, none below; below it the methods' small-image
# values apply (srel_ray.methods.MethodSpec.small_image_presets).
RDED_STITCH_FROM_PX = 128
RECOVER_INITS = ("noise", "real", "rded")
CROP_CURRICULA = ("none", "step", "linear", "cosine")
STUDENT_OPTIMIZERS = ("adamw", "sgd")
TEACHER_SOURCES = {"squeeze", "torchvision", "timm", "checkpoint"}


# ---------------------------------------------------------------------------------------------- loading


def to_dict(cfg: Any) -> dict:
    """A plain-YAML dict (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or the defaults when ``path`` is None), apply ``section.key=value`` overrides, validate."""
    raw = apply_overrides(read_config_file(path), overrides or [])
    kept = preset_overrides(raw)
    if kept:
        log.warning("method %s: the config sets %s; explicit values win over the preset (srel-ray config shows "
                    "where every value comes from)", raw["method"],
                    ", ".join(kept))
    return from_dict(raw).validate()


def read_config_file(path: str | Path | None) -> dict:
    """The plain YAML mapping of a config file ({} for None); a syntax error names the file, line and column."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    raw = _parse_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{where}: {e.problem or e.context}") from None


def from_dict(raw: dict) -> Config:
    """Build a Config from plain values, resolved first (``resolve``): the chosen ``method``'s presets fill the keys
    ``raw`` leaves out."""
    return _build(Config, resolve(raw), prefix="")


# ---------------------------------------------------------------------------------------------- resolving


def resolve(raw: dict) -> dict:
    """The one step that decides the values that follow from other values; ``raw`` is not changed. First the
    method's presets (srel_ray.methods), for the image size, fill every key ``raw`` gives no value; then an unset
    ``recover.rded_factor`` becomes RDED's choice for the image size (2 from RDED_STITCH_FROM_PX up, 1 below)."""
    if not isinstance(raw, dict):
        return raw  # the config builder reports the wrong type
    out = copy.deepcopy(raw)
    for section, values in method_presets(raw).items():
        given = out.get(section)
        if given is None:
            given = out[section] = {}
        if not isinstance(given, dict):
            continue  # the config builder reports "<section> must be a mapping"
        for key, value in values.items():
            given.setdefault(key, copy.deepcopy(value))
    recover = out.get("recover")
    if recover is None:
        recover = out["recover"] = {}
    if isinstance(recover, dict) and recover.get("rded_factor") is None:
        recover["rded_factor"] = 1 if _small_images(raw) else 2
    return out


def method_presets(raw: dict) -> dict[str, dict]:
    """The values ``raw``'s method chooses for ``raw``'s image size: {section: {key: value}}. An unknown method is
    a ConfigError naming ``method`` and the registered ones."""
    return method_spec(raw.get("method", "sre2l")).preset_values(small_images=_small_images(raw))


def preset_overrides(raw: dict) -> list[str]:
    """``section.key=<given> (preset: <value>)`` for every preset value that ``raw`` sets otherwise: worth saying,
    since e.g. a file's ``recover.iterations: 1000`` turns ``method: rded`` (0 iterations) into an optimisation."""
    out = []
    for section, values in method_presets(raw).items():
        given = raw.get(section)
        for key, value in values.items():
            if isinstance(given, dict) and key in given and given[key] != value:
                out.append(f"{section}.{key}={given[key]!r} (preset: {value!r})")
    return out


def _small_images(raw: dict) -> bool:
    """Below RDED's stitching size: CIFAR-like data, where RDED stitches nothing and methods may differ."""
    data = raw.get("data")
    size = data.get("image_size") if isinstance(data, dict) else None
    # A wrong type is the config builder's to report; until then the default stands in.
    return (size if isinstance(size, int) else DataConfig.image_size) < RDED_STITCH_FROM_PX


def config_yaml(cfg: Config) -> str:
    """The YAML text saved beside every output; ``config_from_yaml`` reads it back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_from_yaml(text: str, where: str, overrides: list[str] | None = None) -> Config:
    """A saved config (``config_yaml``), with ``section.key=value`` overrides applied."""
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where!r} must hold a mapping of sections, got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, overrides or [])).validate()


def save_config(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_yaml(cfg))
    tmp.replace(path)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` (changed in place and returned) with each ``section.key=value`` applied in order."""
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = _parse_yaml(value, f"--set {item!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    name = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys of {name}: {sorted(fields)}")
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, prefix=name + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, f"unsupported union {hint}"
        return _coerce(inner[0], value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {hint} for {name}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {message}")


def _check_scale(scale: tuple[float, float], name: str) -> None:
    lo, hi = scale
    _check(0.0 < lo <= hi <= 1.0, name, f"must satisfy 0 < low <= high <= 1, got {list(scale)}")
