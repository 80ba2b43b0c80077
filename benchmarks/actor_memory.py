"""Memory of one recover actor's optimisation step and one relabel actor's teacher batch, measured on the CPU.

The tensors a GPU actor holds (teacher weights, a unit's images, the activations kept for the backward pass to the
pixels, the BN-statistics hooks) are the same on the CPU; the CPU run leaves out CUDA's context and cuDNN workspaces.
Reports the peak resident-memory growth (MiB) over the process after the teacher is built:

    python benchmarks/actor_memory.py --stage recover --arch resnet18 --classes 1000 --image-size 224 --batch 100
    python benchmarks/actor_memory.py --stage relabel --arch resnet18 --classes 1000 --image-size 224 --batch 512
"""

from __future__ import annotations

import argparse
import json
import resource

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    from srel_ray.config import Config, DataConfig, RecoverConfig
    from srel_ray.core.normalization import Normalization
    from srel_ray.core.recover import Recovery, Unit, freeze, recover_unit
    from srel_ray.core.recover_terms import recover_terms
    from srel_ray.core.relabel import teacher_logits
    from srel_ray.models import create_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["recover", "relabel"], required=True,
                   help="one per process: the peak resident memory is a high-water mark")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=100, help="recover: images in one unit; relabel: views in one "
                                                          "teacher forward pass")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    teacher = freeze(create_model(args.arch, num_classes=args.classes, in_channels=3, image_size=args.image_size))
    base = peak_mb()
    if args.stage == "recover":  # one unit of `batch` classes x 1 image, two steps (the second reuses buffers)
        norm = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        unit = Unit(index=0, classes=tuple(range(args.batch)), ipc_start=0, ipc_stop=1)
        cfg = Config(data=DataConfig(image_size=args.image_size), recover=RecoverConfig(iterations=2, jitter=32))
        recover_unit(Recovery.of(cfg, [teacher], norm), unit, recover_terms(cfg.recover))
    else:
        with torch.no_grad():
            teacher_logits(teacher, torch.randn(args.batch, 3, args.image_size, args.image_size), args.batch, "cpu")
    print(json.dumps({"stage": args.stage, "arch": args.arch, "classes": args.classes,
                      "image_size": args.image_size, "batch": args.batch,
                      "teacher_weights_mib": round(sum(t.numel() for t in teacher.parameters()) * 4 / 2**20, 1),
                      "process_after_teacher_mib": round(base, 1),
                      "peak_growth_mib": round(peak_mb() - base, 1)}))


if __name__ == "__main__":
    main()
