"""``srel-ray continual DIR``: class-incremental learning with the condensed set as the memory, against random real
images of the same size labelled by the same teacher (GDumb-style, the SRe2L paper's section 3.7).

For each step count S of ``continual.steps`` the classes arrive in S groups, in an order drawn from the seed
(srel_ray.core.continual). After each group, one student is trained from scratch on the memory of every class seen
so far with the condensed set's images and one with the random-real set's, each with the teacher's soft labels,
by the evaluate stage's protocol and code (the executor's ``train_student``: on Ray Train by default, in this
process with ``continual.in_process`` and in tests), and tested on the test images of the seen classes; on Ray,
``resources.concurrent_students`` of them at a time (srel_ray.stages.at_once), since no step's student depends on
another's. Each student's record goes to DIR/continual/students/ under a name that carries its settings, so a rerun
trains only the students it lacks; DIR/continual/continual.json holds every step's test top-1, continual.png draws
them, and both reach MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from srel_ray.config import Config, ContinualConfig, to_dict
from srel_ray.core.continual import class_order, class_steps, seen_classes
from srel_ray.core.precision import resolve_precision
from srel_ray.data.real import RealData
from srel_ray.errors import ConfigError, SrelError
from srel_ray.inspection import save_figure
from srel_ray.stages.at_once import at_once, concurrently, shared_bar
from srel_ray.stages.base import StageContext
from srel_ray.stages.local import InProcessExecutor
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.students import STUDENTS, Student
from srel_ray.studies.base import FinishedRun
from srel_ray.tracking import Tracker, previous_run_id, tracked_run

log = logging.getLogger(__name__)

# The memories compared: each a set of the run, trained on with the teacher's labels (the same protocol for both).
MEMORIES = (STUDENTS["condensed"], STUDENTS["random_real_soft"])
MAY_SET = ("evaluate", "resources", "tracking")  # the run's sections a continual study may override


def study_config(study: FinishedRun) -> Config:
    """The run's config as the step students train by it: continual.epochs (when set) as their epochs."""
    e = study.cfg.evaluate
    return replace(study.cfg, evaluate=replace(e, epochs=study.section.epochs or e.epochs))


def check_study(study: FinishedRun) -> dict[str, sets.SetInfo]:
    """The memories' sets, once both are complete and labelled and every step count fits the class count."""
    cfg, run = study.cfg, study.run
    infos = {}
    for memory in MEMORIES:
        folder = run.set_dir(memory.set_name)
        if not files.exists(sets.manifest_path(folder)):
            raise SrelError(f"{run.out!r} has no complete {memory.set_name} set ({folder}); the random-real "
                            "memory is the run's baseline set: run it with evaluate.baselines: true")
        info = sets.read_set(folder)
        if info.label_epochs != cfg.relabel.epochs:
            raise SrelError(f"set {info.path!r} has no complete labels: finish the run's relabel stage first")
        infos[memory.name] = info
    num_classes = infos["condensed"].num_classes
    for i, steps in enumerate(study.section.steps):
        if steps > num_classes:
            raise ConfigError(f"continual.steps[{i}] must be <= the run's {num_classes} classes (every step brings "
                              f"at least one new class), got {steps}")
    return infos


@contextlib.contextmanager
def in_process(cfg: Config, run: RunDir, data: RealData) -> Iterator[StageContext]:
    """The context of continual.in_process: the in-process executor on this process's GPU when resources.use_gpu
    allows and CUDA works, else the CPU, and the run's MLflow run (continued as on Ray)."""
    device = torch.device("cuda" if cfg.resources.use_gpu is not False and torch.cuda.is_available() else "cpu")
    executor = InProcessExecutor(device, resolve_precision(cfg.resources.precision, device))
    with tracked_run(cfg, "continual", run.out, run_id=previous_run_id(cfg, run)) as tracker:
        yield StageContext(cfg, run, data, executor, tracker)


