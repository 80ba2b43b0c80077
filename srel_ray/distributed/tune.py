"""The Ray Tune edge of ``srel-ray tune``: the search space as Tune domains, the trial function (srel_ray.trial
in one process per trial), ASHA and the search algorithm, resume, and an MLflow callback that records every trial
as a nested run of the search's parent run.

MLflow is written from the driver only (a Tune callback): trials stopped by ASHA are still closed properly, and
concurrent trials never write into one SQLite file at once. The callback reads its store and parent run from
``DIR/search.json`` when the search starts, so a resumed search records into the store of the resuming command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import ray.tune
import torch
from mlflow.entities import Metric, Param as MlflowParam
from mlflow.tracking import MlflowClient
from ray.tune import Callback, FailureConfig, RunConfig, Tuner
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from srel_ray.config import TRIAL_METRICS, Config, from_dict, load_config, to_dict
from srel_ray.distributed.cluster import check_fits, local_device
from srel_ray.storage import files
from srel_ray.storage.layout import SearchDir
from srel_ray.search_space import Param, apply_params, max_epochs
from srel_ray.tracking import config_params
from srel_ray.trial import TrialInputs, run_trial, trial_key

log = logging.getLogger(__name__)

EXPERIMENT = "tune"  # DIR/tune holds Tune's experiment state, which --resume restores


def domain(p: Param):
    """A Tune search-space object for one parameter (randint bounds are inclusive here, exclusive in Tune)."""
    if p.kind == "grid":
        return ray.tune.grid_search(list(p.values))
    if p.kind == "choice":
        return ray.tune.choice(list(p.values))
    if p.kind == "uniform":
        return ray.tune.uniform(*p.values)
    if p.kind == "loguniform":
        return ray.tune.loguniform(*p.values)
    assert p.kind == "randint", p.kind
    return ray.tune.randint(p.values[0], p.values[1] + 1)


def srel_trial(params: dict, base: dict, inputs: TrialInputs, threads: int) -> None:
    """One trial, in its own Tune actor: the whole chain in process, reporting each scored student epoch."""
    torch.set_num_threads(threads)
    cfg = apply_params(from_dict(base), params)
    run_trial(cfg, inputs, ray.tune.report, device=local_device())


def _trial_dirname(trial) -> str:
    return trial.trial_id  # short and stable; Tune's default embeds every value and a timestamp


def trial_resources(cfg: Config, use_gpu: bool) -> dict:
    res = cfg.resources
    request = {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial if use_gpu else 0}
    check_fits(request["cpu"], request["gpu"], "a trial", "resources.cpus_per_trial, resources.gpus_per_trial")
    return request


TUNE_VERBOSITY = {"quiet": 0, "normal": 1, "verbose": 2}  # RunConfig.verbose: silent | status table | + results


def fit_search(cfg: Config, params: list[Param], out: Path, inputs: TrialInputs, use_gpu: bool,
               resume: bool, track: bool, verbosity: str = "normal") -> ray.tune.ResultGrid:
    """Run the search, or continue the one saved in DIR/tune; returns Tune's results for every trial."""
    t = cfg.tune
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(srel_trial, base=to_dict(cfg), inputs=inputs, threads=cfg.resources.threads_per_worker),
        trial_resources(cfg, use_gpu))
    path = out / EXPERIMENT
    if resume and Tuner.can_restore(str(path)):
        log.info("tune: resuming the search saved in %s (finished trials are not run again)", path)
        tuner = Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        with _console(out, verbosity):
            return tuner.fit()
    scheduler = (ASHAScheduler(time_attr="epochs_trained", max_t=max_epochs(cfg, params), grace_period=t.grace_period,
                               reduction_factor=t.reduction_factor) if t.asha else None)
    tuner = Tuner(
        trainable,
        param_space={p.name: domain(p) for p in params},
        tune_config=ray.tune.TuneConfig(metric=t.metric, mode=t.mode, search_alg=_searcher(cfg), scheduler=scheduler,
                                        num_samples=t.samples(), max_concurrent_trials=t.max_concurrent_trials or None,
                                        trial_dirname_creator=_trial_dirname),
        run_config=RunConfig(name=EXPERIMENT, storage_path=str(out), failure_config=FailureConfig(max_failures=2),
                             callbacks=[MlflowTrials(str(out))] if track else [],
                             verbose=TUNE_VERBOSITY[verbosity]),
    )
    with _console(out, verbosity):
        return tuner.fit()


