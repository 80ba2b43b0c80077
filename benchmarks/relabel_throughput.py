"""Relabel throughput: a bare single-process loop against srel_ray's Ray Data pipeline, at one torch thread for the
teacher in both, on a set of CIFAR-10 images.

    python benchmarks/relabel_throughput.py [--width 128] [--ipc 10] [--epochs 10 40] [--repeats 3]

The set: IPC random real CIFAR-10 training images per class (../shared/data/cifar10, as the random-real baseline
draws them), stored as srel_ray stores every set (PNG per image). Teacher: a randomly initialised BN ConvNet (depth
3, width 128 as in jobs/configs/cifar10.yaml), 10 classes, 32 px; one view per image per epoch, teacher batches of
256, fp16 logits, as that config.

``bare``: load the teacher, decode the set's images once, then per epoch draw every image's views, render them,
run the teacher and write the epoch's Parquet file. ``srel_ray``: ``run_relabel`` with one labeling actor of one
thread on a local Ray cluster started once (the pipeline's CPU tasks render views beside it, on the second core).
Both are timed at two epoch counts, so the fixed start-up cost and the per-view cost separate (a line through the
two points). Writes benchmarks/results/relabel_throughput.json.
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
from srel_ray.core.recover import freeze
from srel_ray.core.relabel import teacher_logits, view_pixels, views_for
from srel_ray.core.views import Views
from srel_ray.storage import files, sets
from srel_ray.data.real import load_dataset, random_real_indices
from srel_ray.teacher import Teacher, load_teacher


def make_config(epochs: int, ipc: int, data_path: str) -> Config:
    return from_dict({
        "data": {"name": "parquet", "path": data_path, "image_size": 32, "channels": 3, "hflip": True},
        "recover": {"ipc": ipc},
        "relabel": {"epochs": epochs, "views_per_epoch": 1, "batch_size": 256, "logits_dtype": "float16"},
        "resources": {"relabel_actors": 1, "threads_per_worker": 1, "cpus_per_actor": 1.0, "use_gpu": False},
    }).validate()


def make_set(cfg: Config, teacher: Teacher, set_dir: str) -> None:
    """IPC random real training images per class, written and described as srel_ray's random-real baseline."""
    data = load_dataset(cfg.data)
    ipc = cfg.recover.ipc
    indices = random_real_indices(data.labels("train"), data.num_classes, ipc, cfg.seed)
    sets.write_image_unit(set_dir, sets.unit_marker(set_dir, "unit-000000"), [(c, i) for c in range(data.num_classes) for i in range(ipc)],
                      data.images_at("train", indices))
    sets.write_manifest(set_dir, kind="random_real", dataset=data.name, class_names=teacher.class_names, ipc=ipc,
                        channels=3, image_size=32,
                        normalization={"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
                        teacher=teacher.describe(), config=to_dict(cfg))


def bare_relabel(teacher_path: str, set_dir: str, cfg: Config, out: str) -> None:
    """The whole relabel in one process, written out plainly."""
    r = cfg.relabel
    teacher = load_teacher(teacher_path)
    model = freeze(teacher.build())
    info = sets.read_set(set_dir)
    images = sets.read_images(set_dir, info.num_classes, info.ipc, info.channels)  # decoded once
    n, (height, width) = len(images), images.shape[-2:]
    for epoch in range(r.epochs):
        views = [views_for(cfg.seed, i, epoch, r.views_per_epoch, height, width, r.crop_scale, cfg.data.hflip)
                 for i in range(n)]
        batch = Views(torch.cat([v.boxes for v in views]), torch.cat([v.flips for v in views]))
        pixels = view_pixels(images.repeat_interleave(r.views_per_epoch, 0), batch, cfg.data.image_size,
                             teacher.norm)
        logits = teacher_logits(model, pixels, r.batch_size, "cpu")
        image_id = np.repeat(np.arange(n, dtype=np.int32), r.views_per_epoch)
        boxes = batch.boxes.numpy().astype(np.int32)
        sets.write_label_epoch(out, epoch, {
            "image_id": image_id, "label": image_id // info.ipc, "epoch": np.full(len(image_id), epoch, np.int32),
            "view": np.tile(np.arange(r.views_per_epoch, dtype=np.int32), n),
            "top": boxes[:, 0], "left": boxes[:, 1], "height": boxes[:, 2], "width": boxes[:, 3],
            "flip": batch.flips.numpy(), "logits": logits.numpy()}, info.num_classes, r.logits_dtype, r.top_k)


def srel_ray_relabel(teacher_path: str, set_dir: str, cfg: Config) -> None:
    from srel_ray.distributed.relabel import run_relabel

    files.remove(files.join(set_dir, "labels"))  # a fresh relabel each time (finished epochs would be skipped)
    run_relabel(cfg, teacher_path, sets.read_set(set_dir), use_gpu=False)


def compare_labels(a: str, b: str, epochs: int) -> dict:
    """Views equal exactly; logits (stored fp16) differ at most by this much."""
    same_views, diff = True, 0.0
    for e in range(epochs):
        x, y = sets.read_label_epoch(a, e), sets.read_label_epoch(b, e)
        same_views &= bool(torch.equal(x.image_index, y.image_index) and torch.equal(x.views.boxes, y.views.boxes)
                           and torch.equal(x.views.flips, y.views.flips))
        diff = max(diff, float((x.logits.float() - y.logits.float()).abs().max()))
    return {"views_identical": same_views, "max_abs_logit_difference": diff}


def line(points: list[tuple[float, float]]) -> dict:
    """Least-squares seconds = fixed + per_view * views."""
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    return {"fixed_seconds": float(intercept), "seconds_per_view": float(slope)}


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, nargs=2, default=[10, 40], help="the two label-epoch counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(harness.REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--max-busy", type=float, default=0.5, help="wait for other work to take fewer cores")
    parser.add_argument("--wait", type=float, default=30.0, help="... for at most this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bare loop runs the teacher at the thread count of one labeling actor

    work = Path(tempfile.mkdtemp(prefix="srel-bench-relabel-"))
    teacher_path = str(work / "teacher.pt")
    teacher = measure.random_teacher(Path(teacher_path), width=args.width)
    small, large = args.epochs
    configs = {e: make_config(e, args.ipc, args.data) for e in (small, large)}
    set_dir = str(work / "set")
    make_set(configs[small], teacher, set_dir)
    images = teacher.num_classes * args.ipc
    workers = measure.start_ray()

    variants = {}
    for e in (small, large):
        variants[f"bare_{e}_epochs"] = (lambda e=e: bare_relabel(teacher_path, set_dir, configs[e],
                                                                 str(work / f"bare-{e}")))
        variants[f"srel_ray_{e}_epochs"] = lambda e=e: srel_ray_relabel(teacher_path, set_dir, configs[e])
    print(f"relabel: {images} images x {args.epochs} epochs, {args.repeats} repeats; work in {work}")
    samples = measure.interleaved(variants, args.repeats, max_busy=args.max_busy, wait=args.wait)
    agreement = compare_labels(str(work / f"bare-{small}"), set_dir, small)  # epochs both runs wrote
    shutil.rmtree(work)

    views = {e: images * e for e in (small, large)}
    rate = {name: harness.rates(s, views[int(name.split("_")[-2])]) for name, s in samples.items()}
    per_repeat, fits, cpu_fits = [], {"bare": [], "srel_ray": []}, {"bare": [], "srel_ray": []}
    for r in range(args.repeats):
        row = {}
        for e in (small, large):
            row[f"overhead_{e}_epochs"] = (samples[f"srel_ray_{e}_epochs"][r]["seconds"]
                                           / samples[f"bare_{e}_epochs"][r]["seconds"] - 1)
        for kind in fits:
            fits[kind].append(line([(views[e], samples[f"{kind}_{e}_epochs"][r]["seconds"]) for e in (small, large)]))
            cpu_key = "driver_cpu_seconds" if kind == "bare" else "cpu_seconds"  # bare: its process alone
            cpu_fits[kind].append(line([(views[e], samples[f"{kind}_{e}_epochs"][r][cpu_key])
                                        for e in (small, large)]))
        row["marginal_overhead"] = fits["srel_ray"][-1]["seconds_per_view"] / fits["bare"][-1]["seconds_per_view"] - 1
        per_repeat.append(row)
    cpu = {name: harness.median_range([x["driver_cpu_seconds" if name.startswith("bare") else "cpu_seconds"]
                                / views[int(name.split("_")[-2])] * 1e3 for x in s]) for name, s in samples.items()}
    summary = {
        "views_per_second": {k: v["median"] for k, v in rate.items()},
        **{f"overhead_{e}_epochs": harness.median_range([p[f"overhead_{e}_epochs"] for p in per_repeat])
           for e in (small, large)},
        "marginal_overhead_per_view": harness.median_range([p["marginal_overhead"] for p in per_repeat]),
        "fixed_seconds": {k: harness.median_range([f["fixed_seconds"] for f in v]) for k, v in fits.items()},
        "ms_per_view_marginal": {k: harness.median_range([f["seconds_per_view"] * 1e3 for f in v])
                                 for k, v in fits.items()},
        "cpu_ms_per_view": cpu,  # every process involved: what the work costs whatever else runs meanwhile
        "cpu_ms_per_view_marginal": {k: harness.median_range([f["seconds_per_view"] * 1e3 for f in v])
                                     for k, v in cpu_fits.items()},
        "cpu_fixed_seconds": {k: harness.median_range([f["fixed_seconds"] for f in v]) for k, v in cpu_fits.items()},
        "cpu_seconds_by_role": {name: measure.cpu_by_role(s) for name, s in samples.items()},
        "target": {"overhead": "< 0.10"},
        "agreement_bare_vs_srel_ray": agreement,
    }
    setup = {"teacher": {"arch": "convnet", "width": args.width, "depth": 3, "weights": "random init (seeded)",
                         "num_classes": 10, "input": [3, 32, 32]},
             "set": f"random real CIFAR-10 training images, IPC {args.ipc}", "images": images,
             "epochs": args.epochs, "views_per_epoch": 1, "batch_size": 256, "logits_dtype": "float16",
             "teacher_threads": 1, "relabel_actors": 1, "repeats": args.repeats}
    harness.write_result("relabel_throughput", {"setup": setup, "summary": summary, "rates": rate,
                                               "per_repeat": per_repeat, "samples": samples}, args.out, workers)
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
