"""``srel-ray tune``: check everything, make the shared teacher once, run the Ray Tune search, then score the best
trial once on the test split. Every trial is scored on a validation split carved from the training data.

    DIR/config.yaml          the search's base config (a resumed search must match it; resources may change)
    DIR/teacher/teacher.pt   the teacher every trial shares: the pipeline's squeeze stage (trained, torchvision
                             or checkpoint), made once
    DIR/search.json          MLflow store and parent run, validation split size (the trial callback reads it)
    DIR/tune/                Ray Tune's experiment state, which --resume restores
    DIR/sets/, DIR/trials/   condensed sets and trial records (srel_ray.trial)
    DIR/trials.csv           one row per trial: values, outcome, validation metric, epochs, seconds
    DIR/best.yaml            the best trial's full config, its teacher pointed at DIR/teacher/teacher.pt, ready
                             for ``srel-ray run --config DIR/best.yaml``
    DIR/best.json            the best trial, its validation metric and its test accuracy (the one test evaluation)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

import yaml

from srel_ray.config import Config, DataConfig, from_dict, load_config, to_dict
from srel_ray.storage import files
from srel_ray.data.real import WithoutValidation
from srel_ray.errors import SrelError
from srel_ray.stages import squeeze
from srel_ray.stages.base import StageContext
from srel_ray.stages.checks import check_inputs, check_method_inputs
from srel_ray.stages.recover import needs_class_stats
from srel_ray.storage.layout import RunDir, SearchDir, prepare_out
from srel_ray.search_space import Param, apply_params, corner_configs, parse_space
from srel_ray.tracking import check_reachable, tracked_run, tracking_uri
from srel_ray.trial import TrialInputs, score_on_test, trial_key

log = logging.getLogger(__name__)

SHOWN = ("recover.iterations", "evaluate.temperature")  # always in the table, as budget and temperature


def run_search(cfg: Config, out: Path, resume: bool = False, verbosity: str = "normal") -> dict:
    """The whole ``tune`` command; returns the trial rows and the best trial's record. ``verbosity`` (the CLI's
    -v/-q): "verbose" lets Ray's worker output and Tune's per-result lines through, "quiet" silences Tune's
    status table too, "normal" keeps Tune's status table only."""
    params = parse_space(cfg)  # bad input fails here, before anything is written or started
    out = out.resolve()
    folder = SearchDir.at(out)
    _check_folder(cfg, folder, resume)
    if cfg.tracking.enabled:
        check_reachable(tracking_uri(cfg))
    from srel_ray.distributed.cluster import check_precision, resolve_use_gpu, start_ray  # Ray: seconds to import
    from srel_ray.distributed.executor import RayExecutor
    from srel_ray.distributed.tune import fit_search, trial_resources

    data = check_inputs(cfg, RunDir.at(out), ("squeeze",))
    # Counted from the images per class: the trials draw the validation rows themselves (trial.py), from the labels.
    kept = WithoutValidation(data, cfg.data.val_fraction, cfg.data.split_seed)
    val_images = kept.validation_images()
    corners = corner_configs(cfg, params)
    for corner in corners:  # trials start recovery from training images outside the validation split
        check_method_inputs(corner, RunDir.at(out), kept, ("squeeze", "recover"))
    run = prepare_out(cfg, out)
    start_ray(cfg.resources, verbose=verbosity == "verbose")
    use_gpu = resolve_use_gpu(cfg.resources)
    trial_resources(cfg, use_gpu)
    check_precision(cfg.resources, use_gpu)
    previous = files.read_json(folder.search_record) if files.exists(folder.search_record) else {}
    uri = tracking_uri(cfg) if cfg.tracking.enabled else None
    parent = previous.get("parent_run_id") if previous.get("tracking_uri") == uri else None
    with tracked_run(cfg, "tune", out, run_id=parent) as tracker:
        search = {"tracking_uri": uri, "validation_images": val_images, "teacher": run.teacher}
        if tracker.enabled:
            import mlflow

            active = mlflow.active_run().info
            search.update(parent_run_id=active.run_id, experiment_id=active.experiment_id)
        files.write_json_atomic(folder.search_record, search)
        log.info("tune: teacher (made once, shared by every trial)")
        executor = RayExecutor(use_gpu)
        squeeze.run(StageContext(cfg, run, data, executor, tracker))
        teachers = run.teachers(cfg)
        stats_dirs: list[str] = []
        if any(needs_class_stats(c) for c in corners):
            log.info("tune: per-class statistics of the training split (made once, shared by every trial)")
            stats_dirs = run.class_stats(cfg)
            executor.class_stats(cfg, data, teachers, stats_dirs)
        inputs = TrialInputs(str(out), run.teacher, data.name, data.norm, val_images, _absolute(cfg.data),
                             tuple(teachers[1:]), tuple(stats_dirs))
        log.info("tune: %s search, trials scored on %s of %d held-out training images; outputs in %s",
                 cfg.tune.search, cfg.tune.metric, val_images, out)
        results = fit_search(cfg, params, out, inputs, use_gpu, resume, tracker.enabled, verbosity)
        rows = trial_rows(cfg, params, results, folder)
        best = _best(cfg, rows, results)
        record = _score_best(cfg, best, folder, data)
        write_best_config(cfg, record, folder, run.teacher, len(rows))
        files.write_text_atomic(folder.trials_table, _csv(rows))
        tracker.log_metrics({f"best.{cfg.tune.metric}": record["val"][cfg.tune.metric], **{
            f"best.{k}": v for k, v in record["test"].items() if k != "n"}, "trials": len(rows),
            "trials_finished": sum(r["outcome"] == "finished" for r in rows)})
        for path in (folder.best_config, folder.best_record, folder.trials_table):
            tracker.log_artifact(path)
        tracker.log_artifact(folder.trial(best["trial"]).grid, folder="best")
    return {"rows": rows, "best": record, "params": [p.name for p in params], "metric": cfg.tune.metric,
            "mode": cfg.tune.mode}


