"""Explicit, derivable randomness: every random draw comes from a generator keyed by what it is for."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. ``(seed, STREAM_VIEWS, image_id, epoch)``; stable across runs."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


def seeded_init(*keys: int):
    """Module constructors draw from torch's global RNG (the CPU's: models are built there); pin it for the block
    and restore it after."""
    return seeded_stochastic_layers(torch.device("cpu"), *keys)


@contextlib.contextmanager
def seeded_stochastic_layers(device: torch.device, *keys: int):
    """Dropout and stochastic depth (torchvision's MobileNetV2 and EfficientNets, timm's ``drop_path_rate``) draw
    from torch's global RNG, the CPU's or the model's GPU's: pin both for the block from ``keys`` (seed, stream,
    epoch, rank) and restore them after, so a model draws the same masks in any process, beside any other work and
    after a resume from an epoch's checkpoint. Models without such layers draw nothing and are unaffected."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        seed = derive_seed(*keys)
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


# Stream identifiers keep draws for different purposes independent even under the same seed.
STREAM_TEACHER_INIT = 1
STREAM_TEACHER_DATA = 2
STREAM_RECOVER = 3
STREAM_VIEWS = 4
STREAM_RANDOM_REAL = 5
STREAM_STUDENT_INIT = 6
STREAM_STUDENT_ORDER = 7
STREAM_NORMALIZATION = 8
STREAM_VALIDATION = 9
STREAM_RDED = 10  # RDED's candidate images and crop boxes, keyed by class
STREAM_RECOVER_VIEWS = 11  # recovery's crops, flips and rolls, keyed by (unit, step)
STREAM_STUDENT_CUTMIX = 12  # the student's CutMix draws, keyed by (epoch, rank)
STREAM_CLASS_ORDER = 13  # srel-ray continual: the order in which the classes arrive
STREAM_FEATURE_SPACE = 14  # srel-ray tsne: the classes shown and their real images
STREAM_STUDENT_LAYERS = 15  # the student's dropout / drop-path masks, keyed by (epoch, rank)
STREAM_TEACHER_LAYERS = 16  # the squeezed teacher's dropout / drop-path masks, keyed by (epoch, rank)
