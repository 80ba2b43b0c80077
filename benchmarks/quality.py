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
import json
import logging
import os
import platform
import time
from pathlib import Path

import harness

from srel_ray.config import load_config, to_dict
from srel_ray.data.real import load_dataset
from srel_ray.pipeline import STAGES, run_stages
from srel_ray.students import STUDENTS
from srel_ray.teacher import load_teacher

DOC_BLOCK = harness.DocBlock("quality-benchmark", "## Quality: condensed set against random real images (CIFAR-10)")


def squeeze_once(config: Path, overrides: list[str], out: Path) -> tuple[Path, dict, float]:
    """Train (or reuse) one teacher; returns its checkpoint, its description and the squeeze seconds."""
    began = time.perf_counter()
    run_stages(load_config(config, overrides), out, ("squeeze",), "squeeze")
    record = json.loads((out / "stages" / "squeeze.json").read_text())
    teacher = load_teacher(str(out / "teacher" / "teacher.pt"))
    logging.info("teacher %s: test top-1 %.4f (%.0f s)", out, teacher.metrics["test_top1"], time.perf_counter() - began)
    return out / "teacher" / "teacher.pt", teacher.describe(), record["seconds"]


def markdown(results: dict) -> str:
    t, p = results["teacher"], results["protocol"]

    def pct(s: dict) -> str:
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})"

    lines = [
        f"Measured {results['date']} at git `{harness.short_revision(results['git_revision'])}` on "
        f"{results['machine']}:",
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=harness.QUALITY_CONFIG)
    p.add_argument("--out", type=Path, required=True, help="folder of all run folders (re-running resumes)")
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field everywhere (teacher included)")
    p.add_argument("--run-set", dest="run_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the per-IPC runs only (recover, relabel, evaluate), keeping the teacher")
    p.add_argument("--results", type=Path, default=harness.RESULTS / "quality_cifar10.json")
    p.add_argument("--docs", type=Path, default=harness.DOCS)
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
                **harness.made_by(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
                "teacher": {"arch": teacher["arch"], "arch_kwargs": base.teacher.arch_kwargs,
                            "epochs": base.teacher.epochs, "test_top1": teacher["metrics"]["test_top1"],
                            "sha256": harness.file_sha256(teacher_pt)},
                "teacher_seconds": teacher_seconds,
                "train_images": len(data.labels("train")),
                "test_images": len(data.labels("test")),
                "ceiling_top1": ceiling,
                "seeds": args.seeds,
                "complete": len(runs) == len(args.ipc) * len(args.seeds),
                "runs": runs,
                "summary": [{"ipc": i, "top1": {k: harness.mean_std([r["top1"][k] for r in runs if r["ipc"] == i])
                                                for k in STUDENTS}}
                            for i in args.ipc if any(r["ipc"] == i for r in runs)],
            }
            harness.publish(results, args.results, args.docs, DOC_BLOCK, markdown)
    print(f"\nresults: {args.results}\ndocs: {args.docs}\nrun folders: {out}")


if __name__ == "__main__":
    main()
