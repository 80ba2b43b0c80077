"""How the whole pipeline's memory and time grow with the number of classes: 1,000, 10,450 and 21,841.

    python benchmarks/scale_classes.py --out /work/runs/scale [--classes 1000 10450 21841] [--ipc 1 2]
        [--methods sre2l edc] [--per-class 4] [--memory-limit-gb 18] [--label before]

Each point makes (once, seeded, kept in OUT/data-<classes>/) a synthetic Parquet dataset whose class names are
ImageNet wnids from timm's offline synset lists (1K, 21K-P winter-21, 22K), ``--per-class`` 8 px training images
and one test image per class, and runs ``srel-ray run`` on it in its own process at a tiny budget: a ConvNet of
width 8, depth 1; one squeeze epoch; 2 recovery iterations; 2 label epochs with ``top_k`` 10; one student epoch
each for the condensed set and both baselines. A sampler polls every process of the run (the ``srel-ray`` driver
and every Ray process below it) for its peak resident memory (the kernel's VmHWM) and groups them by kind:
driver, recover actor, relabel actor (Ray Data's map workers), Train worker, Ray Data read/map tasks, Ray's own
daemons. A run whose processes together pass ``--memory-limit-gb`` is stopped and recorded as such (a 24 GB
machine cannot hold it), so a point that would not fit does not take the machine down.

Results: benchmarks/results/scale_classes.json (one row per point and ``--label``; a run replaces only the rows
of the points it measures), and the table between the scale markers of docs/scaling.md. Targets (issue 18): the driver's peak at
21,841 classes within 1.25x of its peak at 1,000; each worker's peak growing no faster than its share of the work;
seconds per class within 2x from 1,000 to 21,841 classes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import harness
import measure
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

RESULT = "scale_classes"
DOC_BLOCK = harness.DocBlock("scale-classes", "## Measured: memory and time from 1,000 to 21,841 classes")
SYNSETS = {1000: "imagenet_synsets.txt", 10450: "imagenet21k_miil_w21_synsets.txt", 21841: "imagenet22k_synsets.txt"}
IMAGE_SIZE = 8
STAGES = ("squeeze", "recover", "relabel", "evaluate")
# Process kinds by the title Ray gives each process (measure.role); anything else is "other".
KINDS = {"RecoveryWorker": "recover actor", "MapWorker": "relabel actor", "RayTrainWorker": "Train worker",
         "ClassSumsShard": "class-stats accumulator", "raylet": "Ray daemons", "gcs_server": "Ray daemons",
         "dashboard": "Ray daemons", "DashboardAgent": "Ray daemons", "log_monitor": "Ray daemons",
         "runtime_env": "Ray daemons"}
DATA_TASKS = ("ReadParquet", "Read", "MapBatches", "Map(", "split", "Split", "RandomShuffle", "_")


def wnids(num_classes: int) -> list[str]:
    """The first ``num_classes`` wnids of the smallest timm synset list that holds that many."""
    size = min(n for n in SYNSETS if n >= num_classes)
    text = resources.files("timm.data._info").joinpath(SYNSETS[size]).read_text()
    return text.split()[:num_classes]


def make_dataset(folder: Path, num_classes: int, per_class: int) -> Path:
    """train.parquet and test.parquet of seeded random 8 px PNGs, a class-dependent colour cast so a teacher
    can learn something; written once and reused."""
    if (folder / "test.parquet").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    names = wnids(num_classes)
    rng = np.random.default_rng(num_classes)
    tint = rng.integers(0, 256, size=(num_classes, 3))
    for split, count in (("train", per_class), ("test", 1)):
        labels = np.repeat(np.arange(num_classes), count)
        pixels = rng.integers(0, 256, size=(len(labels), IMAGE_SIZE, IMAGE_SIZE, 3))
        pixels = ((pixels + tint[labels][:, None, None, :]) // 2).astype(np.uint8)
        images = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        table = pa.table({"image": images, "label": labels.astype(np.int16),
                          "class_name": [names[c] for c in labels]})
        pq.write_table(table, folder / f"{split}.parquet.tmp", row_group_size=4096)
        (folder / f"{split}.parquet.tmp").replace(folder / f"{split}.parquet")
    return folder


def run_config(data: Path, ipc: int, method: str, mlflow_uri: str) -> dict:
    return {
        "seed": 0,
        "method": method,
        "data": {"name": "parquet", "path": str(data), "image_size": IMAGE_SIZE, "channels": 3},
        "teacher": {"source": "squeeze", "arch": "convnet", "arch_kwargs": {"width": 8, "depth": 1}, "epochs": 1,
                    "batch_size": 256},
        "recover": {"ipc": ipc, "iterations": 2, "classes_per_unit": 100, "ipc_per_unit": 1},
        "relabel": {"epochs": 2, "views_per_epoch": 1, "batch_size": 512, "top_k": 10},
        "evaluate": {"arch": "convnet", "arch_kwargs": {"width": 8, "depth": 1}, "epochs": 1, "batch_size": 256,
                     "eval_interval": 0, "baselines": True},
        "resources": {"num_cpus": 2, "use_gpu": False, "train_workers": 1, "recover_actors": 2,
                      "relabel_actors": 1, "threads_per_worker": 1},
        "tracking": {"tracking_uri": mlflow_uri, "experiment": "scale_classes"},
    }


def kind(role: str) -> str:
    if role == "driver":
        return "driver"
    for marker, name in KINDS.items():
        if marker in role:
            return name
    if any(role.startswith(prefix) for prefix in DATA_TASKS):
        return "Ray Data task"
    return "other"


def run_point(out: Path, data: Path, num_classes: int, ipc: int, method: str, limit_bytes: int) -> dict:
    """One ``srel-ray run`` in its own process, sampled every 0.5 s; stopped if it passes the memory limit."""
    run_dir = out / f"run-{num_classes}-{method}-ipc{ipc}"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    config = out / f"config-{num_classes}-{method}-ipc{ipc}.yaml"
    config.write_text(yaml.safe_dump(run_config(data, ipc, method, f"sqlite:///{out / 'mlflow.db'}")))
    log = open(out / f"log-{num_classes}-{method}-ipc{ipc}.txt", "w")
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    code = "import sys; from srel_ray.cli import main; sys.exit(main(sys.argv[1:]))"
    sampler = measure.ProcessSampler()
    sampler.start()
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--config", str(config), "--out", str(run_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stopped = None
    while proc.poll() is None:
        time.sleep(0.5)
        total = _resident_bytes(measure.descendants(measure.process_stats(), proc.pid))
        if total > limit_bytes:
            stopped = f"stopped: its processes held {total / 2**30:.1f} GiB together (limit {limit_bytes / 2**30:.0f})"
            _kill_tree(proc.pid)
            break
    proc.wait()
    seconds = time.perf_counter() - began
    rows = sampler.stop()["processes"]
    peaks: dict[str, float] = {}
    for row in rows:
        name = "driver" if row["pid"] == proc.pid else kind(row["role"])
        peaks[name] = max(peaks.get(name, 0.0), row["peak_rss_mb"])
    stage_seconds = {}
    for stage in STAGES:
        record = run_dir / "stages" / f"{stage}.json"
        if record.exists():
            stage_seconds[stage] = round(json.loads(record.read_text())["seconds"], 1)
    outcome = stopped or ("finished" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see {log.name})")
    print(f"{num_classes:>6} classes, {method}, IPC {ipc}: {outcome} in {seconds:.0f} s; driver peak "
          f"{peaks.get('driver', 0):.0f} MB; stages {stage_seconds}", flush=True)
    return {"classes": num_classes, "ipc": ipc, "method": method, "outcome": outcome, "seconds": round(seconds, 1),
            "stage_seconds": stage_seconds, "peak_rss_mb": dict(sorted(peaks.items()))}


def _resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)
    return total


def _kill_tree(root: int) -> None:
    """The run's processes only (never `ray stop`, which would stop every cluster on the machine)."""
    for pid in reversed(measure.descendants(measure.process_stats(), root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def markdown(rows: list[dict]) -> str:
    kinds = ("driver", "recover actor", "relabel actor", "Train worker", "Ray Data task")
    lines = ["| code | classes | method | IPC | outcome | " + " | ".join(f"{k} MB" for k in kinds)
             + " | squeeze s | recover s | relabel s | evaluate s | ms per class |",
             "|---|---|---|---|---|" + "---|" * (len(kinds) + 5)]
    for r in sorted(rows, key=lambda r: (r["label"], r["method"], r["ipc"], r["classes"])):
        peaks = [f"{r['peak_rss_mb'].get(k, 0):,.0f}" for k in kinds]
        stages = [f"{r['stage_seconds'].get(s, float('nan')):.1f}" for s in STAGES]
        per_class = 1000 * sum(r["stage_seconds"].values()) / r["classes"] if r["outcome"] == "finished" else None
        lines.append(f"| {r['label']} ({r['revision'][:7]}) | {r['classes']:,} | {r['method']} | {r['ipc']} | "
                     f"{r['outcome']} | " + " | ".join(peaks) + " | " + " | ".join(stages)
                     + f" | {'n/a' if per_class is None else f'{per_class:.1f}'} |")
    return "\n".join(lines)


def main() -> None:
    harness.quiet_output()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="datasets and run folders (large: keep out of the repo)")
    p.add_argument("--classes", type=int, nargs="+", default=[1000, 10450, 21841])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=["sre2l", "edc"])
    p.add_argument("--per-class", type=int, default=4, help="training images per class (edc's RDED needs >= IPC)")
    p.add_argument("--memory-limit-gb", type=float, default=18.0)
    p.add_argument("--label", default="after", help="names this code's rows in the table (e.g. 'before')")
    p.add_argument("--results", type=Path, default=harness.RESULTS / f"{RESULT}.json")
    p.add_argument("--docs", type=Path, default=harness.REPO / "docs" / "scaling.md")
    args = p.parse_args()
    bad = [n for n in args.classes if n > max(SYNSETS)]
    if bad:
        raise SystemExit(f"--classes: at most {max(SYNSETS):,} (timm's largest synset list), got {bad}")
    args.out.mkdir(parents=True, exist_ok=True)
    revision = harness.git_revision()
    old = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    points = {(args.label, c, m, i) for c in args.classes for m in args.methods for i in args.ipc}
    rows = [r for r in old if (r["label"], r["classes"], r["method"], r["ipc"]) not in points]  # rerun points only
    for num_classes in args.classes:
        data = make_dataset(args.out / f"data-{num_classes}", num_classes, args.per_class)
        for method in args.methods:
            for ipc in args.ipc:
                row = run_point(args.out, data, num_classes, ipc, method, int(args.memory_limit_gb * 2**30))
                rows.append({"label": args.label, "revision": revision, **row})
                harness.write_result(RESULT, {"per_class": args.per_class, "image_size": IMAGE_SIZE, "rows": rows},
                                    args.results)
    text = markdown(rows)
    DOC_BLOCK.write(args.docs, text)
    print(text)


if __name__ == "__main__":
    main()
