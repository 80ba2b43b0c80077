"""The four stages chained on the driver: check inputs, call one Ray role per stage, record what was written.

    DIR/config.yaml                     the final config (a folder holds one run: a different config is refused)
    DIR/teacher/teacher.pt              the frozen teacher with its class order and normalisation
    DIR/teacher/extra-<i>.pt            teacher.extra's teachers (multi-teacher recovery and labels)
    DIR/teacher/class_stats/<teacher>/  per-class BN statistics (recover.class_bn_weight > 0), one file per class
    DIR/condensed/                      the condensed set (images, labels, manifest.json; see srel_ray.storage.sets)
    DIR/baselines/random_real/          IPC random real images per class, relabelled by the same teacher
    DIR/evaluate/<student>.json         one file per trained student
    DIR/stages/<stage>.json             what each stage did and how long it took
    DIR/summary.json                    written last, once every stage has finished
    DIR/accuracy_curves.png             teacher and students, test top-1 against epoch (with summary.json)
    DIR/tracking.json                   the MLflow run (id, store) that a resumed command continues
    DIR/logs/                           driver.log (every log line) and ray/ (Ray's session logs, a link)
    DIR/ray/                            Ray Train storage (checkpoints that resume squeeze and evaluate)

DIR is a local folder or any fsspec URL (s3://, gs://, file://) that the driver and every Ray worker can reach;
on a cluster of several nodes it must be shared storage. Every stage skips work whose outputs are complete, so
re-running a command resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import torch

from srel_ray.config import Config, TeacherConfig, to_dict
from srel_ray.core.recover import freeze
from srel_ray.core.student import count_correct
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir, check_out_is_folder, prepare_out
from srel_ray.students import STUDENTS, students_of
from srel_ray.data.real import RealData, load_dataset, random_real_indices
from srel_ray.errors import SrelError
from srel_ray.progress import Console, log_to_file, stage_did
from srel_ray.teacher import (Teacher, extra_teacher, imagenet_indices, load_teacher, save_teacher,
                              torchvision_teacher, torchvision_weights)
from srel_ray.tracking import Tracker, tracked_run, tracking_uri

log = logging.getLogger(__name__)

STAGES = ("squeeze", "recover", "relabel", "evaluate")


# ---------------------------------------------------------------------------------------------- checks


def check_inputs(cfg: Config, run: RunDir, stages: tuple[str, ...]) -> RealData:
    """Everything that can be wrong with the inputs, checked before any heavy work starts."""
    check_out_is_folder(run)
    data = load_dataset(cfg.data)
    if cfg.relabel.top_k >= data.num_classes:
        raise SrelError(f"relabel.top_k={cfg.relabel.top_k} must be below the class count {data.num_classes} "
                        "(0 keeps all logits)")
    if cfg.evaluate.baselines and ("relabel" in stages):
        random_real_indices(data.labels("train"), data.num_classes, cfg.recover.ipc, cfg.seed)  # enough?
    if "squeeze" in stages and cfg.teacher.source == "checkpoint":
        _check_teacher(load_teacher(cfg.teacher.checkpoint), data)
    elif "squeeze" in stages and cfg.teacher.source == "torchvision":
        torchvision_weights(cfg.teacher)  # known weights?
        imagenet_indices(data.class_names, f"torchvision {cfg.teacher.arch} ({cfg.teacher.weights})",
                         _dataset(cfg, data))
    elif "squeeze" not in stages:
        if not files.exists(run.teacher):
            raise SrelError(f"no teacher at {run.teacher!r}: run the squeeze stage first (srel-ray squeeze)")
        _check_teacher(load_teacher(run.teacher), data)
    check_method_inputs(cfg, run, data, stages)
    return data


def check_method_inputs(cfg: Config, run: RunDir, data: RealData, stages: tuple[str, ...]) -> None:
    """What the successors' options (docs/methods.md) need from the data and the extra teachers."""
    r = cfg.recover
    if "recover" in stages and r.init == "real":
        random_real_indices(data.labels("train"), data.num_classes, r.ipc, cfg.seed)  # enough images per class?
    if "recover" in stages and r.init == "rded":
        need = r.ipc * r.rded_factor ** 2
        smallest = int(torch.bincount(data.labels("train"), minlength=data.num_classes).min())
        if min(r.rded_pool, smallest) < need:
            raise SrelError(f"RDED needs ipc * rded_factor^2 = {need} candidate images per class, but "
                            f"recover.rded_pool={r.rded_pool} and the smallest class has {smallest}")
    for i, (spec, path) in enumerate(zip(cfg.teacher.extra, run.extra_teachers(cfg))):
        if "squeeze" not in stages:
            if not files.exists(path):
                raise SrelError(f"no extra teacher at {path!r}: run the squeeze stage first (srel-ray squeeze)")
            _check_teacher(load_teacher(path), data)
            _check_same_input(load_teacher(path), load_teacher(run.teacher), path)
        elif spec.source == "checkpoint":
            _check_teacher(load_teacher(spec.checkpoint), data)
        else:
            torchvision_weights(TeacherConfig(arch=spec.arch, weights=spec.weights))  # known weights?
            imagenet_indices(data.class_names, f"teacher.extra[{i}]: torchvision {spec.arch} ({spec.weights})",
                             _dataset(cfg, data))


