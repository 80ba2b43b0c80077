"""Methods as registered specs: ``method: sre2l | cda | rded | edc`` names a ``MethodSpec``, typed data that says
which option values the method chooses (timm-style: ``register_method`` adds one; a config names it).

A method is its values, nothing more: what each option computes is the core's (srel_ray.core.recover_terms builds
recovery's loss terms and crop schedule from the resolved options, so SRe2L's BN matching, EDC's class-aware
matching and flatness, CDA's curriculum and the priors are there, under the options' names), and how presets
meet a config is ``srel_ray.config.resolve``'s: a preset only fills in what the config leaves unset (a value given in
the YAML file or with ``--set`` always wins), the small-image values apply below RDED's stitching size, and the
saved ``DIR/config.yaml`` holds the resolved values (so a saved config reloads to the same run whatever the presets
say later). Every option is documented in docs/methods.md. This module imports nothing of the package but errors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from srel_ray.errors import ConfigError

Presets = dict[str, dict[str, object]]  # section -> {key: value}; values are plain YAML (lists for tuples)


@dataclass(frozen=True)
class MethodSpec:
    """One method: the option values it chooses."""

    name: str  # what ``method:`` says
    description: str  # one line, for people
    presets: Presets = field(default_factory=dict)
    # What changes below RDED's stitching size (CIFAR-like data), over ``presets``.
    small_image_presets: Presets = field(default_factory=dict)

    def preset_values(self, small_images: bool) -> Presets:
        """The values this method chooses for images of that kind (a copy: callers may change it)."""
        out = copy.deepcopy(self.presets)
        if small_images:
            for section, values in self.small_image_presets.items():
                out.setdefault(section, {}).update(copy.deepcopy(values))
        return out


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a value of ``method``; returns it. A name registers once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def method_names() -> tuple[str, ...]:
    """Every registered method, in the order registered."""
    return tuple(_REGISTRY)


def method_spec(name: object) -> MethodSpec:
    """The registered method ``name``; anything else is a ConfigError naming ``method`` and the valid names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"method must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


SRE2L = register_method(MethodSpec(
    "sre2l", "SRe2L: recovery from Gaussian noise, global BN matching, the plain student recipe (the defaults)"))
# CDA (Yin & Shen): SRe2L whose RandomResizedCrop lower bound anneals from whole-image crops (1.0) to the usual 0.08
# over the recovery ("easy to hard"), on a cosine schedule over all iterations.
CDA = register_method(MethodSpec(
    "cda", "CDA: SRe2L with crops annealed from whole images to small ones over the recovery",
    {"recover": {"crop_curriculum": "cosine", "crop_min_start": 1.0, "crop_milestone": 1.0}}))
# RDED (Sun et al.): no optimisation. Score random square crops of real images by the teacher's loss, keep the
# lowest-loss crop of each candidate image and the best candidates; from 128 px up, stitch 2x2 of them per image at
# half resolution (recover.rded_factor's default follows the input size, as RDED's scripts do). Labels come from the
# teacher (the relabel stage) as for every method.
RDED = register_method(MethodSpec(
    "rded", "RDED: real crops the teacher finds most typical, stitched from 128 px up, not optimised",
    {"recover": {"init": "rded", "iterations": 0}}))
# EDC (Shao et al.): start from RDED-selected real crops with half SRe2L's iterations and a lower step size, match
# 0.5 global + 0.5 per-class BN statistics, flatness regularisation; student side: cosine stretched over twice the
# steps (ends at half the peak), a small batch, EMA-of-weights evaluation, weak crops (0.5-1).
# Below RDED's stitching size (CIFAR-like data) EDC's own scripts differ per dataset, and on CIFAR-10 (ConvNet
# teacher, IPC 10 and 50) the paper's ImageNet recipe ties with or loses to random real images relabelled by the
# same teacher. The small-image values were chosen on a validation split (benchmarks/tune_recovery.py) and then beat
# that baseline on the test split in every seed at both IPCs (docs/benchmarks.md): 150 iterations from RDED crops of
# 100 candidates per class, crops of half the image or more.
EDC = register_method(MethodSpec(
    "edc", "EDC: RDED starts, class-aware BN matching, flatness, and a smoothed student recipe",
    {"recover": {"init": "rded", "iterations": 500, "lr": 0.05, "class_bn_weight": 0.5, "flatness_weight": 0.1,
                 "flatness_ema": 0.99},
     "relabel": {"crop_scale": [0.5, 1.0]},
     "evaluate": {"lr_stretch": 2.0, "batch_size": 16, "ema_decay": 0.99}},
    small_image_presets={"recover": {"iterations": 150, "rded_pool": 100, "rded_crop_scale": [0.5, 1.0]}}))


