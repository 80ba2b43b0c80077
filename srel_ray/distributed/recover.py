"""Recover on a pool of Ray actors: each holds the frozen teacher (on its own GPU when there is one) and recovers
units taken from a shared queue. A unit writes its images under temporary names, renames them into place and then
writes its marker, so a restarted run skips finished units and a retried unit only rewrites identical files."""

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
        return {**worker_identity(), "device": str(self.device)}

    def recover(self, unit: Unit) -> dict:
        start = time.perf_counter()
        images, stats = recover_unit(self.model, unit, self.cfg.recover, seed=self.cfg.seed,
                                     image_size=self.cfg.data.image_size, norm=self.norm,
                                     hflip=self.cfg.data.hflip, device=self.device)
        sets.write_images(self.set_dir, unit.targets(), images)
        stats.update(unit=unit.index, seconds=time.perf_counter() - start, worker=self.identity())
        sets.write_json_atomic(unit_marker(self.set_dir, unit), stats)
        return stats


def run_recover(cfg: Config, teacher_path: str, set_dir: str, num_classes: int, use_gpu: bool) -> dict:
    """Recover every unit not yet marked done; returns counts, per-unit stats, the actors' identities and the node
    each unit of this call ran on."""
    units = plan_units(num_classes, cfg.recover.ipc, cfg.recover.classes_per_unit, cfg.recover.ipc_per_unit)
    pending = [u for u in units if not sets.exists(unit_marker(set_dir, u))]
    skipped = len(units) - len(pending)
    if skipped:
        log.info("recover: %d of %d units already done, skipping them", skipped, len(units))
    if not pending:
        return {"units": len(units), "skipped": skipped, "stats": [], "actors": [], "unit_nodes": {}}

    res = cfg.resources
    request = actor_resources(res, use_gpu)
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
    # Where each unit ran (its marker holds the same): shows the work spread over the nodes of a cluster.
    return {"units": len(units), "skipped": skipped, "stats": stats, "actors": identities,
            "unit_nodes": {s["unit"]: s["worker"]["node_id"] for s in stats}}
