"""Method ladder on the quality benchmark's protocol: what each of EDC's choices, RDED and CDA buys.

    python benchmarks/ladder.py --out runs/bench-quality [--ipc 10 50] [--seeds 0 1] [--steps edc rded ...]
                                [--run-set section.key=value ...] [--extra-teacher other/teacher.pt ...]

Runs inside the folder of ``benchmarks/quality.py --out`` and reuses its teacher (or ``--teacher``), and its
``sre2l`` runs (the ladder's first step is exactly the quality benchmark's condensed run), so both tables line up:
same teacher, student, epochs, seeds. Pass the same ``--run-set`` values the quality benchmark was run with. Where a quality run's folder
is gone, its row in the quality results file stands in for the ``sre2l`` step (and the plain protocol's baseline)
when that file's protocol is exactly this one.

The results file accumulates: runs of an earlier invocation are kept, each with the command and revision that
produced it, until this invocation records the same (IPC, seed, step) again, so IPC 10 and IPC 50 can be run by
separate invocations and an interrupted one loses nothing.

Each step is ``ladder_steps.LADDER``'s overrides applied after the protocol config and ``--run-set``. A step is
compared with random real images relabelled by the teacher under the step's own student protocol (relabel and
evaluate settings): the baseline students are trained once per distinct protocol, by the first step that needs
them, and shared by every later step with the same protocol. Every run folder resumes. The ``edc + several
teachers`` row runs only with ``--extra-teacher`` (e.g. a teacher squeezed with another seed): its baselines are
relabelled by all the teachers, as its condensed set is.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
from pathlib import Path
from typing import Callable

import harness
from ladder_steps import LADDER, LADDER_CHAIN, LADDER_NEEDS_EXTRA_TEACHERS

from srel_ray.config import Config, from_dict, load_config, to_dict
from srel_ray.pipeline import STAGES, run_stages

DOC_BLOCK = harness.DocBlock("method-ladder", "## Method ladder on the same protocol (CIFAR-10)")
STEPS = [name for name, _ in LADDER]


def slug(step: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")


def protocol_key(cfg) -> str:
    """What the baseline students depend on: the seed (which random images), IPC, the teachers that label them, the
    relabel and student settings."""
    d = to_dict(cfg)
    return json.dumps({"seed": d["seed"], "ipc": d["recover"]["ipc"], "relabel": d["relabel"], "teacher": d["teacher"],
                       "evaluate": {k: v for k, v in d["evaluate"].items() if k != "baselines"}}, sort_keys=True)


def previous_runs(path: Path) -> list[dict]:
    """The runs an earlier invocation recorded in the results file, each with the command and teacher that made it."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    return [{"command": old["command"], "git_revision": old["git_revision"], "date": old["date"],
             "teacher": old.get("teacher"), **r} for r in old["runs"]]


def grouped(runs: list[dict]) -> list[dict]:
    """Rows of the table: per IPC and teacher (runs with different teachers are never averaged together), per step
    in ladder order, the condensed and baseline accuracies over seeds."""
    def teacher_key(r: dict) -> str:
        return r["teacher"]["sha256"] or str(r["teacher"]["test_top1"])

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["ipc"], teacher_key(r)), []).append(r)
    return [{"ipc": ipc, "teacher": members[0]["teacher"], "steps": [
        {"step": s, "seeds": [r["seed"] for r in rs], "condensed": harness.mean_std([r["condensed"] for r in rs]),
         "random_real_soft": harness.mean_std([r["random_real_soft"] for r in rs])}
        for s in STEPS if (rs := [r for r in members if r["step"] == s])]}
        for (ipc, _), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0]["date"]))]