# The ablation ladder of docs/methods.md as --set overrides on a protocol config (jobs/configs/cifar10_quality.yaml,
# which sets recover.iterations 1000, recover.lr 0.25, relabel.crop_scale and evaluate.batch_size itself, so the
# steps write those out: explicit values win over presets). Each SRe2L step adds to the one before it.
_REAL_INIT = ["recover.init=real", "recover.iterations=500", "recover.lr=0.05"]
_CLASS_MATCHING = ["recover.class_bn_weight=0.5"]
_STUDENT = ["evaluate.lr_stretch=2.0", "evaluate.batch_size=16", "evaluate.ema_decay=0.99",
            "relabel.crop_scale=[0.5, 1.0]"]
# The edc row is the paper's (ImageNet) recipe on this 32 px protocol: it pins what edc's small-image defaults change.
_EDC = ["method=edc", "recover.iterations=500", "recover.lr=0.05", "evaluate.batch_size=16",
        "relabel.crop_scale=[0.5, 1.0]", "recover.rded_pool=300", "recover.rded_crop_scale=[0.08, 1.0]"]
LADDER: list[tuple[str, list[str]]] = [
    ("sre2l", ["method=sre2l"]),
    ("+ real init", ["method=sre2l", *_REAL_INIT]),
    ("+ category-aware matching", ["method=sre2l", *_REAL_INIT, *_CLASS_MATCHING]),
    ("+ student-side choices", ["method=sre2l", *_REAL_INIT, *_CLASS_MATCHING, *_STUDENT]),
    ("edc", _EDC),
    ("rded", ["method=rded", "recover.iterations=0"]),
    ("rded + student-side choices", ["method=rded", "recover.iterations=0", *_STUDENT]),
    ("cda", ["method=cda"]),
    # The edc row with more teachers (teacher.extra): recovery cycles through them, relabel averages their logits for
    # the condensed set and the baselines alike. Which checkpoints is the caller's (benchmarks/ladder.py
    # --extra-teacher), so the overrides here are edc's.
    ("edc + several teachers", _EDC),
    # The edc row with the recovery of EDC's own CIFAR-10 script (Branch_CIFAR_10/recover/recover.sh): 75 iterations
    # (not ImageNet's "half of SRe2L's") starting from random real images of the class (not RDED crops).
    ("edc, CIFAR-10 script recovery", [*_EDC, "recover.init=real", "recover.iterations=75"]),
    # Which of that row's two changes matters: the edc row (RDED crops) with only the script's 75 iterations.
    ("edc at 75 iterations", [*_EDC, "recover.iterations=75"]),
    # The one recipe for IPC 10 and 50 that validation searches chose (benchmarks/tune_recovery.py: budget x start,
    # then RDED's selection; the largest smallest margin over the random-real baseline trial): 150 iterations from
    # RDED crops of 100 candidates per class, crops of 0.5-1 of the image. What method=edc is below 128 px.
    ("edc, validation's one recipe", [*_EDC, "recover.iterations=150", "recover.rded_pool=100",
                                      "recover.rded_crop_scale=[0.5, 1.0]"]),
]
# Ladder steps that need extra teacher checkpoints given to them (as teacher.extra) to mean anything.
LADDER_NEEDS_EXTRA_TEACHERS = ("edc + several teachers",)
# The steps that add to the one before them (the others are methods of their own, compared with the baseline only).
LADDER_CHAIN = ("sre2l", "+ real init", "+ category-aware matching", "+ student-side choices", "edc")
