"""Peak resident memory of every process while squeeze streams CIFAR-10 from Parquet through Ray Train.

    python benchmarks/squeeze_memory.py --out runs/bench-squeeze-memory [--repeat N] [--set section.key=value ...]

Runs ``srel-ray squeeze`` with jobs/configs/cifar10.yaml (1 epoch unless overridden) while a sampler reads the
kernel's peak RSS (VmHWM in /proc/<pid>/status, Linux) of this process and every Ray process; writes
``<out>/memory.json`` and prints the table. The point: no process holds the 50,000-image split (150 MB decoded),
and with ``--repeat N`` (the split read N times over) the peaks stay where they are while the data grows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import harness
from measure import ProcessSampler

from srel_ray.cli import main as srel_ray

CIFAR = harness.REPO.parent / "shared" / "data" / "cifar10"


def replicated(source: Path, folder: Path, times: int) -> Path:
    """A Parquet source whose train split is ``times`` links to the same file: a larger dataset on no extra disk."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for i in range(times):
        link = folder / "train" / f"part-{i:04d}.parquet"
        if not link.exists():
            link.symlink_to(source / "train.parquet")
    if not (folder / "test.parquet").exists():
        (folder / "test.parquet").symlink_to(source / "test.parquet")
    return folder


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=1,
                        help="read the training split this many times over (a folder of N links to the one file)")
    args = parser.parse_args()
    overrides = ["teacher.epochs=1", "tracking.enabled=false", *args.overrides]
    if args.repeat > 1:
        overrides.append(f"data.path={replicated(CIFAR, args.out.resolve().with_name(args.out.name + '-data'), args.repeat)}")
    sampler = ProcessSampler()
    sampler.start()
    began = time.perf_counter()
    code = srel_ray(["squeeze", "--config", str(harness.REPO / "jobs/configs/cifar10.yaml"), "--out", str(args.out),
                     *[a for o in overrides for a in ("--set", o)]])
    seconds = time.perf_counter() - began
    rows = sampler.stop()["processes"]
    result = {"command": f"python benchmarks/squeeze_memory.py --repeat {args.repeat} "
                         + " ".join(f"--set {o}" for o in args.overrides),
              "exit_code": code, "seconds": round(seconds, 1), "processes": rows, "repeat": args.repeat,
              "train_images": 50_000 * args.repeat,
              "decoded_train_split_mb": round(args.repeat * 50_000 * 3 * 32 * 32 / 2**20, 1)}
    (args.out / "memory.json").write_text(json.dumps(result, indent=2))
    print(f"\nsqueeze on CIFAR-10 Parquet x{args.repeat}: exit {code}, {seconds:.0f} s; peak RSS per process (MB):")
    for r in rows:
        print(f"  {r['peak_rss_mb']:8.1f}  {r['role']}  (pid {r['pid']})")


if __name__ == "__main__":
    main()
