"""Recover on a pool of Ray actors: each holds the frozen teacher (on its own GPU when there is one) and recovers
units taken from a shared queue.

Progress records, per unit, in ``<set>/.progress/``:
    unit-NNNNNN.started.json   written when a worker starts the unit: which worker, which attempt
    unit-NNNNNN.json           written after every image of the unit is in place: the unit is done
A unit writes its images under temporary names and renames them into place before its done record, so a restarted
run skips done units and a retried unit only rewrites identical files. A started record without a done record is a
unit in flight, or one whose worker (or driver) died: it is redone, and its next attempt is counted."""

from __future__ import annotations

import logging
import time

import ray
import torch
from tqdm import tqdm

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.core.recover import Unit, freeze, plan_units, recover_unit
from srel_ray.data import sets
from srel_ray.distributed.cluster import actor_resources, local_device, worker_identity
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)


def unit_marker(set_dir: str, unit: Unit) -> str:
    return sets.join(set_dir, ".progress", f"{unit.name}.json")


def unit_started(set_dir: str, unit: Unit) -> str:
    return sets.join(set_dir, ".progress", f"{unit.name}.started.json")


class RecoveryWorker:
    """A Ray actor: loads the teacher once, then recovers whatever units it is handed."""

    def __init__(self, cfg: dict, teacher_path: str, set_dir: str, threads: int):
        torch.set_num_threads(threads)
        self.cfg = from_dict(cfg)
        self.set_dir = set_dir
        self.device = local_device()
        teacher = load_teacher(teacher_path)
        self.norm = teacher.norm
        self.model = freeze(teacher.build()).to(self.device)

    def identity(self) -> dict:
        # A restarted actor keeps its actor id and gets a new process: both say who did a unit, and after what.
        return {**worker_identity(), "actor_id": ray.get_runtime_context().get_actor_id(), "device": str(self.device)}

    def recover(self, unit: Unit) -> dict:
        start = time.perf_counter()
        started = unit_started(self.set_dir, unit)
        attempt = sets.read_json(started)["attempt"] + 1 if sets.exists(started) else 1
        sets.write_json_atomic(started, {"unit": unit.index, "attempt": attempt, "worker": self.identity()})
        images, stats = recover_unit(self.model, unit, self.cfg.recover, seed=self.cfg.seed,
                                     image_size=self.cfg.data.image_size, norm=self.norm,
                                     hflip=self.cfg.data.hflip, device=self.device)
        sets.write_images(self.set_dir, unit.targets(), images)
        stats.update(unit=unit.index, attempt=attempt, seconds=time.perf_counter() - start, worker=self.identity())
        sets.write_json_atomic(unit_marker(self.set_dir, unit), stats)
        return stats


def run_recover(cfg: Config, teacher_path: str, set_dir: str, num_classes: int, use_gpu: bool) -> dict:
    """Recover every unit not yet marked done; returns counts, per-unit stats and the actors' identities."""
    units = plan_units(num_classes, cfg.recover.ipc, cfg.recover.classes_per_unit, cfg.recover.ipc_per_unit)
    pending = [u for u in units if not sets.exists(unit_marker(set_dir, u))]
    skipped = len(units) - len(pending)
    interrupted = [u.index for u in pending if sets.exists(unit_started(set_dir, u))]
    if skipped:
        log.info("recover: %d of %d units already done, skipping them", skipped, len(units))
    if interrupted:
        log.info("recover: %d units were started by an earlier run and not finished, redoing them: %s",
                 len(interrupted), interrupted)
    summary = {"units": len(units), "skipped": skipped, "interrupted": interrupted}
    if not pending:
        return {**summary, "retried": [], "stats": [], "actors": []}

    res = cfg.resources
    request = actor_resources(res, use_gpu)
    # A dead actor is restarted and its unit retried on it (the retry rewrites the same files).
    actor_cls = ray.remote(max_restarts=3, max_task_retries=3, **request)(RecoveryWorker)
    n_actors = min(res.recover_actors, len(pending))
    actors = [actor_cls.remote(to_dict(cfg), teacher_path, set_dir, res.threads_per_worker) for _ in range(n_actors)]
    identities = ray.get([a.identity.remote() for a in actors])
    pool = ray.util.ActorPool(actors)
    stats = []
    for result in tqdm(pool.map_unordered(lambda a, u: a.recover.remote(u), pending), total=len(pending),
                       desc="recover units", unit="unit"):
        stats.append(result)
    for actor in actors:
        ray.kill(actor)
    stats.sort(key=lambda s: s["unit"])
    # Attempts count across runs: a unit interrupted by a dead driver and redone here is a retry too.
    retried = [s["unit"] for s in stats if s["attempt"] > 1]
    if retried:
        log.info("recover: units %s needed more than one attempt (a worker or the driver died)", retried)
    return {**summary, "retried": retried, "stats": stats, "actors": identities}
