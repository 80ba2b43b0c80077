"""MLflow tracking of a command: params, per-epoch metrics, the summary and a grid of the synthetic images.

The store is MLFLOW_TRACKING_URI when set, else ``tracking.tracking_uri``, else MLflow's own default (the SQLite
file ``mlflow.db`` in the working directory). New experiments get an absolute artifact location, so runs launched
from different output folders land in one store and show in one ``mlflow ui``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from srel_ray.config import Config, to_dict
from srel_ray.errors import SrelError
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir

log = logging.getLogger(__name__)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Tracker:
    """A thin, optional MLflow run. Disabled trackers accept every call and do nothing.

    Every call names the run explicitly (MlflowClient), so a progress thread may log metrics while the stage runs
    (MLflow's fluent API keeps its active run per thread)."""

    def __init__(self, enabled: bool, run_id: str | None = None, uri: str | None = None):
        self.enabled = enabled
        self.run_id = run_id
        self.client = None
        if enabled:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)

    def log_metrics(self, metrics: dict, step: int | None = None, prefix: str = "") -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numeric = [Metric(f"{prefix}{k}", float(v), now, step or 0) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric:
            self.client.log_batch(self.run_id, metrics=numeric)

    def log_history(self, history: list[dict], prefix: str, skip: set[int] = frozenset()) -> None:
        """Per-epoch rows as metrics stepped by epoch; ``skip``: epochs already logged (live, while training)."""
        for row in history:
            if int(row["epoch"]) not in skip:
                self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]),
                                 prefix=prefix)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Log a local file or an fsspec URL (fetched into a temporary folder first)."""
        if not self.enabled:
            return
        with files.local_copy(str(path)) as local:
            if local is not None:
                self.client.log_artifact(self.run_id, local, artifact_path=folder)


def config_params(cfg: Config) -> dict[str, str]:
    """The flattened config as MLflow params (values cut to MLflow's length limit)."""
    return {k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()}


def tracking_uri(cfg: Config) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def previous_run_id(cfg: Config, run: RunDir) -> str | None:
    """The MLflow run of an earlier command on this run folder, continued when it is in the same store."""
    if not cfg.tracking.enabled or not files.exists(run.tracking):
        return None
    previous = files.read_json(run.tracking)
    return previous["run_id"] if previous["tracking_uri"] == tracking_uri(cfg) else None


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail within ``timeout`` seconds when an HTTP tracking server does not answer (MLflow's own client retries
    for minutes). Any HTTP answer counts: a proxy or an auth layer in front of the server is someone answering."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SrelError(f"MLflow tracking server {uri} does not answer ({reason}); start it, or point "
                        "MLFLOW_TRACKING_URI / tracking.tracking_uri elsewhere, or set tracking.enabled=false") from None


@contextlib.contextmanager
def tracked_run(cfg: Config, command: str, out: str | Path, run_id: str | None = None) -> Iterator[Tracker]:
    """An MLflow run for one ``srel-ray`` command, with the flattened config as params; ``run_id`` continues a
    run of an earlier, interrupted command (its params are already there). ``out``: a local folder or a URL."""
    if not cfg.tracking.enabled:
        yield Tracker(False)
        return
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        root = cfg.tracking.artifact_root
        if root is None and uri.startswith("sqlite:///"):
            root = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(cfg.tracking.experiment, artifact_location=root)
    else:
        experiment_id = experiment.experiment_id
    system = cfg.tracking.system_metrics and _psutil_present()
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, log_system_metrics=system):
            log.info("mlflow: continuing run %s at %s", run_id, uri)
            yield Tracker(True, run_id, uri)
        return
    out = str(out) if "://" in str(out) else str(Path(out).resolve())
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{command}:{out.rstrip('/').rsplit('/', 1)[-1]}",
                          log_system_metrics=system) as run:
        mlflow.set_tags({"srel_ray.command": command, "srel_ray.out": out})
        mlflow.log_params(config_params(cfg))
        log.info("mlflow: run %s in experiment %r at %s", run.info.run_id, cfg.tracking.experiment, uri)
        yield Tracker(True, run.info.run_id, uri)


def _psutil_present() -> bool:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml) need psutil."""
    import importlib.util

    if importlib.util.find_spec("psutil") is None:
        log.info("mlflow: no system metrics (psutil is not installed)")
        return False
    return True