def _dataset(cfg: Config, data: RealData) -> str:
    return f"dataset {data.name!r}" + (f" at {cfg.data.path!r}" if cfg.data.path else "")


def _check_teacher(teacher: Teacher, data: RealData) -> None:
    teacher.check_classes(data.class_names, f"dataset {data.name!r}")
    if teacher.in_channels != data.channels:
        raise SrelError(f"the teacher takes {teacher.in_channels}-channel images, dataset {data.name!r} has "
                        f"{data.channels}")


# ---------------------------------------------------------------------------------------------- stages


def squeeze(cfg: Config, run: RunDir, data: RealData, use_gpu: bool, tracker: Tracker, progress=None) -> dict:
    """Produce DIR/teacher/teacher.pt: train it (Ray Train), or take a torchvision model or a checkpoint.
    ``progress`` (every stage takes it): the command's srel_ray.distributed.progress.Progress, or None."""
    if files.exists(run.teacher):
        log.info("squeeze: the teacher is already at %s, skipping the stage", run.teacher)
        _save_extra_teachers(cfg, run, data, load_teacher(run.teacher))
        return {"skipped": True, **load_teacher(run.teacher).describe()}
    source = cfg.teacher.source
    resumed = {}
    if source == "squeeze":
        from srel_ray.distributed.squeeze import run_squeeze

        with _resumable(run, "squeeze", cfg.teacher.epochs) as resumed, \
                _epochs(progress, "teacher", "squeeze", cfg.teacher.epochs, resumed):
            teacher = run_squeeze(cfg, data, run.ray_storage, use_gpu, progress.board if progress else None)
        tracker.log_history(teacher.metrics.get("history", []), prefix="teacher.",
                            skip=_logged(progress, "teacher", resumed))
    else:
        if source == "checkpoint":
            teacher = load_teacher(cfg.teacher.checkpoint)
            _check_teacher(teacher, data)
        else:
            teacher = torchvision_teacher(cfg.teacher, cfg.data.image_size, data.class_names)
        teacher.metrics = {**teacher.metrics, **_test_accuracy(teacher, data)}
    save_teacher(teacher, run.teacher)
    _save_extra_teachers(cfg, run, data, teacher)
    return {**teacher.describe(), **resumed}


def _save_extra_teachers(cfg: Config, run: RunDir, data: RealData, main: Teacher) -> None:
    """teacher.extra as DIR/teacher/extra-<i>.pt beside the teacher, so recover and relabel read all alike."""
    for spec, path in zip(cfg.teacher.extra, run.extra_teachers(cfg)):
        if not files.exists(path):
            teacher = extra_teacher(spec, cfg.data.image_size, data.class_names)
            _check_teacher(teacher, data)
            _check_same_input(teacher, main, path)
            save_teacher(teacher, path)


