"""Evaluate: the condensed set's student and, with evaluate.baselines, both random-real students, each trained
from scratch by the executor on one protocol and tested on the real test split; one DIR/evaluate/<student>.json
each, so a rerun trains only the students without one. Each architecture of evaluate.students trains the same
students by the same protocol, into DIR/evaluate/<arch key>/<student>.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from srel_ray.config import Config
from srel_ray.errors import SrelError
from srel_ray.stages.at_once import at_once, concurrently, shared_bar
from srel_ray.stages.base import LABELS, SCORES, TEACHER, Plan, StageContext
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.students import Student, students_of

log = logging.getLogger(__name__)

NAME = "evaluate"


@dataclass(frozen=True)
class StudentScore:
    top1: float
    top5: float


@dataclass
class EvaluateResult:
    scores: dict[str, StudentScore]  # every student of the run, trained now or before
    skipped_students: list[str] = field(default_factory=list)  # trained by an earlier command
    resumed: dict[str, dict] = field(default_factory=dict)  # per student trained now: epochs resumed, restarts
    skipped: bool = False


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(TEACHER, LABELS), makes=(SCORES,))


def architectures(cfg: Config) -> list[tuple[str | None, Config]]:
    """(folder key, config) of every student architecture: evaluate.arch first (key None: DIR/evaluate/), then each
    of evaluate.students, as the same protocol with that architecture."""
    e = cfg.evaluate
    return [(None, cfg)] + [(s.key, replace(cfg, evaluate=replace(e, arch=s.arch, arch_kwargs=s.arch_kwargs)))
                            for s in e.students]


def is_done(cfg: Config, run: RunDir) -> bool:
    return all(files.exists(run.student_record(s.name, key))
               for key, _ in architectures(cfg) for s in students_of(cfg.evaluate.baselines))


def run(ctx: StageContext) -> EvaluateResult:
    cfg, run_dir = ctx.cfg, ctx.run
    students = students_of(cfg.evaluate.baselines)
    work = [(key, arch_cfg, s) for key, arch_cfg in architectures(cfg) for s in students]
    done = [_label(key, s.name) for key, _, s in work if files.exists(run_dir.student_record(s.name, key))]
    if done:
        log.info("evaluate: %d of %d students already trained, skipping them: %s", len(done), len(work),
                 ", ".join(done))
    jobs = []
    for key, arch_cfg, student in work:
        if _label(key, student.name) in done:
            continue
        info = sets.read_set(run_dir.set_dir(student.set_name))
        if info.label_epochs != cfg.relabel.epochs:
            raise SrelError(f"set {info.path!r} has no complete labels: run the relabel stage first")
        jobs.append(_Job(key, student, replace(ctx, cfg=arch_cfg), info))

    records, resumed = {}, {}
    together = at_once(ctx.executor, cfg, len(jobs))
    with shared_bar(ctx.progress, {job.named.source: job.ctx.cfg.evaluate.epochs for job in jobs}, together):
        for job, (result, how) in concurrently(_train, jobs, together):
            files.write_json_atomic(run_dir.student_record(job.student.name, job.key), result)
            records[job.label], resumed[job.label] = result, how
    scores = {}
    for key, _, student in work:  # in the run's order, whichever student finished first
        label = _label(key, student.name)
        result = records[label] if label in records else files.read_json(run_dir.student_record(student.name, key))
        scores[label] = StudentScore(result["top1"], result["top5"])
    return EvaluateResult(scores, done, {label: resumed[label] for label in scores if label in resumed},
                          skipped=len(done) == len(work))


@dataclass(frozen=True)
class _Job:
    """One student to train: its architecture's folder key, the student, the context of its architecture's config,
    and the set it trains on."""

    key: str | None
    student: Student
    ctx: StageContext
    info: sets.SetInfo

    @property
    def label(self) -> str:
        return _label(self.key, self.student.name)

    @property
    def named(self) -> Student:
        """The student under the name of its Ray Train run (and progress source): one per architecture."""
        return self.student if self.key is None else replace(self.student, name=f"{self.student.name}-{self.key}")


def _train(job: _Job) -> tuple[dict, dict]:
    log.info("evaluate: training the %s student", job.label)
    return job.ctx.executor.train_student(job.ctx, job.named, job.info)


def _label(key: str | None, student: str) -> str:
    return student if key is None else f"{key}/{student}"


def record(result: EvaluateResult) -> dict:
    return {**{name: {"top1": s.top1, "top5": s.top5} for name, s in result.scores.items()},
            "skipped_students": result.skipped_students, "resumed": result.resumed, "skipped": result.skipped}
