"""What every benchmark script shares, one meaning each: provenance (the command, the git revision with its dirty
flag, the machine, the teacher's hash), result files and the Markdown blocks of the docs they rewrite, the teacher
of the quality protocol, run planning with shared baselines, and the statistics the tables quote.

Nothing happens at import time: a script calls ``quiet_output()`` first thing in ``main`` when it wants Ray Data's
and tqdm's progress bars off. Scripts import it as ``harness`` (they run as ``python benchmarks/<script>.py``,
which puts this folder on the path); the tests import it the same way (pytest's ``pythonpath``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
QUALITY_CONFIG = REPO / "jobs" / "configs" / "cifar10_quality.yaml"


def quiet_output() -> None:
    """No progress bars from Ray Data (read when the cluster starts: its workers inherit the environment) or tqdm
    (read when tqdm is first imported, so a script calls this before anything imports it); a value already set in
    the environment wins."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


# ------------------------------------------------------------------------------------------- provenance


def git_revision() -> str:
    """The full HEAD of the checkout the script runs from, with ``-dirty`` when tracked files differ from it (the
    files the benchmarks write themselves, docs/benchmarks.md and benchmarks/results/, do not count)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!docs/benchmarks.md", ":!benchmarks/results"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def short_revision(revision: str) -> str:
    """A revision for a table: the hash cut to 12 characters, the dirty flag kept (older files' short hashes and
    ``+uncommitted`` stay as they are)."""
    return re.sub(r"^([0-9a-f]{12})[0-9a-f]+", r"\1", revision)


def command() -> str:
    """The command line that is running, from the repository root, quoted so that it can be pasted."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def made_by() -> dict:
    """Who made a result: revision, day and command (every row of an accumulating results file carries its own)."""
    return {"git_revision": git_revision(), "date": time.strftime("%Y-%m-%d"), "command": command()}


def file_sha256(path: Path) -> str:
    """Which teacher made a result: runs compared with each other must share it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe_teacher(path: Path) -> dict:
    """A teacher checkpoint as the results record it: its hash and its test top-1."""
    from srel_ray.teacher import load_teacher

    return {"sha256": file_sha256(path), "test_top1": load_teacher(str(path)).metrics["test_top1"]}


def machine() -> dict:
    """The machine, the library versions and which checkout ``srel_ray`` was imported from (another checkout: a
    before/after run)."""
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "srel_ray_imported_from": srel_ray_location(),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform()}


def srel_ray_location() -> str:
    import srel_ray

    return str(Path(srel_ray.__file__).parent)


# ------------------------------------------------------------------------------------------- the quality teacher


def quality_teacher(out: Path) -> Path:
    """The teacher benchmarks/quality.py squeezes in ``--out`` (its run folder ``teacher/``), which the ladder and the
    recovery searches reuse."""
    return Path(out).resolve() / "teacher" / "teacher" / "teacher.pt"


def add_teacher_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", type=Path, default=None, metavar="TEACHER_PT",
                        help="the teacher checkpoint (default: the one benchmarks/quality.py squeezed in --out, "
                             "OUT/teacher/teacher/teacher.pt)")


def teacher_checkpoint(args: argparse.Namespace, script: str) -> Path:
    """``--teacher``, or the quality benchmark's teacher in ``--out``; SystemExit when the file is not there."""
    path = args.teacher.resolve() if args.teacher else quality_teacher(args.out)
    if not path.is_file():
        raise SystemExit(f"{script}: no teacher at {path}: run benchmarks/quality.py --out {args.out} first "
                         "(or pass --teacher TEACHER_PT)")
    return path


# ------------------------------------------------------------------------------------------- result files


def write_json(path: Path, payload: dict, indent: int = 1) -> Path:
    """``payload`` as JSON at ``path``, written under a temporary name first so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent) + "\n")
    tmp.replace(path)
    return path


def write_result(name: str, payload: dict, out: Path | None = None, ray_workers: dict | None = None) -> Path:
    """A measurement's ``benchmarks/results/<name>.json`` (or ``out``), provenance first. ``ray_workers``: what
    ``measure.start_ray`` returned, when the measurement started Ray."""
    path = write_json(Path(out) if out else RESULTS / f"{name}.json", {
        "benchmark": name, "git_revision": git_revision(), "command": command(), "cwd": os.getcwd(),
        "machine": {**machine(), "ray_workers": ray_workers or {}},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}, indent=2)
    print(f"results written to {path}")
    return path


@dataclass(frozen=True)
class DocBlock:
    """A generated block of a Markdown file, between ``<!-- name:begin -->`` and ``<!-- name:end -->``; appended
    under ``heading`` the first time."""

    name: str
    heading: str

    @property
    def markers(self) -> tuple[str, str]:
        return f"<!-- {self.name}:begin -->", f"<!-- {self.name}:end -->"

    def write(self, path: Path, text: str) -> None:
        begin, end = self.markers
        block = f"{begin}\n{text}\n{end}"
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        if begin in old and end in old:
            new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
        else:
            new = old.rstrip() + f"\n\n{self.heading}\n\n" + block + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)


def publish(results: dict, path: Path, docs: Path, block: DocBlock, markdown: Callable[[dict], str]) -> None:
    """Write the results file, then its table into the docs block, and print the table."""
    write_json(path, results)
    text = markdown(results)
    block.write(docs, text)
    print(text)


def merge_runs(earlier: list[dict], runs: list[dict], key: Callable[[dict], Hashable]) -> list[dict]:
    """An accumulating results file's runs: the earlier invocations' runs that this one has not redone, then
    this one's."""
    mine = {key(r) for r in runs}
    return [r for r in earlier if key(r) not in mine] + runs


# ------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedRun:
    cell: tuple  # what the runs of one experiment differ by besides the step, e.g. (IPC, seed)
    step: str
    protocol: str  # what the run's baselines depend on: runs of the same protocol share them
    trains_baselines: bool  # False: another run of the plan trains them, or they are known already


def plan_shared_baselines(cells: Iterable[tuple], steps: list[str], wanted: list[str],
                          protocol: Callable[[tuple, str], str], known: set[str]) -> list[PlannedRun]:
    """The runs of ``wanted`` steps (in that order) for every cell, where the baselines of a protocol are trained
    once, by the first of ``steps`` that has it (whatever ``wanted`` says, so a run folder always gets the same
    config). A wanted step whose baselines' owner is not wanted brings the owner along, run just before it, unless
    the baselines are ``known`` (measured before)."""
    plan = []
    for cell in cells:
        keys = {step: protocol(cell, step) for step in steps}
        owner: dict[str, str] = {}
        for step in steps:
            owner.setdefault(keys[step], step)
        order: list[str] = []
        for step in wanted:
            first = owner[keys[step]]
            if keys[step] not in known and first not in order and first != step:
                logging.info("%r needs the baselines of %r: running it too", step, first)
                order.append(first)
            if step not in order:
                order.append(step)
        plan += [PlannedRun(cell, step, keys[step], owner[keys[step]] == step and keys[step] not in known)
                 for step in order]
    return plan


# ------------------------------------------------------------------------------------------- statistics


def median_range(values: list[float]) -> dict:
    """Median with min and max, for timings: with few repeats on a shared machine the range says more than a
    deviation."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds (0 for one seed), for accuracies; the values kept so tables
    can pair them by seed."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def rates(samples: list[dict], work: float) -> dict:
    """Work units per second of each timed sample, as a median and range."""
    return median_range([work / s["seconds"] for s in samples])
