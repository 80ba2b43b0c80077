"""The peak memory and time of an ImageFolder tree's first listing (the index every later open reads), and of an
open that reads the index, at ImageNet-21K's class count.

    python benchmarks/folder_index_memory.py --out /work/runs/folder-index [--classes 21841] [--per-class 50]
        [--label after]

Data: a tree ``OUT/tree-<classes>x<per class>/`` of empty ``.jpg`` files (listing reads names, not bytes), class
folders named by ImageNet wnids from timm's offline lists, ``--per-class`` training images and one held-out image
per class in ``val/<wnid>/``; made once. Each measurement opens ``ImageFolderData`` in a fresh Python process
(this machine's filesystem, the index beside the tree): ``first`` removes the index and lists the tree, ``again``
reads the index. Memory is the process's peak resident memory (VmHWM) and its rise over what the process held
before the open (its imports); the process reads the index's label column either way (8 B an image).

For a before/after pair run the script with the old checkout first on the path (``srel_ray`` in each row says
which one ran): ``PYTHONPATH=OLD python NEW/benchmarks/folder_index_memory.py --label before ...``.
Results: benchmarks/results/folder_index_memory.json (a run replaces its own point's rows) and the block between
the folder-index markers of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness
import scale_classes

RESULT = "folder_index_memory"
DOC_BLOCK = harness.DocBlock("folder-index-memory", "## Measured: memory of an ImageFolder tree's first listing")


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


def status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


def child(tree: Path, fresh: bool) -> None:
    """One open in this process; prints its row."""
    import srel_ray
    from srel_ray.config import DataConfig
    from srel_ray.data.imagefolder import ImageFolderData

    if fresh:
        shutil.rmtree(tree / ".srel_ray_index", ignore_errors=True)
    before = status_kb("VmRSS")
    began = time.perf_counter()
    data = ImageFolderData(DataConfig(name="imagefolder", path=str(tree), image_size=8))
    seconds = time.perf_counter() - began
    peak = status_kb("VmHWM")
    print(json.dumps({"images": len(data.labels("train")), "classes": data.num_classes,
                      "seconds": round(seconds, 1), "start_mb": round(before / 1024, 1),
                      "peak_mb": round(peak / 1024, 1), "rise_mb": round((peak - before) / 1024, 1),
                      "srel_ray": str(Path(srel_ray.__file__).parents[1])}))


def measure_open(tree: Path, fresh: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(tree)] + (["--fresh"] if fresh else []),
                         capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = ["| code | classes | training images | open | seconds | peak resident MB | rise MB |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["label"] != "before", r["images"], r["open"] != "first")):
        lines.append(f"| {r['label']} ({r['revision'][:7]}) | {r['classes']:,} | {r['images']:,} | {r['open']} | "
                     f"{r['seconds']:.1f} | {r['peak_mb']:,.0f} | {r['rise_mb']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="the tree (keep out of the repo)")
    p.add_argument("--classes", type=int, default=21841)
    p.add_argument("--per-class", type=int, default=50, help="training images per class")
    p.add_argument("--label", default="after", help="names this code's rows in the table (e.g. 'before')")
    p.add_argument("--results", type=Path, default=harness.RESULTS / f"{RESULT}.json")
    p.add_argument("--docs", type=Path, default=harness.REPO / "docs" / "scaling.md")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.fresh)
    if args.out is None:
        raise SystemExit("--out is required")
    if args.classes > max(scale_classes.SYNSETS):
        raise SystemExit(f"--classes: at most {max(scale_classes.SYNSETS):,} (timm's largest synset list)")
    tree = make_tree(args.out / f"tree-{args.classes}x{args.per_class}", args.classes, args.per_class)
    measured = [{"open": "first", **measure_open(tree, fresh=True)}, {"open": "again", **measure_open(tree, False)}]
    revision = subprocess.run(["git", "-C", measured[0]["srel_ray"], "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # the checkout that ran, which need not be this script's
    new = [{"label": args.label, "revision": revision, **m} for m in measured]
    for row in new:
        print(json.dumps(row), flush=True)
    old = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    rows = [r for r in old if (r["label"], r["classes"], r["images"]) != (args.label, args.classes, new[0]["images"])]
    harness.write_result(RESULT, {"rows": rows + new}, args.results)
    DOC_BLOCK.write(args.docs, markdown(rows + new))
    print(markdown(rows + new))


if __name__ == "__main__":
    main()
