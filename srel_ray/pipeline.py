"""The orchestrator of ``srel-ray run`` and the stage commands: check every input, claim the run folder, start
Ray, and run the stages in order with srel_ray.stage_loop (srel_ray.stages, their heavy work on
srel_ray.distributed.executor), which records what each did in DIR/stages/<stage>.json and writes the summary once
every stage has finished. Every stage skips work whose outputs are complete, so re-running a command resumes it.
The folder's layout: srel_ray.storage.layout.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from srel_ray.config import Config
from srel_ray.data.real import InMemoryData, RealData
from srel_ray.distributed.cluster import (check_address, check_precision, check_resources, ray_logs_dir,
                                          resolve_use_gpu, start_ray)
from srel_ray.distributed.executor import RayExecutor
from srel_ray.distributed.progress import Progress
from srel_ray.progress import Console, log_to_file
from srel_ray.stages.base import StageContext
from srel_ray.stages.checks import check_inputs
from srel_ray.stage_loop import run_stage_loop
from srel_ray.stages.registry import STAGES
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir, prepare_out
from srel_ray.tracking import previous_run_id, tracked_run, tracking_uri

log = logging.getLogger(__name__)

__all__ = ["STAGES", "run_stages"]


def run_stages(cfg: Config, out: str | Path, stages: tuple[str, ...], command: str,
               console: Console | None = None) -> dict | None:
    """Check everything, then run ``stages`` in order on Ray; writes summary.json once evaluate has finished.
    ``out`` is a local folder or an fsspec URL that every Ray worker can reach. ``console``: what the person
    running the command sees (default: stage lines and progress bars)."""
    console = console or Console()
    check_address(cfg.resources)  # first: a cluster address nothing answers at fails in seconds
    data = check_inputs(cfg, RunDir.at(out), stages)  # before anything is written
    run = prepare_out(cfg, out)
    with on_ray(cfg, run, data, command, console) as ctx:
        if ctx.tracker.enabled:
            files.write_json_atomic(run.tracking, {"run_id": ctx.tracker.run_id, "tracking_uri": tracking_uri(cfg)})
        return run_stage_loop(ctx, stages, console)


@contextlib.contextmanager
def on_ray(cfg: Config, run: RunDir, data: RealData, command: str, console: Console) -> Iterator[StageContext]:
    """The context a command's heavy work runs in on Ray: the driver's log in the run folder, Ray started or joined
    and checked against the resources asked for, the run's MLflow run (continued when an earlier command on the
    folder made one in the same store), progress bars, and the Ray executor."""
    _keep_logs(run)
    start_ray(cfg.resources, verbose=console.verbosity == "verbose")
    _link_ray_logs(run)
    use_gpu = resolve_use_gpu(cfg.resources)
    # Requests no node can meet fail now, not after hours of squeeze.
    check_resources(cfg.resources, use_gpu, data_tasks=not isinstance(data, InMemoryData))
    check_precision(cfg.resources, use_gpu)  # fp16 on a CPU, bf16 on a GPU without it: now, not in a worker
    with tracked_run(cfg, command, run.out, run_id=previous_run_id(cfg, run)) as tracker:

        def live(prefix: str, step: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=step, prefix=prefix)

        with Progress(console, live, cfg.recover.iterations) as progress:
            yield StageContext(cfg, run, data, RayExecutor(use_gpu), tracker, progress)


def _keep_logs(run: RunDir) -> None:
    """The driver's full log in DIR/logs/driver.log (local folders; a URL's logs stay with Ray's session logs)."""
    if run.is_local:
        log_to_file(run.logs)


def _link_ray_logs(run: RunDir) -> None:
    """DIR/logs/ray: a link to Ray's session logs on this machine (workers' output, Ray Data, Ray Train)."""
    ray_logs = ray_logs_dir()
    if not run.is_local or ray_logs is None:
        return
    link = Path(run.logs) / "ray"
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(ray_logs, target_is_directory=True)
    log.info("Ray's logs (workers' output, Ray Data, Ray Train): %s", ray_logs)


def run_continual_study(out: str | Path, overrides: list[str], console: Console | None = None) -> tuple[dict, list]:
    """``srel-ray continual DIR``: every step student on Ray, or in this process with continual.in_process
    (srel_ray.studies.continual); returns the results and the paths of continual.json and the figure."""
    from srel_ray.data.real import load_dataset
    from srel_ray.studies import continual
    from srel_ray.studies.base import finished_run

    study = finished_run(out, overrides, "continual", continual.MAY_SET)
    infos = continual.check_study(study)  # before Ray starts
    cfg = continual.study_config(study)
    data = load_dataset(cfg.data)
    with (continual.in_process(cfg, study.run, data) if study.section.in_process else
          on_ray(cfg, study.run, data, "continual", console or Console())) as ctx:
        results = continual.run_continual(ctx, study.section, study.seed(), infos)
        return results, continual.report(results, study.run, ctx.tracker)
