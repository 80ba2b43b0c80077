"""A command's stages in order in one StageContext, whichever executor it holds: the Ray executor under
``srel-ray run`` (srel_ray.pipeline.run_stages), the in-process one in tests. Each stage's record goes to
DIR/stages/<stage>.json; summary.json and the accuracy curves are written once every stage of the run has finished.
Ray-free: the executor brings Ray when there is one."""

from __future__ import annotations

import logging
import time

from srel_ray.progress import Console, stage_did
from srel_ray.stages.base import StageContext
from srel_ray.stages.registry import STAGES, UNITS
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir
from srel_ray.students import STUDENTS
from srel_ray.summary import write_summary
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)


def run_stage_loop(ctx: StageContext, stages: tuple[str, ...], console: Console) -> dict | None:
    """Run ``stages`` in order in ``ctx``, record each, and return the summary once the run is finished (else
    None). A stage that skipped its work keeps the seconds of the command that did it."""
    run, tracker = ctx.run, ctx.tracker
    units = [UNITS[stage] for stage in stages]
    for i, unit in enumerate(units, 1):
        log.info("[%d/%d] %s", i, len(units), unit.NAME)
        console.stage_started(i, len(units), unit.NAME)
        began = time.perf_counter()
        result = unit.run(ctx)
        seconds = time.perf_counter() - began
        record = unit.record(result)
        console.stage_finished(i, len(units), unit.NAME, seconds, stage_did(unit.NAME, record))
        path = run.stage_record(unit.NAME)
        if files.exists(path) and result.skipped:
            seconds = files.read_json(path)["seconds"]  # keep the time of the run that did the work
        files.write_json_atomic(path, {"stage": unit.NAME, "seconds": seconds, "result": record})
        tracker.log_metrics({f"seconds.{unit.NAME}": seconds})
    summary = write_summary(ctx.cfg, run, ctx.data) if finished(run) else None
    if summary:
        tracker.log_metrics({k: v for k, v in summary.items() if k.endswith("top1") or k.endswith("top5")})
        tracker.log_metrics({f"cross_arch.{key}.{k}": v for key, row in summary.get("cross_arch", {}).items()
                             for k, v in row.items() if k.endswith("top1") and v is not None})
        tracker.log_artifact(draw_curves(run))
        tracker.log_artifact(run.summary)
    return summary


def finished(run: RunDir) -> bool:
    return all(files.exists(run.stage_record(s)) for s in STAGES) and files.exists(run.student_record("condensed"))


def draw_curves(run: RunDir) -> str:
    """DIR/accuracy_curves.png: the teacher's and every trained student's test top-1 against epoch."""
    from srel_ray.inspection import save_curves  # matplotlib: only once a run has finished

    students = {name: files.read_json(run.student_record(name))["history"]
                for name in STUDENTS if files.exists(run.student_record(name))}
    return save_curves(load_teacher(run.teacher).metrics.get("history", []), students, run.curves)
