"""What a person watching a run sees: one line per stage start and end, one progress bar per long loop (with rate
and ETA, from tqdm), and where the rest goes (the log file in DIR/logs/). No Ray here: the Ray side that carries
progress from workers to the driver is srel_ray.distributed.progress.

Verbosity: ``quiet`` shows errors and the final table only; ``normal`` (the default) adds the stage lines, the
bars and this project's warnings; ``verbose`` adds every INFO log line, Ray's worker output and Ray Data's bars.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

VERBOSITIES = ("quiet", "normal", "verbose")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SET_BY_US: dict[str, str] = {}  # environment values this module set (so a later call may change them again)


class _ConsoleFilter(logging.Filter):
    """Normal verbosity: this project's warnings, and errors from anyone (Ray, MLflow, warnings module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (record.name.startswith("srel_ray")
                                                   and record.levelno >= logging.WARNING)


def setup_logging(verbosity: str) -> None:
    """The console handler of the driver's root logger; the full INFO log goes to a file once DIR is known."""
    assert verbosity in VERBOSITIES, verbosity
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "_srel_ray", False)]:
        root.removeHandler(handler)  # main() called again in one process (tests)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    console._srel_ray = True
    if verbosity == "quiet":
        console.setLevel(logging.ERROR)
    elif verbosity == "normal":
        console.addFilter(_ConsoleFilter())
    root.addHandler(console)
    # MLflow logs INFO lines (database set-up, system metrics) through a handler of its own, configured when it is
    # imported (from MLFLOW_LOGGING_LEVEL); a user's own MLFLOW_LOGGING_LEVEL wins.
    level = "INFO" if verbosity == "verbose" else "WARNING"
    if os.environ.get("MLFLOW_LOGGING_LEVEL") in (None, _SET_BY_US.get("mlflow")):  # unset, or set by us
        os.environ["MLFLOW_LOGGING_LEVEL"] = _SET_BY_US["mlflow"] = level
        logging.getLogger("mlflow").setLevel(level)  # when it is imported already
    logging.captureWarnings(True)  # library deprecation warnings go to the log file, not between the bars


def log_to_file(folder: str | Path) -> Path:
    """Every INFO line of the driver from now on also goes to ``folder``/driver.log (appended: a resumed
    command adds to the log of the run it continues)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_srel_ray_file", False)]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(folder / "driver.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler._srel_ray_file = True
    root.addHandler(handler)
    return folder / "driver.log"


class Console:
    """Stage lines and progress bars on stderr (stdout keeps the final table)."""

    def __init__(self, verbosity: str = "normal"):
        assert verbosity in VERBOSITIES, verbosity
        self.verbosity = verbosity

    @property
    def quiet(self) -> bool:
        return self.verbosity == "quiet"

    def line(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text, file=sys.stderr)

    def stage_started(self, index: int, count: int, stage: str) -> None:
        self.line(f"[{index}/{count}] {stage} ...")

    def stage_finished(self, index: int, count: int, stage: str, seconds: float, did: str) -> None:
        self.line(f"[{index}/{count}] {stage} done in {seconds:.1f} s" + (f" ({did})" if did else ""))

    def bar(self, desc: str, total: int, unit: str, initial: int = 0) -> tqdm:
        """A bar with rate and ETA; ``initial``: work an earlier command already did (resumed, not redone)."""
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=self.quiet,
                    dynamic_ncols=True, leave=True, mininterval=0.5)


def stage_did(stage: str, result: dict) -> str:
    """A few words of what a stage did, from its stages/<stage>.json result: work done, resumed and skipped."""
    if result.get("skipped") is True and stage != "relabel":
        return "already complete, skipped"
    if stage == "squeeze":
        top1 = result.get("metrics", {}).get("test_top1")
        did = "" if top1 is None else f"teacher test top-1 {100 * top1:.2f} %"
        if result.get("skipped_epochs"):
            did += f", {result['skipped_epochs']} epochs resumed from a checkpoint"
        return did
    if stage == "recover":
        return (f"{result['units'] - result['skipped_units']} of {result['units']} units recovered"
                + (f", {len(result['interrupted_units'])} interrupted units redone" if result["interrupted_units"]
                   else ""))
    if stage == "relabel":
        parts = [f"{name}: {r['epochs'] - r['skipped_epochs']} of {r['epochs']} label epochs written"
                 for name, r in result.items() if isinstance(r, dict) and "epochs" in r]
        return "; ".join(parts)
    if stage == "evaluate":
        # Every student of every architecture: "condensed", "random_real_hard", ... and "<arch key>/condensed", ...
        trained = [name for name, r in result.items() if isinstance(r, dict) and "top1" in r
                   and name not in result.get("skipped_students", [])]
        resumed = [name for name, r in result.get("resumed", {}).items() if r.get("skipped_epochs")]
        return f"{len(trained)} students trained" + (
            f", {len(result['skipped_students'])} already done" if result.get("skipped_students") else "") + (
            f", {len(resumed)} resumed from a checkpoint" if resumed else "")
    return ""
