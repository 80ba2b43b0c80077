"""The peak memory and time of a file-index reader's first open (an ImageFolder tree listed, WebDataset shards'
tar headers read, into the index every later open reads), and of an open that reads the index, at ImageNet-21K's
class count.

    python benchmarks/index_memory.py --out /work/runs/index-memory [--source imagefolder|webdataset]
        [--classes 21841] [--per-class 50] [--label after]

Data, made once under OUT: for ``imagefolder`` a tree of empty ``.jpg`` files (listing reads names, not bytes),
class folders named by ImageNet wnids from timm's offline lists, ``--per-class`` training images and one held-out
image per class in ``val/<wnid>/``; for ``webdataset`` tar shards of ``SHARD_SAMPLES`` samples, each a one-byte
``.jpg`` and a ``.cls`` label (the first open reads headers and labels, not images), the same counts. Each
measurement opens the source in a fresh Python process (this machine's filesystem, the index beside the data):
``first`` removes the index and makes it, ``again`` reads it; then the images per class are counted, as the
driver's start-up checks do. Memory is the process's peak resident memory (VmHWM) over the open and the count, and
its rise over what the process held before the open (its imports). Until 2026-12-08 every open read the index's
label column (8 B an image) and the count was taken from it; now the open reads none and the count reads the
column a part at a time (the row count printed is read after the peak).

For a before/after pair run the script with the old checkout first on the path (``srel_ray`` in each row says
which one ran): ``PYTHONPATH=OLD python NEW/benchmarks/index_memory.py --label before ...``.
Results: benchmarks/results/index_memory.json (a run replaces its own point's rows) and the block between the
index-memory markers of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import harness
import scale_classes

RESULT = "index_memory"
DOC_BLOCK = harness.DocBlock("index-memory", "## Measured: memory of a file index's first open")
SHARD_SAMPLES = 5_000  # samples per tar shard (ImageNet-21K's WebDataset exports hold a few thousand)


def make_tree(root: Path, classes: int, per_class: int) -> Path:
    """The tree of empty image files, made once (its ``done`` file is written last)."""
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for wnid in scale_classes.wnids(classes):
        for split, count in (("train", per_class), ("val", 1)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{wnid}_{i}.jpg").touch()
    (root / "done").touch()
    return root


def make_shards(root: Path, classes: int, per_class: int) -> Path:
    """Train and validation tar shards of one-byte images and .cls labels, made once (``done`` written last)."""
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(scale_classes.wnids(classes)))
    for split, per in (("train", per_class), ("validation", 1)):
        labels = [c for c in range(classes) for _ in range(per)]
        for shard, first in enumerate(range(0, len(labels), SHARD_SAMPLES)):
            with tarfile.open(root / f"imagenet-{split}-{shard:05d}.tar", "w") as tar:
                for i, label in enumerate(labels[first:first + SHARD_SAMPLES], start=first):
                    for ext, data in (("jpg", b"\xff"), ("cls", str(label).encode())):
                        info = tarfile.TarInfo(f"{split}_{i:08d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    (root / "done").touch()
    return root


def status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


def child(source: str, tree: Path, fresh: bool) -> None:
    """One open in this process; prints its row."""
    import srel_ray
    from srel_ray.config import DataConfig
    from srel_ray.data.real import load_dataset

    if fresh:
        shutil.rmtree(tree / ".srel_ray_index", ignore_errors=True)
    before = status_kb("VmRSS")
    began = time.perf_counter()
    data = load_dataset(DataConfig(name=source, path=str(tree), image_size=8))
    if hasattr(data, "class_sizes"):
        data.class_sizes()  # what the driver's start-up checks ask of the open data
    else:  # a checkout before 2026-12-08: the checks counted the label column that every open read
        from srel_ray.data.real import class_sizes

        class_sizes(data)
    seconds = time.perf_counter() - began
    peak = status_kb("VmHWM")
    print(json.dumps({"images": len(data.labels("train")), "classes": data.num_classes,
                      "seconds": round(seconds, 1), "start_mb": round(before / 1024, 1),
                      "peak_mb": round(peak / 1024, 1), "rise_mb": round((peak - before) / 1024, 1),
                      "srel_ray": str(Path(srel_ray.__file__).parents[1])}))


def measure_open(source: str, tree: Path, fresh: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--source", source, "--child", str(tree)]
                         + (["--fresh"] if fresh else []),
                         capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = ["| source | code | classes | training images | open | seconds | peak resident MB | rise MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["source"], r["images"], r["label"] != "before", r["open"] != "first")):
        lines.append(f"| {r['source']} | {r['label']} ({r['revision'][:7]}) | {r['classes']:,} | {r['images']:,} | "
                     f"{r['open']} | "
                     f"{r['seconds']:.1f} | {r['peak_mb']:,.0f} | {r['rise_mb']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="the data (keep out of the repo)")
    p.add_argument("--source", choices=("imagefolder", "webdataset"), default="imagefolder")
    p.add_argument("--classes", type=int, default=21841)
    p.add_argument("--per-class", type=int, default=50, help="training images per class")
    p.add_argument("--label", default="after", help="names this code's rows in the table (e.g. 'before')")
    p.add_argument("--results", type=Path, default=harness.RESULTS / f"{RESULT}.json")
    p.add_argument("--docs", type=Path, default=harness.REPO / "docs" / "scaling.md")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.source, args.child, args.fresh)
    if args.out is None:
        raise SystemExit("--out is required")
    if args.classes > max(scale_classes.SYNSETS):
        raise SystemExit(f"--classes: at most {max(scale_classes.SYNSETS):,} (timm's largest synset list)")
    make = make_tree if args.source == "imagefolder" else make_shards
    data = make(args.out / f"{args.source}-{args.classes}x{args.per_class}", args.classes, args.per_class)
    measured = [{"open": "first", **measure_open(args.source, data, fresh=True)},
                {"open": "again", **measure_open(args.source, data, fresh=False)}]
    revision = subprocess.run(["git", "-C", measured[0]["srel_ray"], "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # the checkout that ran, which need not be this script's
    new = [{"source": args.source, "label": args.label, "revision": revision, **m} for m in measured]
    for row in new:
        print(json.dumps(row), flush=True)
    old = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    point = (args.source, args.label, args.classes, new[0]["images"])
    rows = [r for r in old if (r["source"], r["label"], r["classes"], r["images"]) != point]
    harness.write_result(RESULT, {"rows": rows + new}, args.results)
    DOC_BLOCK.write(args.docs, markdown(rows + new))
    print(markdown(rows + new))


if __name__ == "__main__":
    main()
