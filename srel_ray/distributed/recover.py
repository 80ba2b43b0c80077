"""Recover on a pool of Ray actors: each holds the frozen teacher (on its own GPU when there is one) and recovers
units taken from a shared queue.

Progress records, per unit, in ``<set>/.progress/``:
    unit-NNNNNN.started.json   written when a worker starts the unit: which worker, which attempt
    unit-NNNNNN.json           written after every image of the unit is in place: the unit is done
A unit writes its images under temporary names and renames them into place before its done record, so a restarted
run skips done units and a retried unit only rewrites identical files. A started record without a done record is a
unit in flight, or one whose worker (or driver) died: it is redone, and its next attempt is counted.

With real-image initialisation or per-class matching an actor reads, per unit, only what the unit's classes need:
their real images (srel_ray.data.class_images) and their per-class statistics files. With RDED's starts, Ray tasks
over class slices select and store them first (``run_starts``), and a unit reads only its own."""

from __future__ import annotations

import logging
import time

import ray
import torch

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.core.precision import resolve_precision
from srel_ray.core.recover import Recovery, Unit, plan_units, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.storage import files, sets
from srel_ray.data.class_images import StartImages
from srel_ray.data.real import load_dataset
from srel_ray.distributed.cluster import actor_resources, local_device, worker_identity
from srel_ray.distributed.progress import close_bar, open_bar, send
from srel_ray.stages import starts
from srel_ray.teacher import load_class_stats, load_frozen

log = logging.getLogger(__name__)


class RecoveryWorker:
    """A Ray actor: loads the teacher once, then recovers whatever units it is handed."""

    def __init__(self, cfg: dict, teacher_path: str, set_dir: str, threads: int, extra_teachers: tuple = (),
                 class_stats: tuple = ()):
        torch.set_num_threads(threads)
        self.cfg = from_dict(cfg)
        self.set_dir = set_dir
        self.device = local_device()
        res = self.cfg.resources
        self.precision = resolve_precision(res.precision, self.device)
        teacher, models = load_frozen([teacher_path, *extra_teachers], self.device, res.compile)
        self.norm, self.model, self.extra = teacher.norm, models[0], models[1:]
        self.class_stats_dirs = list(class_stats)  # one folder per teacher, or none
        # recover.init real: the dataset's labels (no image is read until a unit asks for its classes'); RDED's
        # starts are read from the set's start/ folder, where run_starts stored them.
        data = load_dataset(self.cfg.data) if self.cfg.recover.init == "real" else None
        self.start_images = StartImages(self.cfg.recover, self.cfg.seed, set_dir, teacher.in_channels, data)

    def identity(self) -> dict:
        # A restarted actor keeps its actor id and gets a new process: both say who did a unit, and after what.
        return {**worker_identity(), "actor_id": ray.get_runtime_context().get_actor_id(), "device": str(self.device)}

    def recover(self, unit: Unit, progress_board=None) -> dict:
        """``progress_board`` (a progress Board, or None) gets the loss every tracking.loss_interval iterations."""
        start = time.perf_counter()
        started = sets.unit_started(self.set_dir, unit.name)
        attempt = files.read_json(started)["attempt"] + 1 if files.exists(started) else 1
        files.write_json_atomic(started, {"unit": unit.index, "attempt": attempt, "worker": self.identity()})
        stats_per_teacher = None
        if self.cfg.recover.class_bn_weight and self.cfg.recover.iterations:
            stats_per_teacher = [load_class_stats(d, list(unit.classes)) for d in self.class_stats_dirs]
        every = self.cfg.tracking.loss_interval
        on_step = None
        if every and progress_board is not None:
            def on_step(step: int, loss: float) -> None:
                send(progress_board, source="recover", unit=unit.index, step=step, loss=loss)
        images, stats = recover_unit(Recovery.of(self.cfg, [self.model, *self.extra], self.norm, device=self.device,
                                                 precision=self.precision),
                                     unit, recover_terms(self.cfg.recover, stats_per_teacher),
                                     init=self.start_images(unit), on_step=on_step, on_step_every=max(every, 1))
        stats.update(unit=unit.index, attempt=attempt, precision=self.precision, seconds=time.perf_counter() - start,
                     worker=self.identity())
        # The marker keeps the images' checksums too (the manifest is assembled from markers); the driver gets stats.
        sets.write_image_unit(self.set_dir, sets.unit_marker(self.set_dir, unit.name), unit.targets(), images, stats)
        return stats


