"""The method ladder as data: each row's name and its ``--set`` overrides on the quality protocol's config.

benchmarks/ladder.py runs these rows, benchmarks/tune_recovery.py rebuilds their configs to compare searched
recoveries with them, and tests/unit/test_methods.py checks that each row changes exactly what docs/methods.md says
it adds. Plain lists: no srel_ray import.
"""

from __future__ import annotations

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