def _check_same_input(extra: Teacher, main: Teacher, where: str) -> None:
    """Every teacher sees the same normalised pixels (recovery optimises them, relabel renders them once)."""
    if extra.norm != main.norm:
        raise SrelError(f"extra teacher {where!r} normalises inputs with {extra.norm}, the teacher with {main.norm}: "
                        "teachers of one run must share their input normalisation")


def _test_accuracy(teacher: Teacher, data: RealData) -> dict:
    model = freeze(teacher.build())
    batches = ((teacher.norm.normalize_uint8(x), y) for x, y in data.batches("test", 256))
    counts = count_correct(model, batches)
    return {"test_top1": counts["top1"] / counts["n"], "test_top5": counts["top5"] / counts["n"]}


def recover(cfg: Config, run: RunDir, data: RealData, use_gpu: bool, tracker: Tracker, progress=None) -> dict:
    """Recover the condensed images with the actor pool; the manifest is written once all units are done."""
    set_dir = run.set_dir("condensed")
    if files.exists(sets.manifest_path(set_dir)):
        log.info("recover: the condensed set at %s is complete, skipping the stage", set_dir)
        return {"skipped": True}
    from srel_ray.distributed.recover import run_recover

    teacher = load_teacher(run.teacher)
    stats_dirs = []
    if cfg.recover.class_bn_weight and cfg.recover.iterations:  # EDC's per-class statistics, once per teacher
        from srel_ray.distributed.class_stats import run_class_stats

        stats_dirs = run.class_stats(cfg)
        run_class_stats(cfg, data, [run.teacher, *run.extra_teachers(cfg)], stats_dirs, use_gpu, progress)
    result = run_recover(cfg, run.teacher, set_dir, teacher.num_classes, use_gpu,
                         extra_teachers=run.extra_teachers(cfg), class_stats=stats_dirs, progress=progress)
    _write_set_manifest(cfg, set_dir, "condensed", data, teacher)
    sets.save_grid(set_dir, teacher.num_classes, cfg.recover.ipc, data.channels, run.grid)
    tracker.log_artifact(run.grid)
    for s in result["stats"]:
        tracker.log_metrics({"recover.final_ce": s["ce"], "recover.final_bn": s["bn"]}, step=s["unit"])
    return {"units": result["units"], "skipped_units": result["skipped"], "interrupted_units": result["interrupted"],
            "retried_units": result["retried"], "actors": result["actors"], "unit_nodes": result["unit_nodes"]}


def relabel(cfg: Config, run: RunDir, data: RealData, use_gpu: bool, tracker: Tracker, progress=None) -> dict:
    """Soft labels for the condensed set and, for the baselines, for IPC random real images per class."""
    from srel_ray.distributed.relabel import run_relabel

    teacher = load_teacher(run.teacher)
    if cfg.evaluate.baselines:
        _make_random_real(cfg, run, data, teacher)
    report = {}
    for name in ("condensed", "random_real") if cfg.evaluate.baselines else ("condensed",):
        info = sets.read_set(run.set_dir(name))
        teacher.check_classes(info.class_names, f"set {info.path!r}")
        if info.label_epochs == cfg.relabel.epochs:
            log.info("relabel %s: all %d label epochs are written, skipping the set", name, cfg.relabel.epochs)
            report[name] = {"skipped": True, "epochs": cfg.relabel.epochs, "skipped_epochs": cfg.relabel.epochs}
            continue
        report[name] = run_relabel(cfg, run.teacher, info, use_gpu, extra_teachers=run.extra_teachers(cfg),
                                   progress=progress)
        labels = {"epochs": cfg.relabel.epochs, "views_per_epoch": cfg.relabel.views_per_epoch,
                  "crop_scale": list(cfg.relabel.crop_scale), "logits_dtype": cfg.relabel.logits_dtype,
                  "top_k": cfg.relabel.top_k, "bytes_per_image_per_epoch": _label_bytes(info, cfg)}
        log.info("relabel %s: %.1f bytes of soft labels per image per epoch (Parquet, compressed)", name,
                 labels["bytes_per_image_per_epoch"])
        _write_set_manifest(cfg, info.path, info.manifest["kind"], data, teacher, labels,
                            extra=info.manifest.get("source"))
    return {**report, "skipped": all(r.get("skipped") for r in report.values())}


