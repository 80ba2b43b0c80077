"""One tuning trial in one process: recover -> relabel -> student with the plain-PyTorch core loops, no Ray.

A Ray Tune trial (srel_ray.distributed.tune) runs this: nesting Ray Train workers or actor pools inside trials
would oversubscribe a small machine and can deadlock waiting for CPUs the trials hold. Outputs, in the search
folder DIR:

    DIR/sets/<set key>/      a condensed set (srel_ray.data.sets format). The key is the content of the settings
                             that decide the set (seed, data, teacher, recover, relabel), so trials that differ only
                             in student settings (a temperature sweep at one budget) share one set, made once
                             under a file lock by whichever trial gets there first.
    DIR/trials/<trial key>/  trial.json (values, per-epoch history, seconds; written last), student.pt (the final
                             student, for the one test evaluation of the best trial), condensed_grid.png

A trial whose trial.json exists replays its recorded epochs instead of training again, so a resumed search never
repeats finished work, even one that Tune's last saved state had not yet marked finished.

A trial runs every method option the pipeline runs (docs/methods.md), through the same core functions: starting
images (recover.init real or rded; drawn from training images that are not validation images), per-class BN
matching (statistics the driver computed once), several teachers (recovery cycles through them, labels are their
mean logits) and the EMA of the student's weights (scored and saved instead of the raw weights).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from srel_ray.config import TRIAL_METRICS, Config, DataConfig, to_dict
from srel_ray.core.normalization import Normalization
from srel_ray.core.recover import Recovery, freeze, plan_units, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.precision import grad_scaler, prepare_model, resolve_precision
from srel_ray.core.relabel import label_views, row_views, view_rows
from srel_ray.core.student import (WeightEMA, build_student, count_correct, student_optimizer,
                                   train_student_epoch)
from srel_ray.data import sets
from srel_ray.data.class_images import StartImages
from srel_ray.data.real import RealData, WithoutRows, load_dataset
from srel_ray.pipeline import save_grid
from srel_ray.search_space import config_key
from srel_ray.teacher import Teacher, load_class_stats, load_teacher

log = logging.getLogger(__name__)


@dataclass
class TrialInputs:
    """What the search prepares once and every trial shares."""

    out: str  # the search folder, absolute
    teacher_path: str
    dataset: str
    norm: Normalization  # the real data's normalisation, which the student uses (as in the evaluate stage)
    val_images: torch.Tensor  # uint8 (N, C, S, S), held out from the training split
    val_labels: torch.Tensor
    val_rows: torch.Tensor  # their rows in the training split: never a starting image of recovery
    data: DataConfig  # the search's data, local paths made absolute (a trial may run in another directory)
    extra_teachers: tuple[str, ...] = ()  # teacher.extra's teacher.pt files
    class_stats: tuple[str, ...] = ()  # per-class statistics folders, one per teacher (recover.class_bn_weight > 0)


def set_key(cfg: Config) -> str:
    d = cfg.identity()
    return config_key({k: d[k] for k in ("seed", "data", "teacher", "recover", "relabel")})


def trial_key(cfg: Config) -> str:
    return config_key(cfg.identity())


def trial_dir(out: str | Path, cfg: Config) -> Path:
    return Path(out) / "trials" / trial_key(cfg)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``folder`` (released when the block ends or the process dies)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------------- the set


def condense(cfg: Config, teacher: Teacher, models: list[nn.Module], set_dir: str, inputs: TrialInputs,
             device: torch.device | str = "cpu", precision: str = "fp32") -> dict:
    """Make the condensed set of ``cfg`` at ``set_dir``: recover the units without a marker, then label the
    missing epochs. ``models``: the frozen teacher, then the extra teachers. Returns seconds per phase (0 for work
    found done)."""
    began = time.perf_counter()
    r = cfg.recover
    units = plan_units(teacher.num_classes, r.ipc, r.classes_per_unit, r.ipc_per_unit)
    pending = [u for u in units if not sets.exists(sets.unit_marker(set_dir, u.name))]
    data = WithoutRows(load_dataset(inputs.data), inputs.val_rows) if pending and r.init != "noise" else None
    start_images = StartImages(data, r, cfg.seed, models, teacher.norm, device) if pending else None
    for unit in tqdm(pending, desc="recover units", unit="unit"):
        class_stats = None
        if r.class_bn_weight and r.iterations:
            class_stats = [load_class_stats(folder, list(unit.classes)) for folder in inputs.class_stats]
        images, stats = recover_unit(Recovery.of(cfg, models, teacher.norm, device=device, precision=precision),
                                     unit, recover_terms(r, class_stats), init=start_images(unit))
        sets.write_images(set_dir, unit.targets(), images)
        sets.write_json_atomic(sets.unit_marker(set_dir, unit.name),
                               {**stats, "unit": unit.index, "precision": precision})
    if not sets.exists(sets.manifest_path(set_dir)):
        _write_manifest(cfg, set_dir, teacher, inputs.dataset)
    recovered = time.perf_counter()
    info = sets.read_set(set_dir)
    if info.label_epochs != cfg.relabel.epochs:
        relabel(cfg, models, teacher.norm, info, device, precision)
        rl = cfg.relabel
        _write_manifest(cfg, set_dir, teacher, inputs.dataset, labels={
            "epochs": rl.epochs, "views_per_epoch": rl.views_per_epoch, "crop_scale": list(rl.crop_scale),
            "logits_dtype": rl.logits_dtype, "top_k": rl.top_k})
    return {"recover": recovered - began if pending else 0.0, "relabel": time.perf_counter() - recovered}


def relabel(cfg: Config, models: list[nn.Module], norm: Normalization, info: sets.SetInfo,
            device: torch.device | str = "cpu", precision: str = "fp32") -> None:
    """Write every missing label epoch: the teacher's logits on each image's views of that epoch (with extra
    teachers, the mean of every teacher's logits)."""
    r = cfg.relabel
    images = sets.read_images(info.path, info.num_classes, info.ipc, info.channels)
    done = set(sets.label_epochs_done(info.path, r.epochs))
    for epoch in tqdm([e for e in range(r.epochs) if e not in done], desc="relabel epochs", unit="epoch"):
        ids = list(range(len(images)))
        columns = view_rows(images, ids, [i // info.ipc for i in ids], [epoch] * len(ids), k=r.views_per_epoch,
                            scale=r.crop_scale, hflip=cfg.data.hflip, seed=cfg.seed)
        columns["logits"] = label_views(models, torch.from_numpy(columns.pop("image")), row_views(columns),
                                        image_size=cfg.data.image_size, norm=norm, batch_size=r.batch_size,
                                        device=device, precision=precision).numpy()
        sets.write_label_epoch(info.path, epoch, columns, info.num_classes, r.logits_dtype, r.top_k)


def _write_manifest(cfg: Config, set_dir: str, teacher: Teacher, dataset: str, labels: dict | None = None) -> None:
    made_by = {k: v for k, v in to_dict(cfg).items() if k in ("seed", "data", "teacher", "recover", "relabel")}
    sets.write_manifest(set_dir, kind="condensed", dataset=dataset, class_names=teacher.class_names,
                        ipc=cfg.recover.ipc, channels=teacher.in_channels, image_size=cfg.data.image_size,
                        normalization={"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
                        teacher=teacher.describe(), config=made_by, labels=labels)


# ---------------------------------------------------------------------------------------------- the student


def student_epochs(cfg: Config, info: sets.SetInfo, inputs: TrialInputs, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> Iterator[tuple[dict, nn.Module]]:
    """Train the student on the set's stored views and labels; after every ``tune.score_interval``-th epoch and
    the last, yield the trial metrics (scored on the validation images; ``epochs_trained`` is ASHA's clock) and
    the model they were scored with (the EMA of the weights when evaluate.ema_decay is set, as the evaluate stage
    tests it)."""
    e = cfg.evaluate
    images = sets.read_images(info.path, info.num_classes, info.ipc, info.channels)
    class_labels = torch.arange(info.num_classes).repeat_interleave(info.ipc)
    model = prepare_model(build_student(e, seed=cfg.seed, num_classes=info.num_classes, channels=info.channels,
                                        image_size=cfg.data.image_size).to(device), device)
    scaler = grad_scaler(precision, device)
    optimizer, scheduler, batch_size = student_optimizer(model, e, len(images) * cfg.relabel.views_per_epoch)
    ema = WeightEMA(model, e.ema_decay) if e.ema_decay else None
    tested = ema.model if ema is not None else model
    for epoch in range(e.epochs):
        labels = sets.read_label_epoch(info.path, epoch % info.label_epochs)
        loss = train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=epoch,
                                   seed=cfg.seed, batch_size=batch_size, temperature=e.temperature,
                                   image_size=cfg.data.image_size, norm=inputs.norm, device=device, ema=ema,
                                   precision=precision, scaler=scaler)
        if (epoch + 1) % cfg.tune.score_interval and epoch != e.epochs - 1:
            continue
        val = count_correct(tested, _batches(inputs.val_images, inputs.val_labels, inputs.norm), device)
        yield {"epoch": epoch, "epochs_trained": epoch + 1, "train_loss": loss, "val_top1": val["top1"] / val["n"],
               "val_top5": val["top5"] / val["n"]}, tested


def _batches(images: torch.Tensor, labels: torch.Tensor, norm: Normalization, size: int = 256):
    for x, y in zip(images.split(size), labels.split(size)):
        yield norm.normalize(x.float() / 255), y


def score_on_test(cfg: Config, folder: Path, data: RealData) -> dict:
    """Top-1/top-5 on the real test split of the student a finished trial saved (done once, for the best)."""
    model = build_student(cfg.evaluate, seed=cfg.seed, num_classes=data.num_classes, channels=data.channels,
                          image_size=cfg.data.image_size)
    model.load_state_dict(torch.load(folder / "student.pt", map_location="cpu", weights_only=True))
    counts = count_correct(model, ((data.norm.normalize(x.float() / 255), y) for x, y in data.batches("test", 256)))
    return {"test_top1": counts["top1"] / counts["n"], "test_top5": counts["top5"] / counts["n"], "n": counts["n"]}


# ---------------------------------------------------------------------------------------------- one trial


def run_trial(cfg: Config, inputs: TrialInputs, report: Callable[[dict], None],
              device: torch.device | str = "cpu") -> dict:
    """Condense (or reuse the shared set), train the student, ``report`` every scored epoch's metrics; returns the
    trial record. The record and student are written before the last report: a scheduler may end the trial
    as soon as it sees the final epoch."""
    folder = trial_dir(inputs.out, cfg)
    record_path = folder / "trial.json"
    with locked(folder):
        if record_path.exists():
            record = json.loads(record_path.read_text())
            log.info("trial %s finished before: replaying its %d scores", folder.name, len(record["history"]))
            for row in record["history"]:
                report({**row, "epochs_trained": row["epoch"] + 1, "replayed": True})  # ASHA's clock
            return record
        began = time.perf_counter()
        precision = resolve_precision(cfg.resources.precision, device)
        teacher = load_teacher(inputs.teacher_path)
        models = [prepare_model(freeze(t.build()).to(device), device, cfg.resources.compile)
                  for t in (teacher, *(load_teacher(p) for p in inputs.extra_teachers))]
        set_dir = Path(inputs.out) / "sets" / set_key(cfg)
        with locked(set_dir):
            seconds = condense(cfg, teacher, models, str(set_dir), inputs, device, precision)
        info = sets.read_set(str(set_dir))
        folder.mkdir(parents=True, exist_ok=True)
        save_grid(info.path, info.num_classes, info.ipc, info.channels, folder / "condensed_grid.png")
        student_began = time.perf_counter()
        history: list[dict] = []
        for metrics, student in student_epochs(cfg, info, inputs, device, precision):
            history.append(metrics)
            if metrics["epochs_trained"] == cfg.evaluate.epochs:
                _save_student(student, folder / "student.pt")
                record = {"trial": folder.name, "set": set_dir.name, "history": history,
                          "final": {k: metrics[k] for k in TRIAL_METRICS}, "val_images": len(inputs.val_labels),
                          "recover_stats": _unit_stats(info.path),
                          "seconds": {**seconds, "student": time.perf_counter() - student_began,
                                      "total": time.perf_counter() - began},
                          "config": to_dict(cfg)}
                sets.write_json_atomic(str(record_path), record)
            report(metrics)
    return record


def _save_student(model: nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def _unit_stats(set_dir: str) -> dict:
    """Mean final losses of the set's recovery units (from their markers)."""
    stats = [json.loads(p.read_text()) for p in sorted((Path(set_dir) / ".progress").glob("*.json"))]
    return {key: sum(s[key] for s in stats) / len(stats) for key in ("ce", "bn", "accuracy")} if stats else {}
