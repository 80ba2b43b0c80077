"""DIR/summary.json, written once every stage of a run has finished, and the table printed from it."""

from __future__ import annotations

from srel_ray.config import Config
from srel_ray.data.real import RealData
from srel_ray.stages.registry import STAGES
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir
from srel_ray.students import STUDENTS
from srel_ray.teacher import load_teacher


def write_summary(cfg: Config, run: RunDir, data: RealData) -> dict:
    """The teacher's and every student's test accuracy, each stage's seconds, where the outputs are."""
    teacher = load_teacher(run.teacher)
    students = {name: files.read_json(run.student_record(name))
                for name in STUDENTS if files.exists(run.student_record(name))}
    summary = {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "ipc": cfg.recover.ipc,
        "teacher": teacher.arch,
        "student": cfg.evaluate.arch,
        "teacher_top1": teacher.metrics.get("test_top1"),
        "student_top1": students["condensed"]["top1"],
        "student_top5": students["condensed"]["top5"],
        "baseline_random_hard_top1": students.get("random_real_hard", {}).get("top1"),
        "baseline_random_soft_top1": students.get("random_real_soft", {}).get("top1"),
        "baseline_random_hard_top5": students.get("random_real_hard", {}).get("top5"),
        "baseline_random_soft_top5": students.get("random_real_soft", {}).get("top5"),
        "seconds": {s: files.read_json(run.stage_record(s))["seconds"] for s in STAGES},
        **({"cross_arch": cross_architecture(cfg, run)} if cfg.evaluate.students else {}),
        "outputs": {"condensed": run.set_dir("condensed"), "teacher": run.teacher},
    }
    files.write_json_atomic(run.summary, summary)
    return summary


def cross_architecture(cfg: Config, run: RunDir) -> dict:
    """Per student architecture (evaluate.arch, then evaluate.students): the test top-1 of the condensed-set
    student and of both random-real baselines (the SRe2L paper's Table 5 layout, with the baselines beside)."""
    archs = [(None, cfg.evaluate.arch)] + [(s.key, s.arch) for s in cfg.evaluate.students]
    out = {}
    for key, arch in archs:
        row = {}
        for name, student in STUDENTS.items():
            path = run.student_record(name, key)
            row[student.summary_key] = files.read_json(path)["top1"] if files.exists(path) else None
        out[key or arch] = {"arch": arch, **row}
    return out


def format_cross_architecture(cross: dict) -> list[str]:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    lines = [f"{'student architecture':30s} condensed  random+hard  random+teacher  (top-1 %)"]
    for key, row in cross.items():
        lines.append(f"{key:30s} {pct(row['student_top1'])}   {pct(row['baseline_random_hard_top1'])}"
                     f"       {pct(row['baseline_random_soft_top1'])}")
    return lines


def format_summary(summary: dict) -> str:
    """The table printed at the end of a run."""

    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    rows = [("teacher (full real data)", summary["teacher_top1"]),
            ("condensed set (soft labels)", summary["student_top1"]),
            ("random real, hard labels", summary["baseline_random_hard_top1"]),
            ("random real, teacher labels", summary["baseline_random_soft_top1"])]
    lines = [f"{summary['dataset']}: {summary['num_classes']} classes, IPC {summary['ipc']}, "
             f"teacher {summary['teacher']}, student {summary['student']}",
             f"{'':30s} top-1 %"] + [f"{name:30s} {pct(v)}" for name, v in rows]
    lines.append("seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in summary["seconds"].items())
                 + f" (total {sum(summary['seconds'].values()):.1f})")
    if summary.get("cross_arch"):
        lines += format_cross_architecture(summary["cross_arch"])
    soft = summary["baseline_random_soft_top1"]
    if soft is not None:
        verdict = "beats" if summary["student_top1"] > soft else "does NOT beat"
        lines.append(f"the condensed set {verdict} random real images with the same teacher labels")
    return "\n".join(lines)