def _console(out: Path, verbosity: str):
    """-q: what Tune prints whatever its verbosity (the experiment's configuration table, where its results
    are) goes to DIR/logs/tune.log instead of the console, so only errors and the final table are shown."""
    if verbosity != "quiet":
        return contextlib.nullcontext()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(out / "logs" / "tune.log", "a"))))
    return stack


def _searcher(cfg: Config):
    if cfg.tune.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study lines belong in logs, not the console

        return OptunaSearch(seed=cfg.seed)
    if cfg.tune.search == "random":
        return BasicVariantGenerator(random_state=cfg.seed)
    return None  # grid: Tune's default generator enumerates grid_search values


class MlflowTrials(Callback):
    """Every trial as an MLflow run nested under the search's parent run (tag mlflow.parentRunId): its config
    as params, val/train metrics per student epoch, then the trial record's summary and the image grid."""

    def __init__(self, out: str):
        self.out = out  # pickled with the Tuner: only the folder, the store is read at setup

    def setup(self, **info) -> None:
        search = files.read_json(SearchDir.at(self.out).search_record)
        self.client = MlflowClient(tracking_uri=search["tracking_uri"])
        self.experiment_id, self.parent = search["experiment_id"], search["parent_run_id"]
        self.base = load_config(SearchDir.at(self.out).config)
        self.runs: dict[str, tuple[str, bool]] = {}  # Tune trial id -> (MLflow run id, finished before)

    def _run(self, trial) -> tuple[str, bool]:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        cfg = apply_params(self.base, trial.config)
        key = trial_key(cfg)
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent}' and tags.`srel_ray.trial` = '{key}'")
        if found:  # a resumed search: continue the trial's run, and leave a finished one as it is
            entry = (found[0].info.run_id, found[0].info.status == "FINISHED")
        else:
            tuned = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial.config.items())
            run = self.client.create_run(self.experiment_id, run_name=f"trial {key}: {tuned}",
                                         tags={"mlflow.parentRunId": self.parent, "srel_ray.trial": key,
                                               "srel_ray.command": "tune trial", "srel_ray.tune_id": trial.trial_id,
                                               "srel_ray.tuned": json.dumps(trial.config)})
            params = [MlflowParam(k, v) for k, v in config_params(cfg).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
                self.client.log_batch(run.info.run_id, params=params[start:start + 100])
            entry = (run.info.run_id, False)
        self.runs[trial.trial_id] = entry
        return entry

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id, finished_before = self._run(trial)
        if finished_before:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, int(result["epoch"])) for k in TRIAL_METRICS if k in result]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "FAILED")

    def _close(self, trial, status: str) -> None:
        run_id, finished_before = self._run(trial)
        if finished_before:
            return
        folder = SearchDir.at(self.out).trial(trial_key(apply_params(self.base, trial.config)))
        if files.exists(folder.record):
            record = files.read_json(folder.record)
            summary = {**{f"final.{k}": v for k, v in record["final"].items()},
                       **{f"seconds.{k}": v for k, v in record["seconds"].items()},
                       **{f"recover.{k}": v for k, v in record["recover_stats"].items()}}
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
            self.client.log_artifact(run_id, folder.record)
            outcome = "finished"
        else:
            last = trial.last_result or {}
            outcome = "error" if status == "FAILED" else f"stopped early after epoch {last.get('epoch', '?')}"
        if files.exists(folder.grid):
            self.client.log_artifact(run_id, folder.grid)
        self.client.set_tag(run_id, "srel_ray.outcome", outcome)
        self.client.set_terminated(run_id, status)
        self.runs[trial.trial_id] = (run_id, True)