def quality_rows(path: Path, config, teacher: dict) -> dict[tuple[int, int], dict]:
    """(IPC, seed) -> the quality benchmark's condensed run as a ladder ``sre2l`` run, for the runs of ``path`` made
    with ``teacher`` (the same file) whose protocol is this ladder's sre2l step exactly (the file records one
    protocol; options it predates are off)."""
    if not path.exists():
        return {}
    quality = json.loads(path.read_text())
    rows = {}
    if quality["teacher"].get("sha256") != teacher["sha256"]:
        return rows  # made with another teacher (or one the file cannot name)
    for r in quality["runs"]:
        recorded = dict(quality["protocol"], seed=r["seed"], recover={**quality["protocol"]["recover"], "ipc": r["ipc"]})
        if from_dict(recorded).identity() != config(r["ipc"], r["seed"], "sre2l").identity():
            continue
        rows[r["ipc"], r["seed"]] = {
            "ipc": r["ipc"], "seed": r["seed"], "step": "sre2l", "condensed": r["top1"]["condensed"],
            "random_real_soft": r["top1"]["random_real_soft"], "seconds": r["seconds"], "out": r["out"],
            "command": quality["command"], "git_revision": quality["git_revision"], "date": quality["date"],
            "teacher": teacher}
    return rows


def extra_teacher_lines(runs: list[dict]) -> list[str]:
    """A sentence per set of extra teachers the runs used (the rows of LADDER_NEEDS_EXTRA_TEACHERS)."""
    used = {tuple(f"{100 * t['test_top1']:.2f} % (`{t['sha256'][:8]}`)" for t in r["extra_teachers"])
            for r in runs if r.get("extra_teachers")}
    return [f"`{', '.join(LADDER_NEEDS_EXTRA_TEACHERS)}` adds teacher.extra = {', '.join(teachers)}: recovery "
            "cycles through the teachers and relabel averages their logits, for the condensed set and that row's "
            "baselines alike." for teachers in sorted(used)]


def teacher_label(t: dict) -> str:
    return f"{100 * t['test_top1']:.2f} %" + (f" (`{t['sha256'][:8]}`)" if t["sha256"] else "")


def markdown(results: dict) -> str:
    def pct(s: dict | None) -> str:
        return "n/a" if s is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})"

    made_by = sorted({(r["date"], harness.short_revision(r["git_revision"]), r["command"]) for r in results["runs"]})
    lines = ["Same student and budget as the quality table above, and its teacher where the test top-1 agrees (a "
             "re-squeezed teacher starts a new group of rows: runs of different teachers are never averaged "
             "together); measured by:", "", "```",
             *[f"# {date}, git {rev}\n{command}" for date, rev, command in made_by], "```", "",
             "Each row adds to the one before it down to `+ student-side choices`; `edc`, `rded` and `cda` are the "
             "presets, `rded + student-side choices` is RDED's images under EDC's student recipe, `edc, CIFAR-10 "
             "script recovery` is the edc row recovering as EDC's own CIFAR-10 script does (75 iterations from "
             "random real images), `edc at 75 iterations` that row from RDED crops and `edc, validation's one "
             "recipe` the single recipe for both IPCs that validation searches chose (overrides: "
             "`benchmarks/ladder_steps.py`, docs/methods.md). The baseline is the same random real images relabelled "
             "by the teacher and trained under that row's own student protocol.", *extra_teacher_lines(results["runs"]),
             "" if results["complete"] else "**Incomplete: not every (step, IPC, seed) run of the command has "
                                            "finished; rows show what has.**", "",
             "| IPC | teacher (test top-1) | step | condensed | random real + teacher labels (same protocol) | "
             "condensed − baseline (per seed: min to max) | step − previous step (same seeds) |",
             "|---|---|---|---|---|---|---|"]
    for ipc_rows in results["summary"]:
        teacher = teacher_label(ipc_rows["teacher"])
        previous = None  # the last ladder step's {seed: top-1}
        for row in ipc_rows["steps"]:
            c, b = row["condensed"], row["random_real_soft"]
            # Every run's baseline is its own seed's random real images: the differences pair up by seed.
            diffs = [100 * (x - y) for x, y in zip(c["values"], b["values"])] if b else []
            gap = "n/a" if not diffs else f"{statistics.fmean(diffs):+.2f}" + (
                f" ({min(diffs):+.2f} to {max(diffs):+.2f})" if len(diffs) > 1 else "")
            mine = dict(zip(row["seeds"], c["values"]))
            paired = sorted(set(mine) & set(previous or {}))  # the same seeds on both rows
            delta = "" if not paired or row["step"] not in LADDER_CHAIN else \
                f"{100 * statistics.fmean(mine[s] - previous[s] for s in paired):+.2f} (n={len(paired)})"
            lines.append(f"| {ipc_rows['ipc']} | {teacher} | {row['step']} | {pct(c)} | {pct(b)} | {gap} | {delta} |")
            if row["step"] in LADDER_CHAIN:
                previous = mine
    lines += ["", "Seconds per stage of each run (recover includes the per-class statistics pass where a step uses "
              "them; evaluate includes the baseline students where the run trained them):", "",
              "| IPC | seed | teacher | step | condensed | " + " | ".join(STAGES) + " |",
              "|---|---|---|---|---|" + "---|" * len(STAGES)]
    for r in results["runs"]:
        lines.append(f"| {r['ipc']} | {r['seed']} | {teacher_label(r['teacher'])} | {r['step']} | "
                     f"{100 * r['condensed']:.2f} | "
                     + " | ".join(f"{r['seconds'][s]:.0f}" for s in STAGES) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=harness.QUALITY_CONFIG)
    p.add_argument("--out", type=Path, required=True, help="the quality benchmark's --out (its teacher is reused)")
    harness.add_teacher_option(p)
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", nargs="+", default=None, choices=STEPS, metavar="STEP",
                   help=f"which rows, in this order (default all of {STEPS}; those that need extra teachers only "
                        "when --extra-teacher is given)")
    p.add_argument("--extra-teacher", type=Path, action="append", default=[], metavar="TEACHER_PT",
                   help=f"a teacher.pt that the {list(LADDER_NEEDS_EXTRA_TEACHERS)} rows add as teacher.extra "
                        "(repeat for more), e.g. one squeezed with another seed")
    p.add_argument("--run-set", dest="run_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="the quality benchmark's --run-set values")
    p.add_argument("--dry-run", action="store_true", help="print the runs (and which train baselines) and stop")
    p.add_argument("--results", type=Path, default=harness.RESULTS / "ladder_cifar10.json")
    p.add_argument("--quality-results", type=Path, default=harness.RESULTS / "quality_cifar10.json",
                   help="the quality benchmark's results: its rows stand in for sre2l runs whose folder is gone")
    p.add_argument("--docs", type=Path, default=harness.DOCS)
    return p.parse_args()


def extra_teachers(args: argparse.Namespace) -> list[Path]:
    paths = [path.resolve() for path in args.extra_teacher]
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"ladder: --extra-teacher {path}: no such file (a teacher.pt written by squeeze)")
    return paths


