"""Does a method ladder step's condensed set generalise: to other student architectures, under a second teacher's
labels, and as the memory of class-incremental learning? (issue 19's measurements, on the quality protocol)

    python benchmarks/generalisation.py --out runs/bench-quality [--step edc] [--ipc 10 50] [--seeds 0 1]
        [--parts cross-arch second-teacher continual] [--students resnet18_small bnvit_tiny]
        [--second-teacher TEACHER_PT] [--run-set section.key=value ...] [--dry-run]

It reads the ladder's finished runs of one step (benchmarks/ladder.py with the same --out, --config, --teacher and
--run-set; a missing one is an error naming the ladder command that makes it) and recovers nothing. A ladder run
trains its random-real baselines only when no earlier ladder step shares its student protocol (`edc`'s are in
`+ student-side choices`' folder), so each (IPC, seed) gets a folder beside it, OUT/generalisation/<run folder>,
that takes the run's condensed images (srel_ray.stages.recover.reuse) and trains, by the run's own config, what
the parts compare (the run's folder itself when it trained its baselines):

1. cross-arch: with evaluate.baselines and evaluate.students (default resnet18_small and bnvit_tiny, of
   ARCHITECTURES), the condensed set, random real images with hard labels and the same images with the teacher's
   labels, per student architecture, the run's ConvNet included (where it reproduces the ladder's numbers).
2. second-teacher: in OUT/generalisation/<run folder>-relabel-<sha>, the same condensed and random real images,
   both labelled by a second teacher (relabel.teacher) squeezed independently with another seed and width than the
   quality teacher (SECOND_TEACHER, into OUT/teacher-w64-seed1 unless --second-teacher names one), set beside the
   margin the recovery teacher's labels gave in the ladder's runs.
3. continual: srel-ray continual on the cross-arch folder at IPC 10 (5 and 10 steps; CONTINUAL), the condensed
   memory against random real images of the same size.

Every folder resumes. Results accumulate in --results as the ladder's do (one row per ladder step, part, IPC, seed
and student or teacher, each with its command, revision and teachers' hashes; an invocation per --step adds that
step's rows beside the others'), and their tables go to --docs, each table row naming its ladder step.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path

import harness
import ladder
from ladder_steps import LADDER_NEEDS_EXTRA_TEACHERS

from srel_ray.config import Config, config_from_yaml, load_config, to_dict
from srel_ray.pipeline import STAGES, run_continual_study, run_stages
from srel_ray.stages import recover
from srel_ray.storage.layout import RunDir, prepare_out
from srel_ray.students import STUDENTS
from srel_ray.teacher import load_teacher

DOC_BLOCK = harness.DocBlock("generalisation",
                             "## Across architectures, teachers and class-incremental learning (CIFAR-10)")
PARTS = ("cross-arch", "second-teacher", "continual")
# Students by name, as evaluate.students entries: each builder's own choices already fit 32 px images.
ARCHITECTURES = {
    "resnet18_small": {"arch": "resnet18_small"},  # ResNet-18, 3x3 stride-1 stem, no max-pool: 32 px into layer1
    "bnvit_tiny": {"arch": "bnvit_tiny"},  # DeiT-Tiny's shape with BatchNorms, 4 px patches below 128 px: 8x8 tokens
    # torchvision's stem halves 32 px; its second stage's stride 2 -> 1 (the usual CIFAR change) ends at 2x2, not 1x1.
    "mobilenet_v2": {"arch": "torchvision:mobilenet_v2", "arch_kwargs": {"inverted_residual_setting": [
        [1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]}},
}
# The second teacher: the quality teacher's config (ConvNet-32x3, seed 0) with another seed and width.
SECOND_TEACHER = ["seed=1", "teacher.arch_kwargs={width: 64, depth: 3}"]
SECOND_TEACHER_FOLDER = "teacher-w64-seed1"
# The study's settings: the 5 and 10 steps; in this process, since a memory of at most IPC x 10 images
# trains faster than a Ray Train fit starts (the same numbers either way, docs/design.md).
CONTINUAL = ["continual.steps=[5, 10]", "continual.in_process=true"]
STEPS = [s for s in ladder.STEPS if s not in LADDER_NEEDS_EXTRA_TEACHERS]
MEMORY_LABELS = {name: s.label for name, s in STUDENTS.items()}  # continual's memories are the evaluate stage's sets


@dataclass(frozen=True)
class Cell:
    """One (IPC, seed) of the ladder step: its run, the ladder run that trained its protocol's random-real
    baselines (the run itself, or another step's), and the config the ladder gives the run."""

    ipc: int
    seed: int
    run: Path
    baselines: Path
    config: Config
    baselines_config: Config
    home: Path  # OUT/generalisation: the folders this script makes

    @property
    def own_folder(self) -> Path:
        """Where its condensed set meets the baselines under the recovery teacher's labels."""
        return self.run if self.run == self.baselines else self.home / self.run.name

    def relabelled_folder(self, tag: str) -> Path:
        """Where its condensed set and the baselines are labelled by the teacher ``tag`` names."""
        return self.home / f"{self.run.name}-relabel-{tag}"


@dataclass(frozen=True)
class Job:
    part: str
    cell: Cell
    folder: Path
    overrides: tuple[str, ...]  # on the run's config.yaml

    @property
    def reuses(self) -> bool:
        """The folder takes the run's condensed images (it is not the run)."""
        return self.folder != self.cell.run


def plan_cells(args: argparse.Namespace, teacher_pt: Path) -> list[Cell]:
    """The ladder's folders of the step for every (IPC, seed), as benchmarks/ladder.py plans them."""
    out = args.out.resolve()
    plan = ladder.planned_configs(args, out, ladder.protocol(args, teacher_pt, []), STEPS, [args.step], {})
    owners = {(run.cell, run.protocol): (folder, cfg) for run, cfg, folder in plan if cfg.evaluate.baselines}
    cells = []
    for run, cfg, folder in plan:
        if run.step == args.step:
            owner, owner_cfg = owners[run.cell, run.protocol]
            cells.append(Cell(*run.cell, folder, owner, cfg, owner_cfg, out / "generalisation"))
    return cells


def plan_jobs(cells: list[Cell], parts: list[str], students: list[str], labeller: Path | None, labeller_tag: str,
              continual_ipc: list[int], resources: tuple[str, ...] = ()) -> list[Job]:
    """Every part's jobs, part by part in ``parts`` order, cells in order. Only cross-arch adds students (not part
    of a run's identity: a folder keeps those an earlier cross-arch job trained). ``resources``: --run-set's
    ``resources.*`` values, which every job applies (the run's saved config has the ladder's)."""
    with_baselines, none = ("evaluate.baselines=true", *resources), "evaluate.students=[]"
    extra = "evaluate.students=" + json.dumps([ARCHITECTURES[s] for s in students])
    jobs = []
    for part in parts:
        for c in cells:
            if part == "cross-arch":
                jobs.append(Job(part, c, c.own_folder, (*with_baselines, extra)))
            elif part == "second-teacher":
                jobs.append(Job(part, c, c.relabelled_folder(labeller_tag),
                                (*with_baselines, none, f"relabel.teacher={labeller}")))
            elif c.ipc in continual_ipc:
                jobs.append(Job(part, c, c.own_folder, (*with_baselines, none)))
    return jobs


def resource_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """--run-set's ``resources.*`` values: how this invocation's students run (not part of a run's identity)."""
    return tuple(o for o in args.run_overrides if o.strip().startswith("resources."))


def ladder_command(args: argparse.Namespace, cells: list[Cell]) -> str:
    """The ladder command that makes these cells' runs (and brings their baselines' owner along)."""
    words = ["python", "benchmarks/ladder.py", "--out", str(args.out), "--ipc", *sorted({str(c.ipc) for c in cells}),
             "--seeds", *sorted({str(c.seed) for c in cells}), "--steps", args.step]
    if args.config.resolve() != harness.QUALITY_CONFIG:
        words += ["--config", str(args.config)]
    if args.teacher:
        words += ["--teacher", str(args.teacher)]
    return shlex.join(words + [w for o in args.run_overrides for w in ("--run-set", o)])


def check_cells(args: argparse.Namespace, cells: list[Cell]) -> None:
    """SystemExit unless every cell's run and baselines folder holds a finished ladder run of the planned config."""
    missing = [c for c in cells if not all((f / "summary.json").exists() for f in (c.run, c.baselines))]
    if missing:
        folders = sorted({str(f) for c in missing for f in (c.run, c.baselines) if not (f / "summary.json").exists()})
        raise SystemExit(f"generalisation: no finished ladder run in {', '.join(folders)}; make it with:\n  "
                         + ladder_command(args, missing))
    for c in cells:
        for folder, cfg in ((c.run, c.config), (c.baselines, c.baselines_config)):
            saved = config_from_yaml((folder / "config.yaml").read_text(), str(folder / "config.yaml")).identity()
            planned = cfg.identity()
            if differ := sorted(k for k in planned if planned[k] != saved.get(k)):
                raise SystemExit(f"generalisation: {folder} holds a ladder run with other {', '.join(differ)} "
                                 "settings than --config, --teacher and --run-set give: pass the ones it was run with")


def describe_plan(cells: list[Cell], jobs: list[Job]) -> None:
    for c in cells:
        done = "finished" if (c.run / "summary.json").exists() else "MISSING"
        print(f"IPC {c.ipc:3d} seed {c.seed}: run {c.run} ({done}), baselines in {c.baselines}")
    for j in jobs:
        how = "reuses the run's images" if j.reuses else "the run's folder"
        print(f"  {j.part:15s} IPC {j.cell.ipc:3d} seed {j.cell.seed} {j.folder} ({how}) "
              + " ".join(f"--set {shlex.quote(o)}" for o in j.overrides))


# ------------------------------------------------------------------------------------------- running


def labeller_path(args: argparse.Namespace) -> Path:
    """--second-teacher, or where this script squeezes one: OUT/teacher-w64-seed1/teacher/teacher.pt."""
    return args.second_teacher.resolve() if args.second_teacher else \
        args.out.resolve() / SECOND_TEACHER_FOLDER / "teacher" / "teacher.pt"


def labeller_tag(path: Path) -> str:
    """The second-teacher folders' suffix: the teacher file's hash, so another teacher never shares their labels."""
    return harness.file_sha256(path)[:8] if path.is_file() else "<its sha256>"


def second_teacher(args: argparse.Namespace, recovery: dict) -> dict:
    """--second-teacher, or the one squeezed (once) by --config, --set and SECOND_TEACHER; described."""
    path = labeller_path(args)
    if args.second_teacher and not path.is_file():
        raise SystemExit(f"generalisation: --second-teacher {path}: no such file (a teacher.pt written by squeeze)")
    if not args.second_teacher:
        tracking = [f"tracking.tracking_uri=sqlite:///{args.out.resolve() / 'mlflow.db'}"]
        run_stages(load_config(args.config, args.overrides + tracking + SECOND_TEACHER), path.parent.parent,
                   ("squeeze",), "squeeze")
    if harness.file_sha256(path) == recovery["sha256"]:
        raise SystemExit(f"generalisation: the second teacher {path} is the recovery teacher")
    teacher = load_teacher(str(path))
    return {**harness.describe_teacher(path), "arch": teacher.arch, "arch_kwargs": teacher.arch_kwargs}


def build(job: Job) -> dict:
    """The job's folder, every stage run or resumed: a folder that is not the run takes the run's images first."""
    saved = job.cell.run / "config.yaml"
    cfg = config_from_yaml(saved.read_text(), str(saved), list(job.overrides))
    if job.reuses:
        recover.reuse(cfg, prepare_out(cfg, job.folder), RunDir.at(job.cell.run))
    return run_stages(cfg, job.folder, STAGES, "run")


def students_rows(summary: dict) -> dict[str, dict]:
    """Per student architecture (the run's first): test top-1 of the condensed and both random-real students."""
    cross = summary.get("cross_arch") or {summary["student"]: {
        "arch": summary["student"], **{k: summary[k] for k in ("student_top1", "baseline_random_hard_top1",
                                                               "baseline_random_soft_top1")}}}
    return {key: {"arch": row["arch"], "condensed": row["student_top1"],
                  "random_real_hard": row["baseline_random_hard_top1"],
                  "random_real_soft": row["baseline_random_soft_top1"]} for key, row in cross.items()}


def ladder_margin(cell: Cell) -> dict:
    """What the ladder measured for the cell under the recovery teacher's labels (the ConvNet)."""
    run, base = (json.loads((f / "summary.json").read_text()) for f in (cell.run, cell.baselines))
    return {"condensed": run["student_top1"], "random_real_soft": base["baseline_random_soft_top1"]}


def run_job(job: Job, args: argparse.Namespace, made_by: dict, labeller: dict | None) -> list[dict]:
    """The result rows of one job: one per student architecture (cross-arch), else one."""
    c = job.cell
    row = {"part": job.part, "ipc": c.ipc, "seed": c.seed, "step": args.step, "out": str(job.folder),
           "ladder": ladder_margin(c), **made_by}
    if job.part == "continual":
        if not (job.folder / "summary.json").exists():  # else made already (by a cross-arch job, or the ladder)
            build(job)
        results, _ = run_continual_study(job.folder, CONTINUAL + args.continual_overrides)
        return [{**row, "learner": results["student"], "steps": {
            s: {k: e[k] for k in ("classes_seen", "top1", "mean_top1")} for s, e in results["steps"].items()}}]
    summary = build(job)
    rows = [{**row, "student": key, "student_order": i, **scores, "seconds": summary["seconds"]}
            for i, (key, scores) in enumerate(students_rows(summary).items())]
    return rows if job.part == "cross-arch" else [{**rows[0], "labeller": labeller}]


def row_key(r: dict) -> tuple:
    """A row's place: an invocation that records the same key replaces an earlier one's row."""
    what = r["student"] if r["part"] == "cross-arch" else r["labeller"]["sha256"] if r["part"] == "second-teacher" \
        else ""
    return PARTS.index(r["part"]), r["ipc"], r["seed"], r["step"], what


# ------------------------------------------------------------------------------------------- tables


def summarise(runs: list[dict]) -> list[dict]:
    """Rows of the tables: per part, IPC, recovery teacher and student or labelling teacher (never averaged
    across teachers), the seeds' accuracies and margins, each seed paired with its own random real images."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        part, ipc, _, step, what = row_key(r)
        groups.setdefault((part, ipc, step, r["teacher"]["sha256"], r.get("student_order", 0), what), []).append(r)
    out = []
    for (_, ipc, *_), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        g = {"part": rs[0]["part"], "ipc": ipc, "step": rs[0]["step"], "teacher": rs[0]["teacher"],
             "seeds": [r["seed"] for r in rs]}
        if g["part"] == "continual":
            g["learner"] = rs[0]["learner"]
            g["steps"] = {s: {"classes_seen": rs[0]["steps"][s]["classes_seen"],
                              "top1": {m: [statistics.fmean(r["steps"][s]["top1"][m][i] for r in rs)
                                           for i in range(len(rs[0]["steps"][s]["classes_seen"]))]
                                       for m in rs[0]["steps"][s]["top1"]},
                              "margins": [r["steps"][s]["mean_top1"]["condensed"]
                                          - r["steps"][s]["mean_top1"]["random_real_soft"] for r in rs]}
                          for s in rs[0]["steps"]}
        else:
            g.update({"student": rs[0]["student"], "arch": rs[0]["arch"], "labeller": rs[0].get("labeller"),
                      **{k: harness.mean_std([r[k] for r in rs])
                         for k in ("condensed", "random_real_hard", "random_real_soft")},
                      "margins": [r["condensed"] - r["random_real_soft"] for r in rs],
                      "ladder_margins": [r["ladder"]["condensed"] - r["ladder"]["random_real_soft"] for r in rs]})
        out.append(g)
    return out


def pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})"


def spread(margins: list[float]) -> str:
    """A mean margin in points, with its seeds' range."""
    points = [100 * m for m in margins]
    return f"{statistics.fmean(points):+.2f}" + (f" ({min(points):+.2f} to {max(points):+.2f})"
                                                 if len(points) > 1 else "")


def verdict(groups: list[dict]) -> str:
    """Where the condensed set does not beat random real images with the same labels, said first; then where it
    does in some seeds only, and where in every seed."""
    several = len({g["step"] for g in groups}) > 1

    def name(g: dict) -> str:
        return what(g) + (f", row `{g['step']}`" if several else "")

    def what(g: dict) -> str:
        if g["part"] == "cross-arch":
            return f"{g['arch']} students at IPC {g['ipc']}"
        if g["part"] == "second-teacher":
            return f"the second teacher's labels at IPC {g['ipc']}"
        return f"class-incremental learning in {g['steps_count']} steps at IPC {g['ipc']} (mean over steps)"

    comparisons = [(g, g["margins"]) for g in groups if g["part"] != "continual"]
    comparisons += [({**g, "steps_count": s}, e["margins"]) for g in groups if g["part"] == "continual"
                    for s, e in g["steps"].items()]
    kinds: dict[str, list[str]] = {"not": [], "some": [], "every": [], "one": []}
    for g, margins in comparisons:
        mean = statistics.fmean(margins)
        kind = "not" if mean <= 0 else "one" if len(margins) == 1 else "every" if min(margins) > 0 else "some"
        kinds[kind].append(f"{name(g)} ({spread(margins)})")
    said = {"not": "**The condensed set does not beat random real images with the same labels** for",
            "some": "It beats them on average but not in every seed for",
            "every": "It beats them in every seed for",
            "one": "With one seed measured so far, it beats them for"}
    lines = [f"{said[k]} {'; '.join(items)}." for k, items in kinds.items() if items]
    if not kinds["not"]:
        lines.insert(0, "The condensed set beats random real images with the same labels on average in every "
                        "comparison measured.")
    return " ".join(lines)


def steps_in(runs: list[dict]) -> list[str]:
    """The ladder rows the results hold, in the ladder's order."""
    return sorted({r["step"] for r in runs}, key=STEPS.index)


def protocol_text(results: dict) -> str:
    """The student protocol the rows share, or each row's where they differ."""
    def text(p: dict) -> str:
        e = p["evaluate"]
        return (f"{e['epochs']} epochs, batch {e['batch_size']}, {e['optimizer']} lr {e['lr']}, "
                f"T = {e['temperature']}, EMA {e['ema_decay']}, cosine stretch {e['lr_stretch']}")
    protocols = {step: results["protocols"][step] for step in steps_in(results["runs"])}
    if len({json.dumps(p, sort_keys=True) for p in protocols.values()}) == 1:
        return text(next(iter(protocols.values())))
    return "; ".join(f"`{step}`: {text(p)}" for step, p in protocols.items())


def markdown(results: dict) -> str:
    t = results["teacher"]
    steps = steps_in(results["runs"])
    made_by = sorted({(r["date"], harness.short_revision(r["git_revision"]), r["command"]) for r in results["runs"]})
    groups = results["summary"]
    lines = ["Measured by:", "", "```", *[f"# {date}, git {rev}\n{command}" for date, rev, command in made_by], "```",
             "", f"The condensed sets of the method ladder's {' and '.join(f'`{s}`' for s in steps)} "
             f"row{'s' if len(steps) > 1 else ''} (the tables' first column; the ladder's runs, `OUT/ladder/`, "
             f"recovered by the {100 * t['test_top1']:.2f} % teacher `{t['sha256'][:8]}`), each compared with its "
             "own seed's random real images, labelled by the same teacher and trained by the same student protocol "
             f"as its row: {protocol_text(results)}. Test top-1 %, mean ± "
             "std over seeds; margins are condensed minus random real + the same labels, in points, per seed (min "
             "to max).",
             "" if results["complete"] else "**Incomplete: not every job of the command has finished; rows show "
                                            "what has.**", "", verdict(groups), ""]
    cross = [g for g in groups if g["part"] == "cross-arch"]
    if cross:
        lines += ["**Across student architectures** (evaluate.students, each trained on the condensed set and on "
                  "both random-real sets):", "",
                  "| ladder row | IPC | student | condensed | random real, hard labels | random real + teacher "
                  "labels | margin |", "|---|---|---|---|---|---|---|"]
        lines += [f"| `{g['step']}` | {g['ipc']} | {g['arch']} | {pct(g['condensed'])} | "
                  f"{pct(g['random_real_hard'])} | {pct(g['random_real_soft'])} | {spread(g['margins'])} |"
                  for g in cross]
        lines.append("")
    second = [g for g in groups if g["part"] == "second-teacher"]
    if second:
        lab = second[0]["labeller"]
        lines += [f"**Under a second teacher's labels** (relabel.teacher: {lab['arch']} {lab['arch_kwargs']}, test "
                  f"top-1 {100 * lab['test_top1']:.2f} %, `{lab['sha256'][:8]}`, squeezed independently; it labels "
                  "the condensed and the random real images alike; the ConvNet student):", "",
                  "| ladder row | IPC | condensed | random real, hard labels | random real + second teacher's "
                  "labels | margin | margin under the recovery teacher's labels (the ladder's runs, same seeds) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| `{g['step']}` | {g['ipc']} | {pct(g['condensed'])} | {pct(g['random_real_hard'])} | "
                  f"{pct(g['random_real_soft'])} | {spread(g['margins'])} | {spread(g['ladder_margins'])} |"
                  for g in second]
        lines.append("")
    for g in (g for g in groups if g["part"] == "continual"):
        lines += [f"**Class-incremental learning** (`{g['step']}`; srel-ray continual, GDumb-style: a "
                  f"{g['learner']['arch']} "
                  f"student retrained from the memory after each step, {g['learner']['epochs']} epochs; IPC "
                  f"{g['ipc']}, seeds {', '.join(map(str, g['seeds']))}; test top-1 % on the classes seen, mean "
                  "over seeds):", "", "| steps | memory | " + "top-1 after each step (classes seen) | mean |",
                  "|---|---|---|---|"]
        for s, entry in g["steps"].items():
            for memory, accuracies in entry["top1"].items():
                steps = ", ".join(f"{100 * a:.1f} ({n})" for a, n in zip(accuracies, entry["classes_seen"]))
                lines.append(f"| {s} | {MEMORY_LABELS[memory]} | {steps} | "
                             f"{100 * statistics.fmean(accuracies):.2f} |")
            lines.append(f"| {s} | margin (mean over steps, per seed) | | {spread(entry['margins'])} |")
        lines.append("")
    return "\n".join(lines).rstrip()


# ------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=harness.QUALITY_CONFIG)
    p.add_argument("--out", type=Path, required=True, help="the quality benchmark's and the ladder's --out")
    harness.add_teacher_option(p)
    p.add_argument("--step", default="edc", choices=STEPS, metavar="STEP", help=f"the ladder row, one of {STEPS}")
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--students", nargs="*", default=["resnet18_small", "bnvit_tiny"], choices=list(ARCHITECTURES),
                   help="cross-arch: student architectures beside the run's own")
    p.add_argument("--second-teacher", type=Path, default=None, metavar="TEACHER_PT",
                   help=f"the labelling teacher of second-teacher (default: squeezed into OUT/{SECOND_TEACHER_FOLDER} "
                        f"with {SECOND_TEACHER})")
    p.add_argument("--continual-ipc", type=int, nargs="+", default=[10])
    p.add_argument("--continual-set", dest="continual_overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help=f"srel-ray continual's --set values, after {CONTINUAL}")
    p.add_argument("--run-set", dest="run_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="the ladder's --run-set values; its resources.* values also apply to what this script trains")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="the quality benchmark's --set values: the second teacher is squeezed with them")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--results", type=Path, default=harness.RESULTS / "generalisation_cifar10.json")
    p.add_argument("--docs", type=Path, default=harness.DOCS)
    return p.parse_args(argv)


def earlier_protocols(path: Path) -> dict[str, dict]:
    """The student protocol of each ladder row an earlier invocation recorded in the results file (files written
    before several rows shared one held a single row's ``step`` and ``protocol``)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    return old.get("protocols") or {old["step"]: old["protocol"]}


def main() -> None:
    harness.quiet_output()
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    teacher_pt = harness.teacher_checkpoint(args, "generalisation")
    cells = plan_cells(args, teacher_pt)
    if args.dry_run:
        describe_plan(cells, plan_jobs(cells, args.parts, args.students, labeller_path(args),
                                       labeller_tag(labeller_path(args)), args.continual_ipc, resource_overrides(args)))
        check_cells(args, cells)
        return
    check_cells(args, cells)
    made_by = {**harness.made_by(), "teacher": harness.describe_teacher(teacher_pt)}
    labeller = second_teacher(args, made_by["teacher"]) if "second-teacher" in args.parts else None
    jobs = plan_jobs(cells, args.parts, args.students, labeller_path(args), labeller_tag(labeller_path(args)),
                     args.continual_ipc, resource_overrides(args))
    describe_plan(cells, jobs)

    earlier = ladder.previous_runs(args.results)  # replaced one by one as this invocation records the same rows
    protocols = {**earlier_protocols(args.results),
                 args.step: {k: to_dict(cells[0].config)[k] for k in ("relabel", "evaluate")}}
    runs: list[dict] = []
    for i, job in enumerate(jobs, 1):
        logging.info("=== %s, IPC %d, seed %d: %s ===", job.part, job.cell.ipc, job.cell.seed, job.folder)
        runs += run_job(job, args, made_by, labeller)
        done = harness.merge_runs(earlier, runs, key=row_key)
        harness.publish({**made_by, "steps": steps_in(done),
                         "students": {s: ARCHITECTURES[s] for s in args.students}, "protocols": protocols,
                         "complete": i == len(jobs), "runs": sorted(done, key=row_key), "summary": summarise(done)},
                        args.results, args.docs, DOC_BLOCK, markdown)
    print(f"\nresults: {args.results}\ndocs: {args.docs}\nrun folders: {cells[0].home}")


if __name__ == "__main__":
    main()