def settings_key(cfg: Config, seed: int) -> str:
    """What decides a step student besides its step: the class order's seed, the student protocol (evaluate
    section, with its epochs), the run's seed (the students' initialisation) and an explicit precision. Part of
    every student's name, so records and Ray Train checkpoints of other settings are never reused."""
    evaluate = to_dict(cfg.evaluate)
    evaluate.pop("students")
    identity = {"order_seed": seed, "seed": cfg.seed, "evaluate": evaluate, "precision": cfg.resources.precision}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def run_continual(ctx: StageContext, c: ContinualConfig, seed: int, infos: dict[str, sets.SetInfo]) -> dict:
    """Every step of every step count of ``c``, on ``ctx``'s executor; returns the results continual.json holds."""
    cfg = ctx.cfg
    num_classes = infos["condensed"].num_classes
    order = class_order(num_classes, seed)
    key = settings_key(cfg, seed)
    results = {"seed": seed, "class_order": order, "ipc": infos["condensed"].ipc, "num_classes": num_classes,
               "student": {"arch": cfg.evaluate.arch, "arch_kwargs": cfg.evaluate.arch_kwargs,
                           "epochs": cfg.evaluate.epochs},
               "memories": {m.name: m.label for m in MEMORIES}, "settings_key": key, "steps": {}}
    jobs = [_Step(steps, memory.name, replace(memory, name=f"continual-{key}-{steps}steps-{step}-{memory.name}",
                                              classes=tuple(seen_classes(class_steps(order, steps), step))))
            for steps in c.steps for step in range(1, steps + 1) for memory in MEMORIES]  # in step order
    pending = [job for job in jobs if not files.exists(ctx.run.continual_student(job.student.name))]
    if len(pending) < len(jobs):
        log.info("continual: %d of %d students already trained, skipping them", len(jobs) - len(pending), len(jobs))
    together = at_once(ctx.executor, cfg, len(pending))
    trained = {}  # student name -> its test top-1, for the students trained now (each record written as it ends)
    with shared_bar(ctx.progress, {job.student.source: cfg.evaluate.epochs for job in pending}, together):
        for job, record in concurrently(lambda job: _train_step(ctx, job.student, infos[job.memory]), pending,
                                        together):
            trained[job.student.name] = record["top1"]

    def top1_of(student: Student) -> float:
        name = student.name
        return trained[name] if name in trained else files.read_json(ctx.run.continual_student(name))["top1"]

    for steps in c.steps:
        groups = class_steps(order, steps)
        top1 = {m.name: [top1_of(job.student) for job in jobs if job.steps == steps and job.memory == m.name]
                for m in MEMORIES}
        results["steps"][str(steps)] = {
            "groups": groups, "classes_seen": [sum(map(len, groups[:k])) for k in range(1, steps + 1)],
            "top1": top1, "mean_top1": {name: sum(acc) / len(acc) for name, acc in top1.items()}}
    return results


@dataclass(frozen=True)
class _Step:
    """One student of the study: trained after a step of a ``steps``-step sequence, from ``memory``."""

    steps: int
    memory: str  # a MEMORIES name
    student: Student  # named after the settings, step and memory; its classes are those seen by that step


def _train_step(ctx: StageContext, student: Student, info: sets.SetInfo) -> dict:
    log.info("continual: training %s on %d classes", student.name, len(student.classes))
    record, _ = ctx.executor.train_student(ctx, student, info)
    record = {**record, "classes": list(student.classes)}
    files.write_json_atomic(ctx.run.continual_student(student.name), record)
    return record


def report(results: dict, run: RunDir, tracker: Tracker) -> list[str]:
    """continual.json and continual.png in DIR/continual/, both and every step's accuracy in MLflow; returns the
    paths written."""
    data, figure = run.continual("continual.json"), run.continual("continual.png")
    files.write_json_atomic(data, results)
    save_figure(lambda: plot_continual(results), figure)
    for steps, entry in results["steps"].items():
        for name, accuracies in entry["top1"].items():
            for step, top1 in enumerate(accuracies, 1):
                tracker.log_metrics({f"continual.{steps}steps.{name}.top1": top1}, step=step)
            tracker.log_metrics({f"continual.{steps}steps.{name}.mean_top1": entry["mean_top1"][name]})
    tracker.log_artifact(data, "continual")
    tracker.log_artifact(figure, "continual")
    return [p for p in (data, figure) if files.exists(p)]


def format_continual(results: dict) -> str:
    """The console table: per step count, each memory's test top-1 (%) after each step, and their mean."""
    s = results["student"]
    lines = [f"continual learning (class-incremental, GDumb-style): {results['num_classes']} classes, IPC "
             f"{results['ipc']} per class in memory, student {s['arch']} ({s['epochs']} epochs a step), class order "
             f"seed {results['seed']}"]
    for steps, entry in results["steps"].items():
        lines.append(f"{steps} steps, classes seen:".ljust(32) + "".join(f"{n:>7d}" for n in entry["classes_seen"])
                     + "   mean")
        for name, accuracies in entry["top1"].items():
            lines.append(f"  {results['memories'][name]}".ljust(32) + "".join(f"{100 * a:7.2f}" for a in accuracies)
                         + f"{100 * entry['mean_top1'][name]:7.2f}")
    return "\n".join(lines)


def plot_continual(results: dict):
    """Test top-1 on the classes seen so far against the number of classes seen, one panel per step count."""
    from srel_ray.inspection import pyplot

    plt = pyplot()
    entries = results["steps"]
    fig, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries), 4), squeeze=False)
    for ax, (steps, entry) in zip(axes[0], entries.items()):
        for name, accuracies in entry["top1"].items():
            ax.plot(entry["classes_seen"], [100 * a for a in accuracies], marker="o",
                    label=results["memories"][name])
        ax.set(xlabel="classes seen", ylabel="test top-1 % (seen classes)", title=f"{steps} steps",
               ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    fig.suptitle(f"class-incremental learning, IPC {results['ipc']} memory, student {results['student']['arch']}",
                 y=1.02)
    return fig