def chosen_steps(args: argparse.Namespace, available: list[str]) -> list[str]:
    if args.steps is None:
        return available
    if missing := [s for s in args.steps if s not in available]:
        raise SystemExit(f"ladder: steps {missing} need --extra-teacher TEACHER_PT (another teacher.pt to add)")
    return args.steps


def protocol(args: argparse.Namespace, teacher_pt: Path, extra: list[Path]) -> Callable[..., Config]:
    """``config(ipc, seed, step, *overrides)``: the protocol config, ``--run-set``, then the step's overrides."""
    extra_set = "teacher.extra=" + json.dumps([{"source": "checkpoint", "checkpoint": str(p)} for p in extra])
    steps = dict(LADDER)
    tracking = [f"tracking.tracking_uri=sqlite:///{args.out.resolve() / 'mlflow.db'}"]

    def config(ipc: int, seed: int, step: str, *overrides: str) -> Config:
        return load_config(args.config, args.run_overrides + tracking + [
            f"seed={seed}", f"recover.ipc={ipc}", "teacher.source=checkpoint", f"teacher.checkpoint={teacher_pt}",
            *steps[step], *([extra_set] if step in LADDER_NEEDS_EXTRA_TEACHERS else []), *overrides])

    return config


def quality_folder(out: Path, ipc: int, seed: int) -> Path:
    return out / f"ipc{ipc}-seed{seed}"


def measured_baselines(args, out: Path, config, recorded: dict) -> dict[str, float]:
    """Protocol key -> random real + teacher labels top-1 of the plain protocol, which the quality runs (the sre2l
    step) trained already: from their folders, or from the quality results file where a folder is gone and that
    file's protocol is exactly this one."""
    baselines = {}
    for ipc in args.ipc:
        for seed in args.seeds:
            summary = quality_folder(out, ipc, seed) / "summary.json"
            if summary.exists():
                baselines[protocol_key(config(ipc, seed, "sre2l"))] = \
                    json.loads(summary.read_text())["baseline_random_soft_top1"]
            elif (ipc, seed) in recorded:
                baselines[protocol_key(config(ipc, seed, "sre2l"))] = recorded[ipc, seed]["random_real_soft"]
    return baselines