def _label_bytes(info: sets.SetInfo, cfg: Config) -> float:
    return sets.label_bytes(info.path) / (info.num_classes * info.ipc * cfg.relabel.epochs)


def _make_random_real(cfg: Config, run: RunDir, data: RealData, teacher: Teacher) -> None:
    set_dir = run.set_dir("random_real")
    if files.exists(sets.manifest_path(set_dir)):
        log.info("relabel: the random-real images at %s are complete, skipping their selection", set_dir)
        return
    ipc = cfg.recover.ipc
    indices = random_real_indices(data.labels("train"), data.num_classes, ipc, cfg.seed)
    targets = [(c, i) for c in range(data.num_classes) for i in range(ipc)]
    sets.write_images(set_dir, targets, data.images_at("train", indices))
    _write_set_manifest(cfg, set_dir, "random_real", data, teacher,
                        extra={"train_indices": indices.tolist()})


def _write_set_manifest(cfg: Config, set_dir: str, kind: str, data: RealData, teacher: Teacher,
                        labels: dict | None = None, extra: dict | None = None) -> None:
    sets.write_manifest(set_dir, kind=kind, dataset=data.name, class_names=data.class_names, ipc=cfg.recover.ipc,
                        channels=data.channels, image_size=cfg.data.image_size,
                        normalization={"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
                        teacher=teacher.describe(), config=to_dict(cfg), labels=labels, source=extra)


def evaluate(cfg: Config, run: RunDir, data: RealData, use_gpu: bool, tracker: Tracker, progress=None) -> dict:
    """Train the condensed-set student and, with baselines on, both random-real students, all on one protocol."""
    from srel_ray.distributed.evaluate import run_student

    names = [s.name for s in students_of(cfg.evaluate.baselines)]
    done = [name for name in names if files.exists(run.student_record(name))]
    if done:
        log.info("evaluate: %d of %d students already trained, skipping them: %s", len(done), len(names),
                 ", ".join(done))
    results, resumed = {}, {}
    for name in names:
        record = run.student_record(name)
        if name in done:
            results[name] = files.read_json(record)
            continue
        hard = STUDENTS[name].hard
        info = sets.read_set(run.set_dir(STUDENTS[name].set_name))
        if info.label_epochs != cfg.relabel.epochs:
            raise SrelError(f"set {info.path!r} has no complete labels: run the relabel stage first")
        log.info("evaluate: training the %s student", name)
        source = f"student.{name}"
        with _resumable(run, f"student-{name}", cfg.evaluate.epochs) as resumed[name], \
                _epochs(progress, source, f"student {name}", cfg.evaluate.epochs, resumed[name]):
            result = run_student(cfg, data, info.path, hard=hard, name=f"student-{name}", storage=run.ray_storage,
                                 use_gpu=use_gpu, progress_board=progress.board if progress else None,
                                 progress_source=source)
        tracker.log_history(result["history"], prefix=f"{source}.", skip=_logged(progress, source, resumed[name]))
        files.write_json_atomic(record, result)
        results[name] = result
    return {**{name: {"top1": r["top1"], "top5": r["top5"]} for name, r in results.items()},
            "skipped_students": done, "resumed": resumed, "skipped": len(done) == len(names)}


@contextlib.contextmanager
def _resumable(run: RunDir, name: str, epochs: int) -> Iterator[dict]:
    """Around one Ray Train fit: says how many epochs an earlier command had checkpointed (they are skipped) and
    whether workers died during this fit and were restarted from a checkpoint; fills the yielded dict with both."""
    from srel_ray.distributed.trainer import checkpoint_progress

    before = checkpoint_progress(run.ray_storage, name)
    if before["epochs"]:
        log.info("%s: %d of %d epochs already trained (checkpoint in %s), skipping them", name, before["epochs"],
                 epochs, files.join(run.ray_storage, name))
    report = {"skipped_epochs": before["epochs"]}
    yield report
    after = checkpoint_progress(run.ray_storage, name)
    report["restarted_at_epoch"] = after["start_epoch"] if after["start_epoch"] > before["epochs"] else None
    if report["restarted_at_epoch"] is not None:
        log.info("%s: training workers died and were restarted from the checkpoint of epoch %d", name,
                 after["start_epoch"] - 1)


def _epochs(progress, source: str, desc: str, total: int, resumed: dict):
    """The epoch bar of one training fit (nothing without ``progress``)."""
    if progress is None:
        return contextlib.nullcontext()
    return progress.epochs(source, desc, total, resumed["skipped_epochs"])


def _logged(progress, source: str, resumed: dict) -> set[int]:
    """Epochs whose metrics are in MLflow already: sent live during this fit, or trained (and sent) by the earlier
    command whose checkpoint this one resumed."""
    return set(range(resumed["skipped_epochs"])) | (progress.already_logged(source) if progress else set())


STAGE_FUNCTIONS = {"squeeze": squeeze, "recover": recover, "relabel": relabel, "evaluate": evaluate}


# ---------------------------------------------------------------------------------------------- driver


def run_stages(cfg: Config, out: str | Path, stages: tuple[str, ...], command: str,
               console: Console | None = None) -> dict | None:
    """Check everything, then run ``stages`` in order on Ray; writes summary.json once evaluate has finished.
    ``out`` is a local folder or an fsspec URL that every Ray worker can reach. ``console``: what the person
    running the command sees (default: stage lines and progress bars)."""
    from srel_ray.distributed.cluster import check_precision, check_resources, resolve_use_gpu, start_ray
    from srel_ray.distributed.progress import Progress

    console = console or Console()
    data = check_inputs(cfg, RunDir.at(out), stages)  # before anything is written
    run = prepare_out(cfg, out)
    _keep_logs(run)
    start_ray(cfg.resources, verbose=console.verbosity == "verbose")
    _link_ray_logs(run)
    use_gpu = resolve_use_gpu(cfg.resources)
    check_resources(cfg.resources, use_gpu)  # requests no node can meet fail now, not after hours of squeeze
    check_precision(cfg.resources, use_gpu)  # fp16 on a CPU, bf16 on a GPU without it: now, not in a worker
    with tracked_run(cfg, command, run.out, run_id=_previous_run_id(cfg, run)) as tracker:
        if tracker.enabled:
            files.write_json_atomic(run.tracking, {"run_id": tracker.run_id, "tracking_uri": tracking_uri(cfg)})

        def live(prefix: str, step: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=step, prefix=prefix)

        with Progress(console, live, cfg.recover.iterations) as progress:
            for i, stage in enumerate(stages, 1):
                log.info("[%d/%d] %s", i, len(stages), stage)
                console.stage_started(i, len(stages), stage)
                began = time.perf_counter()
                result = STAGE_FUNCTIONS[stage](cfg, run, data, use_gpu, tracker, progress)
                seconds = time.perf_counter() - began
                console.stage_finished(i, len(stages), stage, seconds, stage_did(stage, result))
                record = run.stage_record(stage)
                if files.exists(record) and result.get("skipped"):
                    seconds = files.read_json(record)["seconds"]  # keep the time of the run that did the work
                files.write_json_atomic(record, {"stage": stage, "seconds": seconds, "result": result})
                tracker.log_metrics({f"seconds.{stage}": seconds})
        summary = write_summary(cfg, run, data) if _finished(run) else None
        if summary:
            tracker.log_metrics({k: v for k, v in summary.items() if k.endswith("top1") or k.endswith("top5")})
            tracker.log_artifact(draw_curves(run))
            tracker.log_artifact(run.summary)
    return summary


def _previous_run_id(cfg: Config, run: RunDir) -> str | None:
    """The MLflow run of an earlier command on this folder, continued when it is in the same store."""
    if not cfg.tracking.enabled or not files.exists(run.tracking):
        return None
    previous = files.read_json(run.tracking)
    return previous["run_id"] if previous["tracking_uri"] == tracking_uri(cfg) else None


def _keep_logs(run: RunDir) -> None:
    """The driver's full log in DIR/logs/driver.log (local folders; a URL's logs stay with Ray's session logs)."""
    if "://" not in run.out:
        log_to_file(run.logs)


def _link_ray_logs(run: RunDir) -> None:
    """DIR/logs/ray: a link to Ray's session logs on this machine (workers' output, Ray Data, Ray Train)."""
    from srel_ray.distributed.cluster import ray_logs_dir

    ray_logs = ray_logs_dir()
    if "://" in run.out or ray_logs is None:
        return
    link = Path(run.logs) / "ray"
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(ray_logs, target_is_directory=True)
    log.info("Ray's logs (workers' output, Ray Data, Ray Train): %s", ray_logs)


def _finished(run: RunDir) -> bool:
    return all(files.exists(run.stage_record(s)) for s in STAGES) and files.exists(run.student_record("condensed"))


def draw_curves(run: RunDir) -> str:
    """DIR/accuracy_curves.png: the teacher's and every trained student's test top-1 against epoch."""
    from srel_ray.inspection import save_curves

    students = {name: files.read_json(run.student_record(name))["history"]
                for name in STUDENTS if files.exists(run.student_record(name))}
    return save_curves(load_teacher(run.teacher).metrics.get("history", []), students, run.curves)


def write_summary(cfg: Config, run: RunDir, data: RealData) -> dict:
    teacher = load_teacher(run.teacher)
    students = {name: files.read_json(run.student_record(name))
                for name in STUDENTS if files.exists(run.student_record(name))}
    summary = {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "ipc": cfg.recover.ipc,
        "teacher": teacher.arch,
        "student": cfg.evaluate.arch,
        "teacher_top1": teacher.metrics.get("test_top1"),
        "student_top1": students["condensed"]["top1"],
        "student_top5": students["condensed"]["top5"],
        "baseline_random_hard_top1": students.get("random_real_hard", {}).get("top1"),
        "baseline_random_soft_top1": students.get("random_real_soft", {}).get("top1"),
        "baseline_random_hard_top5": students.get("random_real_hard", {}).get("top5"),
        "baseline_random_soft_top5": students.get("random_real_soft", {}).get("top5"),
        "seconds": {s: files.read_json(run.stage_record(s))["seconds"] for s in STAGES},
        "outputs": {"condensed": run.set_dir("condensed"), "teacher": run.teacher},
    }
    files.write_json_atomic(run.summary, summary)
    return summary


def format_summary(summary: dict) -> str:
    """The table printed at the end of a run."""

    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    rows = [("teacher (full real data)", summary["teacher_top1"]),
            ("condensed set (soft labels)", summary["student_top1"]),
            ("random real, hard labels", summary["baseline_random_hard_top1"]),
            ("random real, teacher labels", summary["baseline_random_soft_top1"])]
    lines = [f"{summary['dataset']}: {summary['num_classes']} classes, IPC {summary['ipc']}, "
             f"teacher {summary['teacher']}, student {summary['student']}",
             f"{'':30s} top-1 %"] + [f"{name:30s} {pct(v)}" for name, v in rows]
    lines.append("seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in summary["seconds"].items())
                 + f" (total {sum(summary['seconds'].values()):.1f})")
    soft = summary["baseline_random_soft_top1"]
    if soft is not None:
        verdict = "beats" if summary["student_top1"] > soft else "does NOT beat"
        lines.append(f"the condensed set {verdict} random real images with the same teacher labels")
    return "\n".join(lines)
