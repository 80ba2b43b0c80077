"""Quality benchmark: does the condensed set train better students than random real images?

    python benchmarks/quality.py --out runs/bench-quality [--ipc 10 50] [--seeds 0 1] [--set section.key=value ...]

One fixed protocol (jobs/configs/cifar10_quality.yaml unless --config says otherwise):
  1. squeeze one teacher on the full CIFAR-10 training split, shared by every run below;
  2. the ceiling: the student architecture trained on the full data as the teacher is (the teacher itself when the
     two architectures are equal, else a second squeeze);
  3. for every IPC and seed, ``srel-ray run`` from that teacher: recover, relabel, and three students on one
     protocol: (a) the condensed set, (b) IPC random real images per class with hard labels, (c) the same random
     real images with the teacher's soft labels (same views, epochs, batch, temperature as (a)).

Every run folder resumes, so an interrupted benchmark continues where it stopped. Results go to
``--results`` (JSON) and, between the quality markers, to ``--docs`` (Markdown), with the command and git revision.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from srel_ray.config import load_config, to_dict
from srel_ray.data.real import load_dataset
from srel_ray.pipeline import STAGES, run_stages
from srel_ray.students import STUDENTS
from srel_ray.teacher import load_teacher

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quality-benchmark:begin -->", "<!-- quality-benchmark:end -->"


def git_revision() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    # The files the benchmarks write themselves do not make the code "uncommitted".
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!docs/benchmarks.md", ":!benchmarks/results"], cwd=REPO,
                           capture_output=True, text=True).stdout
    return rev.strip() + ("+uncommitted" if dirty.strip() else "")


def squeeze_once(config: Path, overrides: list[str], out: Path) -> tuple[Path, dict, float]:
    """Train (or reuse) one teacher; returns its checkpoint, its description and the squeeze seconds."""
    began = time.perf_counter()
    run_stages(load_config(config, overrides), out, ("squeeze",), "squeeze")
    record = json.loads((out / "stages" / "squeeze.json").read_text())
    teacher = load_teacher(str(out / "teacher" / "teacher.pt"))
    logging.info("teacher %s: test top-1 %.4f (%.0f s)", out, teacher.metrics["test_top1"], time.perf_counter() - began)
    return out / "teacher" / "teacher.pt", teacher.describe(), record["seconds"]


def file_sha256(path: Path) -> str:
    """Which teacher made a result: runs compared with each other must share it (benchmarks/ladder.py checks)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def markdown(results: dict) -> str:
    t, p = results["teacher"], results["protocol"]

    def pct(s: dict) -> str:
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})"

    lines = [
        f"Measured {results['date']} at git `{results['git_revision']}` on {results['machine']}:",
        "", "```", results["command"], "```", "",
        f"Teacher: {t['arch']} {t['arch_kwargs']} squeezed {t['epochs']} epochs on the {results['train_images']:,} training images, "
        f"test top-1 {100 * t['test_top1']:.2f} % ({results['teacher_seconds']:.0f} s). "
        f"Ceiling (student architecture on the full data): {100 * results['ceiling_top1']:.2f} %.",
        f"Every student: {p['evaluate']['arch']} {p['evaluate']['arch_kwargs']}, {p['evaluate']['epochs']} epochs, "
        f"batch {p['evaluate']['batch_size']}, AdamW lr {p['evaluate']['lr']}, T = {p['evaluate']['temperature']}, "
        f"one stored view per image per epoch (crop scale {p['relabel']['crop_scale']}); recovery "
        f"{p['recover']['iterations']} iterations, alpha_BN {p['recover']['bn_weight']}. Test top-1 % on the "
        f"{results['test_images']:,} test images, mean ± std over the seeds run (n in the table).",
        "" if results["complete"] else "**Incomplete: not every (IPC, seed) run of the command has finished.**",
        "",
        "| IPC | condensed (SRe2L) | random real, hard labels | random real, teacher labels | full data | "
        "condensed vs random real + teacher labels |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        s = row["top1"]
        gap = s["condensed"]["mean"] - s["random_real_soft"]["mean"]
        verdict = f"{'beats' if gap > 0 else 'does NOT beat'} it by {100 * abs(gap):.2f} points"
        lines.append(f"| {row['ipc']} | {pct(s['condensed'])} | {pct(s['random_real_hard'])} | "
                     f"{pct(s['random_real_soft'])} | {100 * results['ceiling_top1']:.2f} | {verdict} |")
    lines += ["", "Seconds per stage of each run (the shared teacher's squeeze is counted once, above; the squeeze "
              "column is loading it and testing it):", "",
              "| IPC | seed | condensed | random hard | random soft | squeeze | recover | relabel | evaluate |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        sec, top = r["seconds"], r["top1"]
        lines.append(f"| {r['ipc']} | {r['seed']} | {100 * top['condensed']:.2f} | "
                     f"{100 * top['random_real_hard']:.2f} | {100 * top['random_real_soft']:.2f} | "
                     + " | ".join(f"{sec[s]:.0f}" for s in STAGES) + " |")
    return "\n".join(lines)


def write_block(path: Path, begin: str, end: str, heading: str, text: str) -> None:
    """Put ``text`` between the ``begin``/``end`` markers of ``path`` (appended under ``heading`` if absent)."""
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def write_results(path: Path, docs: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
    text = markdown(results)
    write_block(docs, BEGIN, END, "## Quality: condensed set against random real images (CIFAR-10)", text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "jobs/configs/cifar10_quality.yaml")
    p.add_argument("--out", type=Path, required=True, help="folder of all run folders (re-running resumes)")
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field everywhere (teacher included)")
    p.add_argument("--run-set", dest="run_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the per-IPC runs only (recover, relabel, evaluate), keeping the teacher")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/quality_cifar10.json")
    p.add_argument("--docs", type=Path, default=REPO / "docs/benchmarks.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = args.out.resolve()
    base = load_config(args.config, args.overrides)  # fails fast on a bad config or --set
    data = load_dataset(base.data)
    tracking = [f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    out.mkdir(parents=True, exist_ok=True)

    teacher_pt, teacher, teacher_seconds = squeeze_once(args.config, args.overrides + tracking, out / "teacher")
    student_arch = (base.evaluate.arch, base.evaluate.arch_kwargs)
    if student_arch == (base.teacher.arch, base.teacher.arch_kwargs):
        ceiling = teacher["metrics"]["test_top1"]
    else:
        as_student = [f"teacher.arch={base.evaluate.arch}", f"teacher.arch_kwargs={json.dumps(base.evaluate.arch_kwargs)}"]
        _, described, _ = squeeze_once(args.config, args.overrides + tracking + as_student, out / "ceiling")
        ceiling = described["metrics"]["test_top1"]

    runs = []
    for ipc in args.ipc:
        for seed in args.seeds:
            overrides = args.overrides + args.run_overrides + tracking + [
                f"seed={seed}", f"recover.ipc={ipc}", "teacher.source=checkpoint", f"teacher.checkpoint={teacher_pt}"]
            logging.info("=== IPC %d, seed %d ===", ipc, seed)
            cfg = load_config(args.config, overrides)
            summary = run_stages(cfg, out / f"ipc{ipc}-seed{seed}", STAGES, "run")
            runs.append({"ipc": ipc, "seed": seed, "top1": {k: summary[s.summary_key] for k, s in STUDENTS.items()},
                         "seconds": summary["seconds"], "out": str(out / f"ipc{ipc}-seed{seed}")})
            # Written after every run, so an interrupted benchmark still reports what it finished.
            results = {
                "protocol": to_dict(cfg),
                "git_revision": git_revision(),
                "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
                "teacher": {"arch": teacher["arch"], "arch_kwargs": base.teacher.arch_kwargs,
                            "epochs": base.teacher.epochs, "test_top1": teacher["metrics"]["test_top1"],
                            "sha256": file_sha256(teacher_pt)},
                "teacher_seconds": teacher_seconds,
                "train_images": len(data.labels("train")),
                "test_images": len(data.labels("test")),
                "ceiling_top1": ceiling,
                "seeds": args.seeds,
                "complete": len(runs) == len(args.ipc) * len(args.seeds),
                "runs": runs,
                "summary": [{"ipc": i, "top1": {k: spread([r["top1"][k] for r in runs if r["ipc"] == i])
                                                for k in STUDENTS}}
                            for i in args.ipc if any(r["ipc"] == i for r in runs)],
            }
            write_results(args.results, args.docs, results)
    print(f"\nresults: {args.results}\ndocs: {args.docs}\nrun folders: {out}")


if __name__ == "__main__":
    main()