def select_starts(cfg: dict, teachers: tuple[str, ...], set_dir: str, classes: range, progress_board=None) -> int:
    """A Ray task: RDED's start images of one class slice (srel_ray.stages.starts), with the teachers on this
    worker's device and its threads, as a recovery actor holds them. ``progress_board`` (a progress Board, or
    None) hears of each class stored."""
    cfg = from_dict(cfg)
    torch.set_num_threads(cfg.resources.threads_per_worker)
    device = local_device()
    teacher, models = load_frozen(list(teachers), device, cfg.resources.compile)
    posted = []
    stored = starts.select_slice(load_dataset(cfg.data), cfg, models, teacher.norm, set_dir, classes, device,
                                 on_class=lambda c: posted.append(send(progress_board, source="starts", item=c)))
    if progress_board is not None:
        # The driver drains the board one last time once every task has returned, then closes the bar: the puts
        # must have landed by then (an actor call from a worker can otherwise arrive after the driver's drain).
        ray.get(posted)
    return stored


def run_starts(cfg: Config, teachers: list[str], set_dir: str, slices: list[range], use_gpu: bool,
               progress=None) -> None:
    """RDED's start images of ``slices``, one Ray task a slice with a recovery actor's resources (a dead task is
    retried: it rewrites the same files). ``progress``: the command's srel_ray.distributed.progress.Progress (the
    bar, a step each class a task has stored), or None for a plain bar."""
    if not slices:
        return
    log.info("recover: selecting RDED's start images of %d class slices", len(slices))
    task = ray.remote(max_retries=3, **actor_resources(cfg.resources, use_gpu))(select_starts)
    bar = open_bar(progress, "starts", starts.STARTS_BAR, sum(map(len, slices)), "class")
    board = progress.board if progress else None
    ray.get([task.remote(to_dict(cfg), tuple(teachers), set_dir, s, board) for s in slices])
    if progress is None:  # no board, so no task reported its classes: they are all stored now
        bar.update(bar.total)
    close_bar(progress, "starts", bar)


def run_recover(cfg: Config, teacher_path: str, set_dir: str, num_classes: int, use_gpu: bool,
                extra_teachers: list[str] = (), class_stats: list[str] = (), progress=None) -> dict:
    """Recover every unit not yet marked done; returns counts, per-unit stats, the actors' identities and the node
    each unit of this call ran on. ``extra_teachers``: more teacher.pt paths (teacher.extra); ``class_stats``:
    per-class statistics folders, one per teacher (recover.class_bn_weight > 0). ``progress``: the command's
    srel_ray.distributed.progress.Progress (the units bar, live losses), or None for a plain bar."""
    units = plan_units(num_classes, cfg.recover.ipc, cfg.recover.classes_per_unit, cfg.recover.ipc_per_unit)
    pending = [u for u in units if not files.exists(sets.unit_marker(set_dir, u.name))]
    skipped = len(units) - len(pending)
    interrupted = [u.index for u in pending if files.exists(sets.unit_started(set_dir, u.name))]
    if skipped:
        log.info("recover: %d of %d units already done, skipping them", skipped, len(units))
    if interrupted:
        log.info("recover: %d units were started by an earlier run and not finished, redoing them: %s",
                 len(interrupted), interrupted)
    summary = {"units": len(units), "skipped": skipped, "interrupted": interrupted}
    if not pending:
        return {**summary, "retried": [], "stats": [], "actors": [], "unit_nodes": {}}

    res = cfg.resources
    request = actor_resources(res, use_gpu)
    # A dead actor is restarted and its unit retried on it (the retry rewrites the same files).
    actor_cls = ray.remote(max_restarts=3, max_task_retries=3, **request)(RecoveryWorker)
    n_actors = min(res.recover_actors, len(pending))
    actors = [actor_cls.remote(to_dict(cfg), teacher_path, set_dir, res.threads_per_worker, tuple(extra_teachers),
                               tuple(class_stats)) for _ in range(n_actors)]
    identities = ray.get([a.identity.remote() for a in actors])
    pool = ray.util.ActorPool(actors)
    stats = []
    bar = open_bar(progress, "recover", "recover", len(units), "unit", initial=skipped)
    # The board goes with each call, not to the constructor: Ray warns on the console about restartable actors
    # whose constructor arguments live in the object store.
    board = progress.board if progress else None
    for result in pool.map_unordered(lambda a, u: a.recover.remote(u, board), pending):
        stats.append(result)
        bar.update(1)
    close_bar(progress, "recover", bar)
    for actor in actors:
        ray.kill(actor)
    stats.sort(key=lambda s: s["unit"])
    # Attempts count across runs: a unit interrupted by a dead driver and redone here is a retry too.
    retried = [s["unit"] for s in stats if s["attempt"] > 1]
    if retried:
        log.info("recover: units %s needed more than one attempt (a worker or the driver died)", retried)
    # Where each unit ran (its marker holds the same): shows the work spread over the nodes of a cluster.
    return {**summary, "retried": retried, "stats": stats, "actors": identities,
            "unit_nodes": {s["unit"]: s["worker"]["node_id"] for s in stats}}
