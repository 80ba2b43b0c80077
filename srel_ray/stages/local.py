"""The in-process executor: the stages' heavy work in this process, with the plain-PyTorch loops of srel_ray.core
and no Ray. Tuning trials use it (nesting actor pools or Ray Train inside a Ray Tune trial would oversubscribe a
small machine and can deadlock waiting for CPUs the trials hold), and so do tests.

It takes the same calls as the Ray executor (srel_ray.distributed.executor) for recovery (RDED's start images
first, srel_ray.stages.starts), labels and students, and writes the same files; a unit's marker holds its stats,
unit and precision (no worker or attempt: there is one worker). Teachers are loaded once per executor. Teachers
and class statistics come made: the tune driver makes them once, on Ray, for every trial.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from srel_ray.config import Config
from srel_ray.core.class_stats import ClassStatsAccumulator, batch_sums, check_every_class_seen
from srel_ray.core.continual import memory_images, restrict_batches, restrict_labels
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import grad_scaler, prepare_model
from srel_ray.core.recover import Recovery, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.relabel import label_image_block, relabel_blocks
from srel_ray.core.student import WeightEMA, build_student, count_correct, student_optimizer, train_student_epoch
from srel_ray.data.class_images import StartImages
from srel_ray.data.real import RealData
from srel_ray.stages import baselines, starts
from srel_ray.stages.base import StageContext
from srel_ray.stages.recover import RecoverResult, needs_class_stats, pending_units
from srel_ray.storage import sets
from srel_ray.students import Student
from srel_ray.teacher import (Teacher, class_stats_complete, load_class_stats, load_frozen, load_teacher,
                              save_class_stats)


class InProcessExecutor:
    """``start_data`` gives the real images recovery may start from (recover.init real, or RDED's candidates; a
    trial's excludes its validation images); it is called only when units or RDED start images are to be made."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "fp32", compile_model: bool = False,
                 start_data: Callable[[], RealData] | None = None):
        self.device, self.precision, self.compile_model = device, precision, compile_model
        self.start_data = start_data
        self._teachers: dict[tuple[str, ...], tuple[Teacher, list[nn.Module]]] = {}

    def teachers(self, paths: list[str]) -> tuple[Teacher, list[nn.Module]]:
        """The first teacher, and the frozen models of all (the first, then the extra teachers), loaded once."""
        key = tuple(paths)
        if key not in self._teachers:
            self._teachers[key] = load_frozen(paths, self.device, self.compile_model)
        return self._teachers[key]

    def class_stats(self, cfg: Config, data: RealData, teachers: list[str], folders: list[str],
                    progress=None) -> None:
        """Each teacher's per-class statistics of the training split, in one pass of ``relabel.batch_size``
        batches in stored order (as the Ray pass adds them), unless every folder is complete. One process holds
        every class's sums: for the sizes this executor runs (srel_ray.distributed.class_stats shards them)."""
        if all(class_stats_complete(f) for f in folders):
            return
        _, models = self.teachers(teachers)
        norms = [load_teacher(path).norm for path in teachers]  # each teacher's own, as the Ray pass uses
        totals = [ClassStatsAccumulator(data.num_classes) for _ in teachers]
        images = 0
        with tqdm(total=data.num_images("train"), desc="class statistics", unit="image") as bar:
            for x, y in data.batches("train", cfg.relabel.batch_size):
                for total, model, norm in zip(totals, models, norms):
                    total.add(batch_sums(model, norm.normalize_uint8(x).to(self.device), y))
                images += len(y)
                bar.update(len(y))
        check_every_class_seen(totals[0].missing())
        for path, folder, total in zip(teachers, folders, totals):
            save_class_stats(total.result(), folder, {"teacher": path, "images": images})

    def recover(self, cfg: Config, teachers: list[str], set_dir: str, num_classes: int, class_stats: list[str],
                progress=None) -> RecoverResult:
        """Recover the units of the set without a marker, one after another."""
        r = cfg.recover
        units, pending = pending_units(cfg, set_dir, num_classes)
        if not pending:
            return RecoverResult(units=len(units), skipped_units=len(units))
        teacher, models = self.teachers(teachers)
        slices = starts.pending_slices(cfg, set_dir, num_classes, pending)
        data = self.start_data() if r.init == "real" or slices else None
        if slices:
            with tqdm(total=sum(map(len, slices)), desc=starts.STARTS_BAR, unit="class") as bar:
                for classes in slices:
                    starts.select_slice(data, cfg, models, teacher.norm, set_dir, classes, self.device,
                                        on_class=lambda c: bar.update(1))
        start_images = StartImages(r, cfg.seed, set_dir, teacher.in_channels, data if r.init == "real" else None)
        recovery = Recovery.of(cfg, models, teacher.norm, device=self.device, precision=self.precision)
        stats = []
        for unit in tqdm(pending, desc="recover units", unit="unit"):
            unit_stats = None
            if needs_class_stats(cfg):
                unit_stats = [load_class_stats(folder, list(unit.classes)) for folder in class_stats]
            images, s = recover_unit(recovery, unit, recover_terms(r, unit_stats), init=start_images(unit))
            marker = {**s, "unit": unit.index, "precision": self.precision}
            sets.write_image_unit(set_dir, sets.unit_marker(set_dir, unit.name), unit.targets(), images, marker)
            stats.append(marker)
        return RecoverResult(units=len(units), skipped_units=len(units) - len(pending), stats=stats)

    def select_random_real(self, cfg: Config, set_dir: str, slices: list[range]) -> None:
        for classes in slices:
            baselines.select_slice(cfg.data, set_dir, classes, cfg.recover.ipc, cfg.seed)

    def relabel(self, cfg: Config, teachers: list[str], info: sets.SetInfo, progress=None) -> dict:
        """Write every missing label epoch: the teacher's logits on each image's views of that epoch (with extra
        teachers, the mean of every teacher's logits). Ray's blocks, in order: each block's images are decoded
        once for its group of epochs, and an epoch is committed once the last block of its group is done."""
        r = cfg.relabel
        teacher, models = self.teachers(teachers)
        done = set(sets.label_epochs_done(info.path, r.epochs))
        pending = [e for e in range(r.epochs) if e not in done]
        n_images = info.num_classes * info.ipc
        plan = relabel_blocks(pending, n_images, r.views_per_epoch, r.batch_size, workers=1)
        parts: dict[int, list[dict]] = {e: [] for e in pending}
        with tqdm(total=len(pending), desc="relabel epochs", unit="epoch") as bar:
            for block in plan:
                start, stop = block["start"], block["stop"]
                images = sets.read_images_by_id(info.path, range(start, stop), info.ipc, info.channels)
                for epoch, rows in label_image_block(
                        models, images, start, block["epochs"], ipc=info.ipc, k=r.views_per_epoch, scale=r.crop_scale,
                        hflip=cfg.data.hflip, seed=cfg.seed, rows=plan.images_per_block * r.views_per_epoch, top_k=r.top_k,
                        image_size=cfg.data.image_size, norm=teacher.norm, batch_size=r.batch_size,
                        device=self.device, precision=self.precision):
                    parts[epoch].append(sets.write_label_part(info.path, epoch, start, stop, rows, info.num_classes,
                                                              r.logits_dtype, r.top_k))
                    if stop == n_images:
                        sets.commit_label_epoch(info.path, epoch, parts.pop(epoch), n_images)
                        bar.update(1)
        return {"epochs": r.epochs, "skipped_epochs": len(done)}

    def student_epochs(self, cfg: Config, info: sets.SetInfo, norm: Normalization, hard: bool = False,
                       classes: tuple[int, ...] | None = None) -> Iterator[tuple[int, float, nn.Module]]:
        """Train a student on the set's stored views and labels (``classes``: of those classes only, one output
        each, srel_ray.core.continual); after each epoch, yield the epoch, its training loss and the model to test
        (the EMA of the weights when evaluate.ema_decay is set)."""
        e = cfg.evaluate
        memory = range(info.num_classes) if classes is None else classes
        ids = range(info.num_classes * info.ipc) if classes is None else [c * info.ipc + i for c, i in
                                                                           memory_images(memory, info.ipc)]
        images = sets.SetImages(info, ids, cfg.resources.student_cache_bytes)
        class_labels = torch.arange(len(memory)).repeat_interleave(info.ipc)
        model = prepare_model(build_student(e, seed=cfg.seed, num_classes=len(memory), channels=info.channels,
                                            image_size=cfg.data.image_size).to(self.device), self.device)
        scaler = grad_scaler(self.precision, self.device)
        optimizer, scheduler, batch_size = student_optimizer(model, e, len(images) * cfg.relabel.views_per_epoch)
        ema = WeightEMA(model, e.ema_decay) if e.ema_decay else None
        tested = ema.model if ema is not None else model
        memory_ids = None if classes is None else np.sort(np.asarray(ids))  # a memory reads only its rows
        for epoch in range(e.epochs):
            labels = sets.read_label_epoch(info.path, epoch % info.label_epochs, hard=hard, images=memory_ids)
            if classes is not None:
                labels = restrict_labels(labels, classes, info.ipc)
            loss = train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=epoch,
                                       seed=cfg.seed, batch_size=batch_size, temperature=e.temperature,
                                       image_size=cfg.data.image_size, norm=norm, device=self.device, ema=ema,
                                       precision=self.precision, scaler=scaler, cutmix_prob=e.cutmix_prob,
                                       cutmix_beta=e.cutmix_beta)
            yield epoch, loss, tested

    def students_at_once(self, cfg: Config) -> int:
        """One: the students of one process would share its device and threads."""
        return 1

    def train_student(self, ctx: StageContext, student: Student, info: sets.SetInfo) -> tuple[dict, dict]:
        """Train and test one student as the evaluate stage does on Ray: tested on the real test split every
        evaluate.eval_interval epochs and after the last; returns its record and how it resumed (never)."""
        e, norm = ctx.cfg.evaluate, ctx.data.norm
        history = []
        for epoch, loss, tested in self.student_epochs(ctx.cfg, info, norm, hard=student.hard,
                                                       classes=student.classes):
            metrics = {"epoch": epoch, "train_loss": loss}
            if epoch == e.epochs - 1 or (e.eval_interval and (epoch + 1) % e.eval_interval == 0):
                batches = test_batches(ctx.data, norm)
                if student.classes is not None:
                    batches = restrict_batches(batches, student.classes, info.num_classes)
                test = count_correct(tested, batches, self.device)
                metrics.update(test_top1=test["top1"] / test["n"], test_top5=test["top5"] / test["n"])
            history.append(metrics)
        record = {"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"], "history": history}
        return record, {"skipped_epochs": 0, "restarted_at_epoch": None}


def test_batches(data: RealData, norm: Normalization, size: int = 256):
    """The real test split as normalised batches."""
    return ((norm.normalize_uint8(x), y) for x, y in data.batches("test", size))
