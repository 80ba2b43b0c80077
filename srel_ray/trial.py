"""One tuning trial: what is particular to a trial. Its folder and lock, the replay of a finished trial, the
condensed set it shares with other trials, scoring the student on validation images, and saving the student.
The work itself is the stages' (srel_ray.stages.recover and .relabel: which units and epochs are missing, the
manifest) on the in-process executor (srel_ray.stages.local: the plain-PyTorch core loops, no Ray).

A Ray Tune trial (srel_ray.distributed.tune) runs this. Outputs, in the search folder DIR
(srel_ray.storage.layout.SearchDir):

    DIR/sets/<set key>/      a condensed set (srel_ray.storage.sets format). The key is the content of the settings
                             that decide the set (seed, data, teacher, recover, relabel), so trials that differ only
                             in student settings (a temperature sweep at one budget) share one set, made once
                             under a file lock by whichever trial gets there first.
    DIR/trials/<trial key>/  trial.json (values, per-epoch history, seconds; written last), student.pt (the final
                             student, for the one test evaluation of the best trial), condensed_grid.png

A trial whose trial.json exists replays its recorded epochs instead of training again, so a resumed search never
repeats finished work, even one that Tune's last saved state had not yet marked finished.

A trial runs every method option the pipeline runs (docs/methods.md), through the same code: starting images
(recover.init real or rded; drawn from training images that are not validation images), per-class BN matching
(statistics the driver computed once), several teachers (recovery cycles through them, labels are their mean
logits) and the EMA of the student's weights (scored and saved instead of the raw weights).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from srel_ray.config import TRIAL_METRICS, Config, DataConfig, to_dict
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import resolve_precision
from srel_ray.core.student import build_student, count_correct
from srel_ray.data.real import RealData, WithoutValidation, load_dataset, validation_indices
from srel_ray.search_space import config_key
from srel_ray.stages.base import labels_record, write_set_manifest
from srel_ray.stages.local import InProcessExecutor, test_batches
from srel_ray.storage import files, sets
from srel_ray.storage.layout import SearchDir

log = logging.getLogger(__name__)

SET_SECTIONS = ("seed", "data", "teacher", "recover", "relabel")  # the settings that decide a condensed set


@dataclass
class TrialInputs:
    """What the search prepares once and every trial shares."""

    out: str  # the search folder, absolute
    teacher_path: str
    dataset: str
    norm: Normalization  # the real data's normalisation, which the student uses (as in the evaluate stage)
    val_images: int  # images in the validation split of data.val_fraction and data.split_seed (each trial draws them)
    data: DataConfig  # the search's data, local paths made absolute (a trial may run in another directory)
    extra_teachers: tuple[str, ...] = ()  # teacher.extra's teacher.pt files
    class_stats: tuple[str, ...] = ()  # per-class statistics folders, one per teacher (recover.class_bn_weight > 0)

    @property
    def teachers(self) -> list[str]:
        return [self.teacher_path, *self.extra_teachers]


def without_validation(inputs: TrialInputs) -> WithoutValidation:
    """The search's data without its validation rows: what a trial's recovery starts from."""
    return WithoutValidation(load_dataset(inputs.data), inputs.data.val_fraction, inputs.data.split_seed)


def set_key(cfg: Config) -> str:
    d = cfg.identity()
    return config_key({k: d[k] for k in SET_SECTIONS})


def trial_key(cfg: Config) -> str:
    return config_key(cfg.identity())


def trial_dir(out: str | Path, cfg: Config) -> Path:
    return Path(SearchDir(str(out)).trial(trial_key(cfg)).folder)


# ---------------------------------------------------------------------------------------------- the set


def condense(cfg: Config, executor: InProcessExecutor, set_dir: str, inputs: TrialInputs) -> dict:
    """Make the condensed set of ``cfg`` at ``set_dir``: recover the units without a marker, then label the
    missing epochs. Returns seconds per phase (0 for work found done)."""
    began = time.perf_counter()
    teacher, _ = executor.teachers(inputs.teachers)
    made_by = {k: v for k, v in to_dict(cfg).items() if k in SET_SECTIONS}
    recovered = executor.recover(cfg, inputs.teachers, set_dir, teacher.num_classes, list(inputs.class_stats))
    if not files.exists(sets.manifest_path(set_dir)):
        write_set_manifest(cfg, set_dir, "condensed", inputs.dataset, teacher, made_by)
    sets.drop_start_images(set_dir)
    relabel_began = time.perf_counter()
    info = sets.read_set(set_dir)
    if info.label_epochs != cfg.relabel.epochs:
        executor.relabel(cfg, [cfg.relabel.teacher] if cfg.relabel.teacher else inputs.teachers, info)
        write_set_manifest(cfg, set_dir, "condensed", inputs.dataset, teacher, made_by, labels=labels_record(cfg))
    worked = recovered.skipped_units < recovered.units
    return {"recover": relabel_began - began if worked else 0.0, "relabel": time.perf_counter() - relabel_began}


# ---------------------------------------------------------------------------------------------- the student


def student_epochs(cfg: Config, info: sets.SetInfo, inputs: TrialInputs, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> Iterator[tuple[dict, nn.Module]]:
    """Train the student on the set's stored views and labels; after every ``tune.score_interval``-th epoch and
    the last, yield the trial metrics (scored on the validation images; ``epochs_trained`` is ASHA's clock) and
    the model they were scored with (the EMA of the weights when evaluate.ema_decay is set, as the evaluate stage
    tests it)."""
    executor = InProcessExecutor(device, precision)
    held_out = validation_parts(inputs)
    last = cfg.evaluate.epochs - 1
    for epoch, loss, tested in executor.student_epochs(cfg, info, inputs.norm):
        if (epoch + 1) % cfg.tune.score_interval and epoch != last:
            continue
        val = count_correct(tested, _batches(held_out, inputs.norm), device)
        yield {"epoch": epoch, "epochs_trained": epoch + 1, "train_loss": loss, "val_top1": val["top1"] / val["n"],
               "val_top5": val["top5"] / val["n"]}, tested


# Validation images a file holds: a trial holds one file at a time (ImageNet-1K's 10 % is 128,000 images, 19 GB
# decoded at 224 px; 4,096 are 600 MB), and a multiple of the scoring batch, so the batches are those of one file.
VALIDATION_PART = 4096
SCORE_BATCH = 256


def validation_parts(inputs: TrialInputs) -> list[str]:
    """The files of the validation images (uint8) and labels, ``VALIDATION_PART`` a file: read and decoded by the
    first trial that needs them (under a lock), a file at a time, their record last, and kept in the search folder
    for the others; the driver decodes none of them."""
    search = SearchDir(inputs.out)
    with files.locked(search.validation):
        if not files.exists(search.validation):
            data = load_dataset(inputs.data)
            labels = data.labels("train")
            val_rows = validation_indices(labels, data.num_classes, inputs.data.val_fraction, inputs.data.split_seed)
            parts = []
            for index, start in enumerate(range(0, len(val_rows), VALIDATION_PART)):
                rows = val_rows[start:start + VALIDATION_PART]
                files.write_torch(search.validation_part(index), {"images": data.images_at("train", rows),
                                                                   "labels": labels[rows]})
                parts.append(index)
            files.write_json_atomic(search.validation, {"images": len(val_rows), "parts": parts})
    return [search.validation_part(index) for index in files.read_json(search.validation)["parts"]]


def validation_images(parts: list[str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation images (uint8) and labels, a file at a time."""
    for path in parts:
        stored = files.read_torch(path)
        yield stored["images"], stored["labels"]


def _batches(parts: list[str], norm: Normalization):
    for images, labels in validation_images(parts):
        for x, y in zip(images.split(SCORE_BATCH), labels.split(SCORE_BATCH)):
            yield norm.normalize_uint8(x), y


def score_on_test(cfg: Config, folder: Path, data: RealData) -> dict:
    """Top-1/top-5 on the real test split of the student a finished trial saved (done once, for the best)."""
    model = build_student(cfg.evaluate, seed=cfg.seed, num_classes=data.num_classes, channels=data.channels,
                          image_size=cfg.data.image_size)
    model.load_state_dict(files.read_torch(str(folder / "student.pt")))
    counts = count_correct(model, test_batches(data, data.norm))
    return {"test_top1": counts["top1"] / counts["n"], "test_top5": counts["top5"] / counts["n"], "n": counts["n"]}


# ---------------------------------------------------------------------------------------------- one trial


def run_trial(cfg: Config, inputs: TrialInputs, report: Callable[[dict], None],
              device: torch.device | str = "cpu") -> dict:
    """Condense (or reuse the shared set), train the student, ``report`` every scored epoch's metrics; returns the
    trial record. The record and student are written before the last report: a scheduler may end the trial
    as soon as it sees the final epoch."""
    search = SearchDir(inputs.out)
    trial = search.trial(trial_key(cfg))
    with files.locked(trial.folder):
        if files.exists(trial.record):
            record = files.read_json(trial.record)
            log.info("trial %s finished before: replaying its %d scores", trial.name, len(record["history"]))
            for row in record["history"]:
                report({**row, "epochs_trained": row["epoch"] + 1, "replayed": True})  # ASHA's clock
            return record
        began = time.perf_counter()
        precision = resolve_precision(cfg.resources.precision, device)
        executor = InProcessExecutor(device, precision, cfg.resources.compile,
                                     start_data=lambda: without_validation(inputs))
        executor.teachers(inputs.teachers)
        set_dir = search.shared_set(set_key(cfg))
        with files.locked(set_dir):
            seconds = condense(cfg, executor, set_dir, inputs)
        info = sets.read_set(set_dir)
        sets.save_grid(info.path, info.num_classes, info.ipc, info.channels, trial.grid)
        student_began = time.perf_counter()
        history: list[dict] = []
        for metrics, student in student_epochs(cfg, info, inputs, device, precision):
            history.append(metrics)
            if metrics["epochs_trained"] == cfg.evaluate.epochs:
                files.write_torch_local(trial.student, {k: v.cpu() for k, v in student.state_dict().items()})
                record = {"trial": trial.name, "set": set_key(cfg), "history": history,
                          "final": {k: metrics[k] for k in TRIAL_METRICS}, "val_images": inputs.val_images,
                          "recover_stats": _unit_stats(info.path),
                          "seconds": {**seconds, "student": time.perf_counter() - student_began,
                                      "total": time.perf_counter() - began},
                          "config": to_dict(cfg)}
                files.write_json_atomic(trial.record, record)
            report(metrics)
    return record


def _unit_stats(set_dir: str) -> dict:
    """Mean final losses of the set's recovery units (from their markers)."""
    stats = sets.unit_markers(set_dir)
    return {key: sum(s[key] for s in stats) / len(stats) for key in ("ce", "bn", "accuracy")} if stats else {}
