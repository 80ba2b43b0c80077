"""Squeeze's augmentation at 128 px: a teacher trained with the light pad-and-crop against one trained with
torchvision's RandomResizedCrop + flip (what squeeze uses from 128 px up), same data, seed, model and schedule;
test top-1 of each. Plain PyTorch on the project's core functions, no Ray.

    python benchmarks/squeeze_augment.py --per-class 200 --test 1000 --epochs 4 --out benchmarks/results/squeeze_augment.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from srel_ray.config import DataConfig
from srel_ray.core.seeding import STREAM_TEACHER_DATA, STREAM_TEACHER_INIT, generator, seeded_init
from srel_ray.core.student import count_correct, light_augment, squeeze_augment
from srel_ray.data.real import load_dataset, random_real_indices
from srel_ray.models import create_model

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def train(images, labels, test_images, test_labels, norm, augment, epochs: int, seed: int = 0) -> float:
    with seeded_init(seed, STREAM_TEACHER_INIT):
        model = create_model("convnet", num_classes=10, in_channels=3, image_size=images.shape[-1], width=16, depth=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        model.train()
        gen = generator(seed, STREAM_TEACHER_DATA, epoch)
        order = torch.randperm(len(labels), generator=gen)
        for rows in order.split(64):
            x = augment(norm.normalize(images[rows].float() / 255), gen)
            loss = F.cross_entropy(model(x), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    batches = ((norm.normalize(x.float() / 255), y) for x, y in zip(test_images.split(256), test_labels.split(256)))
    counts = count_correct(model, batches)
    return counts["top1"] / counts["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/squeeze_augment.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(name="parquet", path=str(CIFAR), image_size=args.size))
    rows = random_real_indices(data.labels("train"), 10, args.per_class, seed=0)
    images, labels = data.images_at("train", rows), data.labels("train")[rows]
    test_rows = torch.arange(args.test)
    test_images, test_labels = data.images_at("test", test_rows), data.labels("test")[test_rows]
    norm = data.norm
    results = {}
    for name, augment in {"light pad-and-crop": lambda x, g: light_augment(x, g, pad=args.size // 8),
                          "RandomResizedCrop + flip": squeeze_augment}.items():
        began = time.perf_counter()
        results[name] = {"test_top1": train(images, labels, test_images, test_labels, norm, augment, args.epochs),
                         "seconds": time.perf_counter() - began}
        print(name, results[name], flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
