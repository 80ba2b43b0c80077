"""How recovery and relabel cost grows with IPC and with the number of classes; peak resident memory of every
actor; soft-label bytes per image per epoch.

    python benchmarks/cost_growth.py [--width 128] [--iterations 4] [--epochs 10] [--repeats 2]

Points: IPC 10, 20, 40 at 10 classes, and 10, 20, 40 classes at IPC 10 (the 10 x 10 point is shared). CIFAR-10 has
only 10 classes, so the class axis uses randomly initialised BN ConvNet teachers (depth 3, width 128, 32 px)
with 10, 20 and 40 outputs: recovery and relabel cost do not depend on the weights, and the same teacher shape
is used at every point. Units as in jobs/configs/cifar10.yaml (10 classes x 10 images), so a point with N images
has N / 100 units of 100 images.

Each point runs srel_ray's recover (one actor, one thread) and then relabels the set it recovered (one labeling
actor, one thread, one view per image per epoch, fp16 logits), on a local Ray cluster started once; points are
interleaved, their order rotated per repeat. A sampler reads the kernel's peak RSS (VmHWM) and the CPU time of
every process of the cluster, the peaks reset before each stage. Writes benchmarks/results/cost_growth.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import harness
import measure
import numpy as np
import torch

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.storage import sets

# The processes each stage starts (an actor of the stage before can linger while Ray tears it down: not counted),
# and the ones every stage shares.
ROLES = {"recover": ("RecoveryWorker", "driver", "raylet", "gcs_server"),
         "relabel": ("MapWorker", "driver", "raylet", "gcs_server")}


def make_config(ipc: int, iterations: int, epochs: int) -> Config:
    return from_dict({
        "data": {"name": "parquet", "image_size": 32, "channels": 3, "hflip": True},
        "recover": {"ipc": ipc, "iterations": iterations, "classes_per_unit": 10, "ipc_per_unit": 10},
        "relabel": {"epochs": epochs, "views_per_epoch": 1, "batch_size": 256, "logits_dtype": "float16"},
        "resources": {"recover_actors": 1, "relabel_actors": 1, "threads_per_worker": 1, "cpus_per_actor": 1.0,
                      "use_gpu": False},
    }).validate()


def recover_and_relabel(cfg: Config, teacher_path: str, set_dir: str, quiet: dict) -> dict:
    """Both stages on one point, each timed with its own peak-memory window."""
    from srel_ray.distributed.recover import run_recover
    from srel_ray.distributed.relabel import run_relabel
    from srel_ray.teacher import load_teacher

    teacher = load_teacher(teacher_path)
    out = {}
    out["recover"] = measure.timed(lambda: _none(run_recover(cfg, teacher_path, set_dir, teacher.num_classes, False)),
                                  **quiet)
    out["recover"]["peak_rss_mb"] = measure.peaks_by_role(out["recover"]["processes"], ROLES["recover"])
    sets.write_manifest(set_dir, kind="condensed", dataset="cifar10-shaped", class_names=teacher.class_names,
                        ipc=cfg.recover.ipc, channels=3, image_size=32,
                        normalization={"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
                        teacher=teacher.describe(), config=to_dict(cfg))
    info = sets.read_set(set_dir)
    out["relabel"] = measure.timed(lambda: _none(run_relabel(cfg, teacher_path, info, False)), **quiet)
    out["relabel"]["peak_rss_mb"] = measure.peaks_by_role(out["relabel"]["processes"], ROLES["relabel"])
    out["label_bytes_per_image_per_epoch"] = sets.label_bytes(set_dir) / (info.num_classes * info.ipc
                                                                          * cfg.relabel.epochs)
    shutil.rmtree(set_dir)
    return out


def _none(_result: dict) -> None:
    """The stages' own reports are not needed here (and would bloat the samples)."""


