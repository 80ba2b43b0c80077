"""What every study of a finished run starts from: the run folder, checked to hold a finished run before any heavy
work, the run's saved config with the ``--set`` overrides the study may make, and the study's own section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srel_ray.config import Config, config_from_yaml, load_study_section
from srel_ray.errors import ConfigError, SrelError
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir, existing_run


@dataclass(frozen=True)
class FinishedRun:
    cfg: Config  # the run's config.yaml, with the study's overrides of the sections it may set
    run: RunDir
    section: Any  # the study's section, e.g. srel_ray.config.ContinualConfig

    def seed(self) -> int:
        """The study's seed: its section's, else the run's."""
        return self.cfg.seed if self.section.seed is None else self.section.seed


def finished_run(out: str | Path, overrides: list[str], study: str, may_set: tuple[str, ...]) -> FinishedRun:
    """The finished run at ``out`` for ``srel-ray <study>``: ``overrides`` set keys of the study's section or of
    the run's sections in ``may_set`` (the others made the run's sets and teacher, which the study reads as they
    are). A folder that is not a finished run, or an override the study cannot take, is a SrelError."""
    run = existing_run(out, study)
    if not files.exists(run.summary):
        raise SrelError(f"{run.out!r} is not a finished run (no summary.json): finish it first (srel-ray run "
                        f"--config {run.config} --out {run.out})")
    for item in overrides:
        section = item.split("=", 1)[0].strip().split(".")[0]
        if section not in (study, *may_set):
            raise ConfigError(f"--set {item!r}: srel-ray {study} takes {study}.* and "
                              f"{', '.join(s + '.*' for s in may_set)} settings; the run's {section} settings made "
                              "what the study reads, so they stay as the run has them")
    run_overrides = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] != study]
    cfg = config_from_yaml(files.read_bytes(run.config).decode(), run.config, run_overrides)
    return FinishedRun(cfg, run, load_study_section(study, overrides))
