"""Looking at configs and runs: ``srel-ray config`` (the resolved config and where each value came from),
``srel-ray show DIR`` (what a run did, its table and its pictures), and the accuracy curves a run draws."""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path
from typing import Any, Callable

from srel_ray.config import Config, apply_overrides, from_dict, method_presets, read_config_file, to_dict
from srel_ray.storage import files
from srel_ray.errors import SrelError
from srel_ray.tracking import flatten

SOURCES = ("default", "preset", "file", "--set")
PLOTS_MISSING = "matplotlib is not installed (pip install 'srel_ray[plots]' to draw it)"

log = logging.getLogger(__name__)


def config_sources(path: str | Path | None, overrides: list[str]) -> tuple[Config, dict[str, str]]:
    """The config ``srel-ray`` would run with, and for every field (dotted key) where its value came from:
    ``default`` (the dataclass), ``preset`` (the method's), ``file`` or ``--set`` (the last one given wins); a file
    or --set value that differs from the method's preset says so (``file; edc preset: 150``)."""
    from_file = read_config_file(path)
    raw = apply_overrides(copy.deepcopy(from_file), overrides)
    cfg = from_dict(raw).validate()
    given_file = set(flatten(from_file))
    given_set = set(flatten(apply_overrides({}, overrides)))
    preset = flatten(method_presets(raw))
    sources = {}
    for key, value in flatten(to_dict(cfg)).items():
        if key in given_set or key in given_file:
            sources[key] = "--set" if key in given_set else "file"
            if key in preset and preset[key] != value:
                sources[key] += f"; {cfg.method} preset: {preset[key]!r}"
        else:
            sources[key] = "preset" if key in preset else "default"
    return cfg, sources


def format_config(cfg: Config, sources: dict[str, str]) -> str:
    """One line per field: ``key: value  [source]``, then how many values each source gave."""
    values = flatten(to_dict(cfg))
    width = max(len(k) for k in values)
    lines = [f"{key:{width}s}  {values[key]!r:40s} [{sources[key]}]" for key in values]
    counts = {s: sum(v.split(";")[0] == s for v in sources.values()) for s in SOURCES}
    overridden = [k for k, v in sources.items() if "preset:" in v]
    lines.append("\nvalues from: " + ", ".join(f"{s} {n}" for s, n in counts.items() if n) + f" (method {cfg.method})")
    if overridden:
        lines.append(f"the config overrides {len(overridden)} of {cfg.method}'s preset values: " + ", ".join(overridden))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- pictures


def pyplot():
    """matplotlib.pyplot drawing to files only, or None without matplotlib (the optional ``plots`` extra)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(teacher_history: list[dict], students: dict[str, list[dict]]):
    """Test top-1 against epoch, the teacher's (left: squeeze epochs) and each student's (right: the condensed
    set and both baselines, drawn at the epochs they were tested); returns the figure."""
    plt = pyplot()
    if plt is None:
        raise SrelError(f"the accuracy curves cannot be drawn: {PLOTS_MISSING}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 2]})
    labels = {"condensed": "condensed set (soft labels)", "random_real_hard": "random real, hard labels",
              "random_real_soft": "random real, teacher labels"}
    if teacher_history:
        left.plot([r["epoch"] + 1 for r in teacher_history], [100 * r["test_top1"] for r in teacher_history],
                  "k.-", label="teacher (squeeze epochs)")
    else:  # a torchvision model or a checkpoint: no squeeze epochs here
        left.text(0.5, 0.5, "loaded, not squeezed", ha="center", transform=left.transAxes)
    for name, history in students.items():
        points = [(r["epoch"] + 1, 100 * r["test_top1"]) for r in history if "test_top1" in r]
        right.plot(*zip(*points), marker=".", label=labels.get(name, name))
    for ax, title in ((left, "teacher"), (right, "students")):
        ax.set(xlabel="epoch", ylabel="test top-1 %", title=title)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(loc="lower right", fontsize="small")
    return fig


def save_curves(teacher_history: list[dict], students: dict[str, list[dict]], path: str) -> str:
    """The curves as a PNG at ``path`` (``save_figure``); returns ``path``."""
    return save_figure(lambda: plot_curves(teacher_history, students), path)


def save_figure(draw: Callable[[], Any], path: str) -> str:
    """The figure ``draw()`` returns as a PNG at ``path`` (local or URL), written atomically; returns ``path``.
    Without matplotlib nothing is drawn or written and one log line says so (a tracker logs the path only if the
    file exists)."""
    plt = pyplot()
    if plt is None:
        log.warning("%s not drawn: %s", path, PLOTS_MISSING)
        return path
    fig = draw()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files.write_bytes_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- show


def verify_run(out: str) -> str:
    """What ``srel-ray verify DIR`` prints: every set of a run (or DIR itself when it is a set) re-read and checked
    against the checksums its manifest vouches for; a DataError names the first file that is missing or changed."""
    from srel_ray.storage import sets
    from srel_ray.storage.layout import RunDir
    from srel_ray.storage.verify import verify_set
    from srel_ray.students import STUDENTS

    run = RunDir.at(out)
    if files.exists(sets.manifest_path(run.out)):
        folders = [run.out]
    else:
        folders = [run.set_dir(name) for name in dict.fromkeys(s.set_name for s in STUDENTS.values())
                   if files.exists(sets.manifest_path(run.set_dir(name)))]
    if not folders:
        raise SrelError(f"{run.out!r} holds no complete set (no manifest.json in it, condensed/ or baselines/): "
                        "give a run's output folder or a set's folder")
    return "\n".join(f"{folder}: {verify_set(folder)} files match their manifest checksums"
                     for folder in folders)


def show_run(out: str) -> str:
    """What ``srel-ray show DIR`` prints: the summary table, where the pictures are, and what each stage did.
    A folder that is no run, or a run still in progress, gets a SrelError saying what is there and what is not."""
    from srel_ray.stages.registry import STAGES
    from srel_ray.summary import format_summary
    from srel_ray.storage.layout import existing_run
    from srel_ray.progress import stage_did

    run = existing_run(out, "show")
    lines = []
    done = [s for s in STAGES if files.exists(run.stage_record(s))]
    for stage in STAGES:
        if stage in done:
            record = files.read_json(run.stage_record(stage))
            did = stage_did(stage, record["result"])
            lines.append(f"{stage:9s} {record['seconds']:8.1f} s  {did}")
        else:
            lines.append(f"{stage:9s}        -    not finished (no stages/{stage}.json)")
    if files.exists(run.summary):
        lines = [format_summary(files.read_json(run.summary)), "", "stages:"] + lines
    else:
        missing = [s for s in STAGES if s not in done]
        lines = [f"{run.out}: a run in progress or stopped before the end (no summary.json); stages not finished: "
                 f"{', '.join(missing)}", "", "stages:"] + lines
    pictures = [p for p in (run.curves, run.grid) if files.exists(p)]
    lines += ["", "pictures: " + (", ".join(pictures) if pictures else "none yet (drawn after recover and evaluate)")]
    if files.exists(run.summary) and not files.exists(run.curves):
        lines.append(f"absent: {run.curves}" + (f" ({PLOTS_MISSING})" if pyplot() is None else ""))
    if files.exists(run.tracking):
        tracking = files.read_json(run.tracking)
        lines.append(f"mlflow: run {tracking['run_id']} at {tracking['tracking_uri']}")
    if files.exists(run.logs):
        lines.append(f"logs: {run.logs}")
    return "\n".join(lines)