def _absolute(data: DataConfig) -> DataConfig:
    """The data config with local paths (data, index) made absolute: Tune may run a trial in its own directory."""
    def absolute(path: str | None) -> str | None:
        return path if path is None or "://" in path else str(Path(path).resolve())

    return dataclasses.replace(data, path=absolute(data.path), index=absolute(data.index))


def _check_folder(cfg: Config, search: SearchDir, resume: bool) -> None:
    if not resume:
        if files.listdir(search.out):
            raise SrelError(f"output folder {search.out!r} is not empty: choose a new --out, or pass --resume to "
                            "continue the search there")
        return
    if not files.exists(search.config):
        raise SrelError(f"--resume: {search.out!r} holds no search (no config.yaml); run without --resume to start one")
    old, new = to_dict(load_config(search.config).tune), to_dict(cfg.tune)
    for key in old:
        if old[key] != new[key]:
            raise SrelError(f"--resume: {search.out!r} holds a search with tune.{key}={old[key]!r}, not {new[key]!r}; "
                            "resume with the same config, or choose a new --out")


# ---------------------------------------------------------------------------------------------- results


def trial_rows(cfg: Config, params: list[Param], results, search: SearchDir) -> list[dict]:
    """One row per Tune trial: its values, budget and temperature, outcome, final validation metric, seconds."""
    metric = cfg.tune.metric
    rows = []
    for result in results:
        values = {p.name: result.config[p.name] for p in params}
        trial_cfg = apply_params(cfg, values)
        trial = search.trial(trial_key(trial_cfg))
        last = result.metrics or {}
        row = {"trial": trial.name, "budget": trial_cfg.recover.iterations,
               "temperature": trial_cfg.evaluate.temperature, "values": values,
               **{k: v for k, v in values.items() if k not in SHOWN}}
        if files.exists(trial.record):
            record = files.read_json(trial.record)
            row.update(outcome="finished", epochs=record["history"][-1]["epoch"] + 1, seconds=record["seconds"]["total"])
            row[metric] = record["final"][metric]
        else:
            row.update(outcome="error" if result.error else "stopped early", epochs=last.get("epochs_trained", 0),
                       seconds=last.get("time_total_s"))
            row[metric] = last.get(metric)
        rows.append(row)
    return rows


