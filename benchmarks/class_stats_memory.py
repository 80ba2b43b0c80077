"""Where EDC's per-class BN statistics (``recover.class_bn_weight > 0``) are held while they are made: the peak
memory of the driver and of the accumulator actors over one pass, at ImageNet-21K's class count.

    python benchmarks/class_stats_memory.py --out /work/runs/class-stats [--classes 21841] [--per-class 1]
        [--arch resnet18_small] [--batch-size 256] [--label after]

Data: scale_classes.py's synthetic Parquet dataset (ImageNet wnids from timm's offline lists, seeded 8 px PNGs,
``--per-class`` training images per class, made once in OUT/data-<classes>x<per class>/). Teacher: a randomly
initialised ``--arch`` at 8 px with one output per class (the sums' size depends on the BN layers' channels and
the class count, not on the weights; ResNet-18's BN layers have 4,800 channels: 75 KB of float64 sums and squares
per class, 1.7 GB at 21,841 classes). ``run_class_stats`` runs in this process on a local Ray cluster of 2 CPUs
(one mapping actor of one thread, teacher batches of ``--batch-size``, 256 by default), as the recover stage calls
it; a sampler polls every process every 0.2 s for its private resident memory (RssAnon) and for its peak resident
memory (VmHWM, reset at the start; it also counts the pages of Ray's shared object store a process has read, which
belong to the store). The driver's figures are their rise over what it held before the pass.

For a before/after pair run the script from each checkout (Ray's workers import srel_ray from the driver's
working directory; ``srel_ray`` in each row says which one ran):
``cd OLD && PYTHONPATH=OLD python NEW/benchmarks/class_stats_memory.py --label before ...``.
Results: benchmarks/results/class_stats_memory.json (a run replaces its own point's row) and the block between the
class-stats markers of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import harness
import measure
import scale_classes

RESULT = "class_stats_memory"
DOC_BLOCK = harness.DocBlock("class-stats-memory", "## Measured: memory of the per-class statistics pass")


def random_teacher(path: Path, arch: str, class_names: list[str]) -> None:
    from srel_ray.core.normalization import Normalization
    from srel_ray.core.seeding import seeded_init
    from srel_ray.models import create_model
    from srel_ray.teacher import Teacher, save_teacher

    size = scale_classes.IMAGE_SIZE
    with seeded_init(0, len(class_names)):
        model = create_model(arch, len(class_names), 3, size)
    save_teacher(Teacher(arch, {}, class_names, 3, size, Normalization(*measure.CIFAR10_NORM), model.state_dict()),
                 str(path))


def resident_bytes(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def mb(n: float) -> float:
    return round(n / 2**20, 1)


def measure_pass(data_dir: Path, teacher: Path, folder: Path, batch_size: int) -> dict:
    import srel_ray
    from srel_ray.config import from_dict
    from srel_ray.core.class_stats import bn_layers
    from srel_ray.data.real import load_dataset
    from srel_ray.distributed.class_stats import run_class_stats
    from srel_ray.teacher import load_teacher

    cfg = from_dict({
        "data": {"name": "parquet", "path": str(data_dir), "image_size": scale_classes.IMAGE_SIZE, "channels": 3},
        "relabel": {"batch_size": batch_size},
        "resources": {"relabel_actors": 1, "threads_per_worker": 1, "cpus_per_actor": 1.0, "use_gpu": False},
    }).validate()
    data = load_dataset(cfg.data)
    channels = sum(layer.num_features for layer in bn_layers(load_teacher(str(teacher)).build()))
    shutil.rmtree(folder, ignore_errors=True)
    sampler = measure.ProcessSampler(interval=0.2)  # resets every process's peak, this one's included
    start_rss, start_anon = resident_bytes(os.getpid()), measure.anon_rss(os.getpid())
    sampler.start()
    began = time.perf_counter()
    result = run_class_stats(cfg, data, [str(teacher)], [str(folder)], False)
    seconds = time.perf_counter() - began
    rows = sampler.stop()["processes"]
    driver = next(r for r in rows if r["role"] == "driver")

    def peaks(role: str, key: str) -> list[float]:  # by process, the one of largest private peak first
        return [r[key] for r in sorted(rows, key=lambda r: -r["peak_anon_mb"]) if role in r["role"]]

    return {"classes": data.num_classes, "images": len(data.labels("train")), "bn_channels": channels,
            "sums_mb": mb(data.num_classes * channels * 16), "seconds": round(seconds, 1),
            "driver_start_mb": mb(start_rss), "driver_peak_mb": driver["peak_rss_mb"],
            "driver_rise_mb": round(driver["peak_rss_mb"] - mb(start_rss), 1),
            "driver_private_start_mb": mb(start_anon), "driver_private_peak_mb": driver["peak_anon_mb"],
            "driver_private_rise_mb": round(driver["peak_anon_mb"] - mb(start_anon), 1),
            "accumulator_peaks_mb": peaks("ClassSumsShard", "peak_rss_mb"),
            "accumulator_private_peaks_mb": peaks("ClassSumsShard", "peak_anon_mb"),
            "mapper_peaks_mb": peaks("MapWorker", "peak_rss_mb"),
            "shards": result.get("shards", 0), "srel_ray": str(Path(srel_ray.__file__).parents[1])}


def markdown(rows: list[dict]) -> str:
    lines = ["| code | classes | images | teacher (BN channels) | sums MB | driver: private rise MB (VmHWM rise) | "
             "accumulators: count, private peak MB each (VmHWM) | mapping actor VmHWM MB | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["label"] != "before", r["classes"], r["images"])):
        acc = "none (the driver holds the sums)"
        if r["accumulator_peaks_mb"]:
            acc = f"{len(r['accumulator_peaks_mb'])}: " + ", ".join(
                f"{a:,.0f} ({p:,.0f})" for a, p in zip(r["accumulator_private_peaks_mb"], r["accumulator_peaks_mb"]))
        lines.append(f"| {r['label']} ({r['revision'][:7]}) | {r['classes']:,} | {r['images']:,} | "
                     f"{r['arch']} ({r['bn_channels']:,}) | {r['sums_mb']:,.0f} | "
                     f"{r['driver_private_rise_mb']:,.0f} ({r['driver_rise_mb']:,.0f}) | {acc} | "
                     f"{max(r['mapper_peaks_mb'], default=0):,.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    harness.quiet_output()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="dataset, teacher and statistics (keep out of the repo)")
    p.add_argument("--classes", type=int, default=21841)
    p.add_argument("--per-class", type=int, default=1, help="training images per class")
    p.add_argument("--arch", default="resnet18_small", help="the teacher's registered model")
    p.add_argument("--batch-size", type=int, default=256, help="images per teacher batch (relabel.batch_size)")
    p.add_argument("--label", default="after", help="names this code's row in the table (e.g. 'before')")
    p.add_argument("--results", type=Path, default=harness.RESULTS / f"{RESULT}.json")
    p.add_argument("--docs", type=Path, default=harness.REPO / "docs" / "scaling.md")
    args = p.parse_args()
    if args.classes > max(scale_classes.SYNSETS):
        raise SystemExit(f"--classes: at most {max(scale_classes.SYNSETS):,} (timm's largest synset list)")
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = scale_classes.make_dataset(args.out / f"data-{args.classes}x{args.per_class}", args.classes,
                                          args.per_class)
    teacher = args.out / f"teacher-{args.arch}-{args.classes}.pt"
    if not teacher.exists():
        random_teacher(teacher, args.arch, scale_classes.wnids(args.classes))
    ray_workers = measure.start_ray(num_cpus=2)
    measured = measure_pass(data_dir, teacher, args.out / f"stats-{args.label}", args.batch_size)
    revision = subprocess.run(["git", "-C", measured["srel_ray"], "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # the checkout that ran, which need not be this script's
    row = {"label": args.label, "revision": revision, "arch": args.arch, "batch_size": args.batch_size, **measured}
    print(json.dumps(row), flush=True)
    old = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    point = (args.label, args.classes, args.per_class, args.arch, args.batch_size)
    rows = [r for r in old
            if (r["label"], r["classes"], r["images"] // r["classes"], r["arch"], r["batch_size"]) != point]
    harness.write_result(RESULT, {"rows": rows + [row]}, args.results, ray_workers)
    DOC_BLOCK.write(args.docs, markdown(rows + [row]))
    print(markdown(rows + [row]))


if __name__ == "__main__":
    main()