def fit(images: list[int], seconds: list[float]) -> dict:
    """seconds = fixed + per_image * images, least squares; r2 and the largest residual say how linear it is."""
    x, y = np.array(images, float), np.array(seconds, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    r2 = 1 - float((residual**2).sum() / max(1e-12, ((y - y.mean()) ** 2).sum()))
    return {"fixed_seconds": float(intercept), "seconds_per_image": float(slope), "r2": r2,
            "max_abs_residual_seconds": float(np.abs(residual).max())}


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=4, help="recovery iterations per unit")
    parser.add_argument("--epochs", type=int, default=10, help="label epochs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-busy", type=float, default=0.5, help="wait for other work to take fewer cores")
    parser.add_argument("--wait", type=float, default=30.0, help="... for at most this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet = {"max_busy": args.max_busy, "wait": args.wait}

    work = Path(tempfile.mkdtemp(prefix="srel-bench-growth-"))
    points = [(10, 10), (10, 20), (10, 40), (20, 10), (40, 10)]  # (classes, ipc)
    teachers = {c: str(work / f"teacher-{c}.pt") for c in sorted({c for c, _ in points})}
    for c, path in teachers.items():
        measure.random_teacher(Path(path), num_classes=c, width=args.width)
    workers = measure.start_ray()
    samples: dict[str, list[dict]] = {f"{c}x{ipc}": [] for c, ipc in points}
    for r in range(args.repeats):
        for c, ipc in points[r % len(points):] + points[: r % len(points)]:
            result = recover_and_relabel(make_config(ipc, args.iterations, args.epochs), teachers[c],
                                         str(work / f"set-{c}x{ipc}-{r}"), quiet)
            result["repeat"] = r
            samples[f"{c}x{ipc}"].append(result)
            print(f"  repeat {r} {c:3d} classes x IPC {ipc:3d}: recover {result['recover']['seconds']:6.1f} s, "
                  f"relabel {result['relabel']['seconds']:6.1f} s, "
                  f"{result['label_bytes_per_image_per_epoch']:.1f} label B/image/epoch", flush=True)
    shutil.rmtree(work)

    def median(key: str, stage: str, what: str = "seconds") -> float:
        return harness.median_range([s[stage][what] for s in samples[key]])["median"]

    axes = {"ipc": [(10, 10), (10, 20), (10, 40)], "classes": [(10, 10), (20, 10), (40, 10)]}
    growth = {}
    for axis, pts in axes.items():
        growth[axis] = {}
        for stage in ("recover", "relabel"):
            seconds = [median(f"{c}x{ipc}", stage) for c, ipc in pts]
            cpu = [median(f"{c}x{ipc}", stage, "cpu_seconds") for c, ipc in pts]  # robust to a busy machine
            growth[axis][stage] = {"points": [{"classes": c, "ipc": ipc, "images": c * ipc, "median_seconds": s,
                                               "median_cpu_seconds": u} for (c, ipc), s, u in zip(pts, seconds, cpu)],
                                   "fit": fit([c * ipc for c, ipc in pts], seconds),
                                   "fit_cpu": fit([c * ipc for c, ipc in pts], cpu)}
    peaks = {stage: {role: max((p for s in samples.values() for x in s for p in x[stage]["peak_rss_mb"][role]),
                               default=None) for role in ROLES[stage]} for stage in ("recover", "relabel")}
    actor = {"recover": "RecoveryWorker", "relabel": "MapWorker"}
    peaks_by_point = {key: {stage: max((p for x in s for p in x[stage]["peak_rss_mb"][actor[stage]]), default=None)
                            for stage in actor} for key, s in samples.items()}
    label_bytes = {key: s[0]["label_bytes_per_image_per_epoch"] for key, s in samples.items()}
    summary = {"growth": growth, "peak_rss_mb": peaks, "peak_rss_mb_by_point": peaks_by_point,
               "label_bytes_per_image_per_epoch": label_bytes}
    setup = {"teacher": {"arch": "convnet", "width": args.width, "depth": 3, "weights": "random init (seeded)",
                         "input": [3, 32, 32], "num_classes": sorted(teachers)},
             "points_classes_x_ipc": [f"{c}x{ipc}" for c, ipc in points], "recover_iterations": args.iterations,
             "unit": "10 classes x 10 images", "label_epochs": args.epochs, "views_per_epoch": 1,
             "logits_dtype": "float16", "actors": 1, "threads_per_worker": 1, "repeats": args.repeats}
    harness.write_result("cost_growth", {"setup": setup, "summary": summary, "samples": samples}, args.out,
                         workers)
    for axis, stages in growth.items():
        for stage, g in stages.items():
            print(f"{stage} vs {axis}: " + ", ".join(f"{p['images']} img {p['median_seconds']:.1f} s "
                                                     f"({p['median_cpu_seconds']:.1f} CPU s)" for p in g["points"])
                  + f"; fit {g['fit']}; CPU fit {g['fit_cpu']}")
    print(f"peak RSS (MB): {peaks}\nlabel bytes per image per epoch: {label_bytes}")


if __name__ == "__main__":
    main()