def planned_configs(args, out: Path, config, available: list[str], wanted: list[str],
                    baselines: dict[str, float]) -> list[tuple[harness.PlannedRun, Config, Path]]:
    """Every run with its config and folder, all loaded before any work so that a bad --run-set fails first. The
    sre2l step is exactly the quality benchmark's run, in its folder; every other step says whether it trains its
    protocol's baselines."""
    plan = harness.plan_shared_baselines([(ipc, seed) for ipc in args.ipc for seed in args.seeds], available,
                                         wanted, lambda cell, step: protocol_key(config(*cell, step)), set(baselines))
    out_plan = []
    for run in plan:
        (ipc, seed), step = run.cell, run.step
        if step == "sre2l":
            out_plan.append((run, config(ipc, seed, step), quality_folder(out, ipc, seed)))
        else:
            cfg = config(ipc, seed, step, f"evaluate.baselines={str(run.trains_baselines).lower()}")
            out_plan.append((run, cfg, out / "ladder" / f"{slug(step)}-ipc{ipc}-seed{seed}"))
    return out_plan


def describe_plan(plan: list[tuple[harness.PlannedRun, Config, Path]]) -> None:
    for run, cfg, folder in plan:
        (ipc, seed), step = run.cell, run.step
        trains = "quality benchmark run" if step == "sre2l" else \
            "trains the baselines" if cfg.evaluate.baselines else "baseline shared"
        print(f"IPC {ipc:3d} seed {seed} {step:28s} {trains:22s} {folder}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = args.out.resolve()
    teacher_pt, extra = harness.teacher_checkpoint(args, "ladder"), extra_teachers(args)
    available = [s for s in STEPS if extra or s not in LADDER_NEEDS_EXTRA_TEACHERS]
    wanted = chosen_steps(args, available)
    config = protocol(args, teacher_pt, extra)
    teacher = harness.describe_teacher(teacher_pt)
    recorded = quality_rows(args.quality_results, config, teacher)
    baselines = measured_baselines(args, out, config, recorded)
    plan = planned_configs(args, out, config, available, wanted, baselines)
    describe_plan(plan)
    if args.dry_run:
        return

    earlier = previous_runs(args.results)  # replaced one by one as this invocation records the same runs
    made_by = {**harness.made_by(), "teacher": teacher}
    extra_described = [harness.describe_teacher(path) for path in extra]
    runs = []
    for run, cfg, folder in plan:
        (ipc, seed), step = run.cell, run.step
        logging.info("=== %s, IPC %d, seed %d: %s ===", step, ipc, seed, folder)
        if step == "sre2l" and not (folder / "summary.json").exists() and (ipc, seed) in recorded:
            logging.info("ladder: sre2l IPC %d seed %d from %s (its folder is gone)", ipc, seed, args.quality_results)
            runs.append(recorded[ipc, seed])
        else:
            summary = run_stages(cfg, folder, STAGES, "run")
            if cfg.evaluate.baselines:
                baselines[run.protocol] = summary["baseline_random_soft_top1"]
            runs.append({"ipc": ipc, "seed": seed, "step": step, "condensed": summary["student_top1"],
                         "random_real_soft": baselines[run.protocol], "seconds": summary["seconds"],
                         "out": str(folder), **made_by})
            if step in LADDER_NEEDS_EXTRA_TEACHERS:
                runs[-1]["extra_teachers"] = extra_described
        done = harness.merge_runs(earlier, runs, key=lambda r: (r["ipc"], r["seed"], r["step"]))
        harness.publish({**made_by, "steps": dict(LADDER), "complete": len(runs) == len(plan),
                         "runs": sorted(done, key=lambda r: (r["ipc"], r["seed"], STEPS.index(r["step"]))),
                         "summary": grouped(done)}, args.results, args.docs, DOC_BLOCK, markdown)
    print(f"\nresults: {args.results}\ndocs: {args.docs}\nrun folders: {out}")


if __name__ == "__main__":
    main()