def _best(cfg: Config, rows: list[dict], results) -> dict:
    finished = [r for r in rows if r["outcome"] == "finished"]
    if not finished:
        errors = [str(r.error) for r in results if r.error]
        raise SrelError("no trial of the search finished" + (f"; first error: {errors[0]}" if errors else ""))
    sign = 1 if cfg.tune.mode == "max" else -1
    return max(finished, key=lambda r: sign * r[cfg.tune.metric])


def _score_best(cfg: Config, best: dict, search: SearchDir, data) -> dict:
    """The best trial scored once on the test split (kept in best.json, so a resumed search does not redo it)."""
    path = search.best_record
    if files.exists(path) and files.read_json(path)["trial"] == best["trial"]:
        return files.read_json(path)
    trial = search.trial(best["trial"])
    trial_cfg = from_dict(files.read_json(trial.record)["config"])
    record = {"trial": best["trial"], "values": best["values"],
              "val": {cfg.tune.metric: best[cfg.tune.metric]}, "test": score_on_test(trial_cfg, Path(trial.folder), data),
              "config": search.best_config}
    files.write_json_atomic(path, record)
    return record


def write_best_config(cfg: Config, record: dict, search: SearchDir, teacher: str, trials: int) -> None:
    """DIR/best.yaml: the base config with the best values, reusing the search's teacher."""
    raw = to_dict(apply_params(cfg, record["values"]))
    raw["teacher"].update(source="checkpoint", checkpoint=teacher)
    from_dict(raw).validate()
    metric = cfg.tune.metric
    header = (f"# srel-ray tune {search.out}: the best of {trials} trials by {metric} ({cfg.tune.mode}) on "
              f"{cfg.data.val_fraction:.0%} of the training data held out\n"
              f"# trial {record['trial']}: {record['values']}; {metric} {record['val'][metric]:.4f}; "
              f"test top-1 {record['test']['test_top1']:.4f} (scored once, after the search)\n"
              f"# the teacher is the search's own; run it with: srel-ray run --config best.yaml --out NEW_DIR\n")
    files.write_bytes_atomic(search.best_config, (header + yaml.safe_dump(raw, sort_keys=False)).encode())


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    rows = [{k: v for k, v in r.items() if k != "values"} for r in rows]
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def format_trials(report: dict) -> str:
    """The table printed at the end of a search, best first, then the best trial's test accuracy."""
    metric, rows, best = report["metric"], report["rows"], report["best"]
    others = [p for p in report["params"] if p not in SHOWN]
    head = ["trial", "budget", "temperature", *others, "outcome", "epochs", metric, "seconds"]

    def cell(row, key):
        v = row.get(key)
        if v is None:
            return "n/a"
        if key == metric:
            return f"{100 * v:.2f} %" if metric.startswith("val_top") else f"{v:.4f}"
        return f"{v:.1f}" if key == "seconds" else (f"{v:.4g}" if isinstance(v, float) else str(v))

    sign = -1 if report["mode"] == "max" else 1
    order = sorted(rows, key=lambda r: (r["outcome"] != "finished", sign * (r.get(metric) or 0)))
    table = [head] + [[cell(r, k) for k in head] for r in order]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in table]
    test = best["test"]
    lines.append(f"best: trial {best['trial']} {best['values']}: {metric} {best['val'][metric]:.4f} (validation); "
                 f"test top-1 {100 * test['test_top1']:.2f} %, top-5 {100 * test['test_top5']:.2f} % "
                 f"({test['n']} test images, scored once)")
    return "\n".join(lines)
