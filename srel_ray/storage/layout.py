"""Where each file of a run and of a search lives, and claiming an output folder for one run.

A run's folder (``srel-ray run``, one stage command; the orchestrator srel_ray.pipeline writes it)::

    DIR/config.yaml                     the final config (a folder holds one run: a different config is refused)
    DIR/teacher/teacher.pt              the frozen teacher with its class order and normalisation
    DIR/teacher/extra-<i>.pt            teacher.extra's teachers (multi-teacher recovery and labels)
    DIR/teacher/class_stats/<teacher>/  per-class BN statistics (recover.class_bn_weight > 0), one file per class
    DIR/condensed/                      the condensed set (images, labels, manifest.json; see srel_ray.storage.sets)
    DIR/baselines/random_real/          IPC random real images per class, relabelled by the same teacher
    DIR/evaluate/<student>.json         one file per trained student
    DIR/stages/<stage>.json             what each stage did and how long it took
    DIR/summary.json                    written last, once every stage has finished
    DIR/condensed_grid.png              a preview of the condensed set
    DIR/accuracy_curves.png             teacher and students, test top-1 against epoch (with summary.json)
    DIR/tracking.json                   the MLflow run (id, store) that a resumed command continues
    DIR/logs/                           driver.log (every log line) and ray/ (Ray's session logs, a link)
    DIR/ray/                            Ray Train storage (checkpoints that resume squeeze and evaluate)

and, once a study of the finished run has run (srel_ray/studies/)::

    DIR/continual/continual.json        srel-ray continual: every step's test top-1, per memory and step count
    DIR/continual/continual.png         the same as curves
    DIR/continual/students/<name>.json  one record per trained step student (a rerun trains only the missing)
    DIR/tsne/tsne.json, DIR/tsne/tsne.png  srel-ray tsne: the 2-D points of the teacher's features, and the figure

A search's folder (``srel-ray tune``; srel_ray.tuning and srel_ray.trial write it) holds a run's config.yaml and
teacher/, and::

    DIR/search.json          MLflow store and parent run, validation split size (the trial callback reads it)
    DIR/validation/          the validation images, part-<k>.pt files of uint8 images and labels, parts.json last
    DIR/tune/                Ray Tune's experiment state, which --resume restores (srel_ray.distributed.tune)
    DIR/sets/<set key>/      condensed sets shared by the trials whose set settings agree
    DIR/trials/<trial key>/  trial.json (written last), student.pt, condensed_grid.png
    DIR/trials.csv, DIR/best.yaml, DIR/best.json

DIR is a local folder or any fsspec URL (s3://, gs://, file://) that the driver and every Ray worker can reach;
on a cluster of several nodes it must be shared storage. A search folder is local (trials lock it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from srel_ray.config import Config, config_from_yaml, config_yaml
from srel_ray.errors import SrelError
from srel_ray.storage.files import exists, is_file, is_url, join, listdir, read_bytes, write_bytes_atomic

@dataclass(frozen=True)
class RunDir:
    """The files of one run under ``out``: an absolute local path or any fsspec URL (s3://, gs://, file://)."""

    out: str

    @classmethod
    def at(cls, out: str | Path) -> "RunDir":
        out = str(out)
        # Ray workers run in other directories: local paths are made absolute; URLs are kept as given.
        return cls(out.rstrip("/") if is_url(out) else str(Path(out).resolve()))

    @property
    def name(self) -> str:
        return self.out.rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return not is_url(self.out)

    @property
    def config(self) -> str:
        return join(self.out, "config.yaml")

    @property
    def teacher(self) -> str:
        return join(self.out, "teacher", "teacher.pt")

    def extra_teachers(self, cfg: Config) -> list[str]:
        return [join(self.out, "teacher", f"extra-{i + 1}.pt") for i in range(len(cfg.teacher.extra))]

    def teachers(self, cfg: Config) -> list[str]:
        """teacher.pt, then each extra teacher."""
        return [self.teacher, *self.extra_teachers(cfg)]

    def label_teachers(self, cfg: Config) -> list[str]:
        """The teachers whose (mean) logits label the sets: relabel.teacher when it is set, else ``teachers``."""
        return [cfg.relabel.teacher] if cfg.relabel.teacher else self.teachers(cfg)

    def class_stats(self, cfg: Config) -> list[str]:
        """One statistics folder per teacher: teacher.pt's, then each extra teacher's."""
        names = ["teacher"] + [f"extra-{i + 1}" for i in range(len(cfg.teacher.extra))]
        return [join(self.out, "teacher", "class_stats", name) for name in names]

    def set_dir(self, name: str) -> str:
        return join(self.out, "condensed" if name == "condensed" else f"baselines/{name}")

    def stage_record(self, stage: str) -> str:
        return join(self.out, "stages", f"{stage}.json")

    def student_record(self, name: str, arch_key: str | None = None) -> str:
        """evaluate/<student>.json for evaluate.arch; evaluate/<arch key>/<student>.json for evaluate.students."""
        return join(self.out, "evaluate", *([arch_key] if arch_key else []), f"{name}.json")

    @property
    def grid(self) -> str:
        return join(self.out, "condensed_grid.png")

    @property
    def ray_storage(self) -> str:
        return join(self.out, "ray")

    @property
    def curves(self) -> str:
        return join(self.out, "accuracy_curves.png")

    @property
    def tracking(self) -> str:
        return join(self.out, "tracking.json")

    @property
    def logs(self) -> str:
        return join(self.out, "logs")

    @property
    def summary(self) -> str:
        return join(self.out, "summary.json")

    def continual(self, name: str) -> str:
        """DIR/continual/<name>: the continual-learning study's results and figure."""
        return join(self.out, "continual", name)

    def continual_student(self, name: str) -> str:
        return join(self.out, "continual", "students", f"{name}.json")

    def feature_space(self, name: str) -> str:
        """DIR/tsne/<name>: the feature-space study's points and figure."""
        return join(self.out, "tsne", name)


@dataclass(frozen=True)
class TrialDir:
    """The files of one tuning trial: DIR/trials/<trial key>/."""

    folder: str

    @property
    def name(self) -> str:
        return self.folder.rsplit("/", 1)[-1]

    @property
    def record(self) -> str:
        return join(self.folder, "trial.json")

    @property
    def student(self) -> str:
        return join(self.folder, "student.pt")

    @property
    def grid(self) -> str:
        return join(self.folder, "condensed_grid.png")


@dataclass(frozen=True)
class SearchDir(RunDir):
    """A search's folder: a run's config and teacher, plus the shared sets, the trials and the results."""

    @property
    def search_record(self) -> str:
        return join(self.out, "search.json")

    @property
    def validation(self) -> str:
        """The record of the validation images every trial scores on (their files, written before it), decoded
        once by the first trial that needs them."""
        return join(self.out, "validation", "parts.json")

    def validation_part(self, index: int) -> str:
        """One file of the validation images (uint8) and labels."""
        return join(self.out, "validation", f"part-{index:05d}.pt")

    def shared_set(self, key: str) -> str:
        return join(self.out, "sets", key)

    def trial(self, key: str) -> TrialDir:
        return TrialDir(join(self.out, "trials", key))

    @property
    def trials_table(self) -> str:
        return join(self.out, "trials.csv")

    @property
    def best_config(self) -> str:
        return join(self.out, "best.yaml")

    @property
    def best_record(self) -> str:
        return join(self.out, "best.json")


def prepare_out(cfg: Config, out: str | Path) -> RunDir:
    """Claim ``out`` for this run: refuse a folder holding a different run, then save the config beside it."""
    run = RunDir.at(out)
    check_out_is_folder(run)
    if exists(run.config):
        previous = config_from_yaml(read_bytes(run.config).decode(), run.config)
        if previous.identity() != cfg.identity():
            key, old, new = _first_difference(previous.identity(), cfg.identity())
            raise SrelError(f"output folder {run.out!r} holds a different run ({key}: {old!r} there, {new!r} now); "
                            "choose a new --out, or rerun with the same config to resume")
    elif listdir(run.out):
        raise SrelError(f"output folder {run.out!r} is not empty and holds no srel_ray run (no config.yaml); "
                        "choose an empty or new folder")
    write_bytes_atomic(run.config, config_yaml(cfg).encode())
    return run


def existing_run(out: str | Path, command: str) -> RunDir:
    """The run a command that reads one (``srel-ray <command> DIR``) finds at ``out``: a SrelError unless it is a
    folder holding a run's config.yaml."""
    run = RunDir.at(out)
    if not exists(run.out):
        raise SrelError(f"{run.out!r} does not exist")
    if is_file(run.out):
        raise SrelError(f"{run.out!r} is a file; srel-ray {command} takes a run's output folder (--out of srel-ray "
                        "run)")
    if not exists(run.config):
        raise SrelError(f"{run.out!r} is not a srel_ray run: it has no config.yaml (written when a run starts)")
    return run


def check_out_is_folder(run: RunDir) -> None:
    """``--out`` must name a folder (new or existing), not a file."""
    if is_file(run.out):
        raise SrelError(f"--out {run.out!r} is a file, not a folder; give a new or existing folder")


def _first_difference(a: dict, b: dict, prefix: str = "") -> tuple[str, object, object]:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            if va != vb:
                return _first_difference(va, vb, f"{prefix}{key}.")
        elif va != vb:
            return f"{prefix}{key}", va, vb
    return prefix.rstrip("."), None, None
