"""The fixed cost of one Ray Train fit: where the seconds of a tiny student, a tiny squeeze and an empty loop go.

    python benchmarks/train_overhead.py --out runs/bench-train-overhead --label after [--repeat 3] [--env tests]
    python benchmarks/train_overhead.py --report

Every squeeze and every student (up to three per evaluate) is one TorchTrainer fit, and the test suite runs about
twenty of them, so their fixed cost is most of the integration tier's time, and what a user pays per student. Each
repeat times three fits on a local Ray cluster of 2 CPUs:

- ``student``: ``run_student`` on the condensed set of a tiny digits run (the quickstart config at the tests'
  budgets: 2 student epochs, a test after each), soft labels, one worker;
- ``squeeze``: ``run_squeeze`` at the same budgets (2 teacher epochs);
- ``bare``: a TorchTrainer of one worker whose loop does nothing (no datasets, no report): Ray Train's floor.

The phases come from timestamps taken where they happen (``time.time()`` on the driver around ``trainer.fit`` and
around the whole call; in the worker at the loop's start and end and around each ``ray.train.report``), all on this
machine's clock: ``driver_before_fit`` (datasets, config), ``start`` (fit() called to the loop running: controller,
placement group, worker, torch.distributed, dataset set-up), ``first_epoch`` (the loop's own set-up, epoch 0 and
its report), ``epoch`` (epoch 1 and its report), ``report`` (the median ``ray.train.report``, checkpoint
included), ``loop_tail`` (the last report to the loop's end), ``end`` (the loop's end to fit() returning: worker
group and controller shut down) and ``driver_after_fit`` (reading the result), which add up to ``total``.
``overhead`` is ``total`` less the loop's own time. Each fit also records the CPU seconds of every process of the
cluster during it, by Ray role (``measure.ProcessSampler``): steadier than wall seconds on a shared machine.

``--label`` names the code measured (``before``, ``after``): run the script from each checkout in turn (Ray puts
the driver's working directory first on its workers' path), e.g.

    cd /tmp/before && PYTHONPATH=$PWD python /path/to/benchmarks/train_overhead.py --out ... --label before

and alternate the labels, so both see the same load; runs accumulate in benchmarks/results/train_overhead.json
(``--result`` to write elsewhere), and the table in docs/benchmarks.md shows the medians per label (``--report``
rewrites it from the results file and measures nothing). ``--env tests`` starts the cluster as the measured
checkout's integration tests do (its tests/conftest.py's environment, tests/integration/conftest.py's ``ray.init``),
``user`` (the default) as ``srel-ray`` starts it. The tiny run that provides the set is made once in ``--out/prep``
and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import harness
import measure

TINY = ["teacher.epochs=2", "recover.iterations=4", "relabel.epochs=2", "evaluate.epochs=2",
        "evaluate.eval_interval=1", "resources.use_gpu=false", "tracking.enabled=false"]  # the tests' TINY
FITS = ("bare", "squeeze", "student")
PHASES = ("driver_before_fit", "start", "first_epoch", "epoch", "report", "loop_tail", "end", "driver_after_fit",
          "total", "overhead", "cpu_seconds", "load1_before")
STAMPS = "_bench_stamps"  # the loop config key naming the worker's stamp file
CLUSTERS = {"tests": "the integration tests start it", "user": "`srel-ray` starts it"}
BLOCK = harness.DocBlock("train-overhead", "## Ray Train's fixed cost per fit (issue 17)")


def stamp(path: str, event: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time()}) + "\n")


def stamped(loop):
    """``loop`` with the worker's timestamps: its start and end, and before and after every ``ray.train.report``."""
    def run(config: dict) -> None:
        import ray.train

        path = config[STAMPS]
        report = ray.train.report

        def stamped_report(*args, **kwargs):
            stamp(path, "report_begin")
            report(*args, **kwargs)
            stamp(path, "report_end")

        ray.train.report = stamped_report  # this worker process only; srel_ray calls it as ray.train.report
        stamp(path, "loop_start")
        loop(config)
        stamp(path, "loop_end")

    return run


@contextlib.contextmanager
def instrumented(trainer, path: str):
    """While open, ``trainer.fit`` (srel_ray.distributed.trainer's, as squeeze and evaluate call it) stamps around
    the fit and runs the stamped loop."""
    fit = trainer.fit

    def stamped_fit(loop, loop_config: dict, **kwargs):
        stamp(path, "fit_call")
        result = fit(stamped(loop), {**loop_config, STAMPS: path}, **kwargs)
        stamp(path, "fit_return")
        return result

    trainer.fit = stamped_fit
    try:
        yield
    finally:
        trainer.fit = fit


def empty_loop(config: dict) -> None:
    stamp(config[STAMPS], "loop_start")
    stamp(config[STAMPS], "loop_end")


def bare_fit(storage: str, name: str, path: str) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    stamp(path, "fit_call")
    TorchTrainer(empty_loop, train_loop_config={STAMPS: path},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name=name, storage_path=storage)).fit()
    stamp(path, "fit_return")


def phases(events: list[dict]) -> dict:
    """Seconds of each phase from one fit's stamps (call_start and call_end: the driver around the whole call)."""
    t = {}
    reports = []
    for e in events:
        if e["event"] == "report_begin":
            reports.append([e["t"], None])
        elif e["event"] == "report_end":
            reports[-1][1] = e["t"]
        else:
            t[e["event"]] = e["t"]
    p = {"driver_before_fit": t["fit_call"] - t["call_start"], "start": t["loop_start"] - t["fit_call"],
         "end": t["fit_return"] - t["loop_end"], "driver_after_fit": t["call_end"] - t["fit_return"],
         "total": t["call_end"] - t["call_start"], "reports": len(reports)}
    if reports:
        p["first_epoch"] = reports[0][1] - t["loop_start"]
        p["loop_tail"] = t["loop_end"] - reports[-1][1]
        p["report"] = statistics.median(end - begin for begin, end in reports)
    if len(reports) > 1:
        p["epoch"] = reports[1][1] - reports[0][1]
    p["overhead"] = p["total"] - (t["loop_end"] - t["loop_start"])
    return {k: round(v, 3) for k, v in p.items()}


def start_cluster(env: str) -> dict:
    if env == "user":
        return measure.start_ray()
    import ray

    for key, value in tests_environment(Path(harness.srel_ray_location()).parent).items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return {"srel_ray_imported_from": ray.get(ray.remote(harness.srel_ray_location).remote())}


def tests_environment(checkout: Path) -> dict[str, str]:
    """What the measured checkout's tests/conftest.py sets before its session cluster starts (tests/integration's
    ``ray_cluster`` fixture, whose ``ray.init`` ``start_cluster`` repeats)."""
    text = (checkout / "tests" / "conftest.py").read_text()
    return dict(re.findall(r'os\.environ\.setdefault\("(\w+)", "([^"]*)"\)', text))


def prepare(out: Path) -> Path:
    """The tiny digits run (squeeze, recover, relabel) whose condensed set the students train on; made once."""
    from srel_ray.cli import main, quickstart_config

    prep = out / "prep"
    if not (prep / "stages" / "relabel.json").exists():
        for command in ("squeeze", "recover", "relabel"):
            args = [command, "--config", str(quickstart_config("quickstart.yaml")), "--out", str(prep), "-q"]
            assert main(args + [a for o in TINY for a in ("--set", o)]) == 0, command
    return prep


def measure_fits(prep: Path, work: Path, repeat: int) -> list[dict]:
    from srel_ray.config import load_config
    from srel_ray.cli import quickstart_config
    from srel_ray.data.real import load_dataset
    from srel_ray.distributed import trainer
    from srel_ray.distributed.evaluate import run_student
    from srel_ray.distributed.squeeze import run_squeeze

    cfg = load_config(quickstart_config("quickstart.yaml"), TINY)
    data = load_dataset(cfg.data)
    storage = str(work / "ray")
    calls = {
        "bare": lambda name, path: bare_fit(storage, name, path),
        "squeeze": lambda name, path: run_squeeze(cfg, data, str(work / name), use_gpu=False),
        "student": lambda name, path: run_student(cfg, data, str(prep / "condensed"), hard=False, name=name,
                                                  storage=storage, use_gpu=False),
    }
    rows = []
    for r in range(repeat):
        for fit in FITS:
            path = str(work / f"{fit}-{r}.jsonl")
            busy = measure.busy_cores()
            load = measure.load1()
            sampler = measure.ProcessSampler()
            sampler.start()
            with instrumented(trainer, path):
                stamp(path, "call_start")
                calls[fit](f"{fit}-{r}", path)
                stamp(path, "call_end")
            processes = sampler.stop()
            events = [json.loads(line) for line in Path(path).read_text().splitlines()]
            row = {"fit": fit, "busy_cores_before": busy, "load1_before": load, "load1_after": measure.load1(),
                   **phases(events), "cpu_seconds": round(processes["cpu_seconds"], 2),
                   "cpu_by_role": measure.cpu_by_role([processes])}
            rows.append(row)
            print(f"  {fit:8s} total {row['total']:6.2f} s  start {row['start']:5.2f}  end {row['end']:5.2f}  "
                  f"overhead {row['overhead']:6.2f}  cpu {row['cpu_seconds']:6.2f} s  (busy before {busy}, load {load})"
                  f"\n    cpu by role: {row['cpu_by_role']}", flush=True)
    return rows


def summarise(runs: list[dict]) -> dict:
    """Median (min, max, n) of every phase per label and fit."""
    table: dict = {}
    for run in runs:
        for row in run["rows"]:
            table.setdefault(run["label"], {}).setdefault(row["fit"], []).append(row)
    return {label: {fit: {p: harness.median_range([r[p] for r in rows if p in r]) for p in PHASES
                          if any(p in r for r in rows)} for fit, rows in fits.items()}
            for label, fits in table.items()}


def markdown(results: dict) -> str:
    lines = ["Median seconds per fit (min-max over the repeats, n), each repeat a run of the script, before and after "
             "alternating; CPU: CPU seconds of all the cluster's processes during the fit; load: the 1-minute load "
             "average as the fit started (the machine was shared with other work throughout).", ""]
    columns = ("total", "start", "first_epoch", "epoch", "report", "end", "overhead", "cpu_seconds", "load1_before")
    for env in sorted({run["env"] for run in results["runs"]}):
        summary = summarise([run for run in results["runs"] if run["env"] == env])
        lines += [f"Cluster started as {CLUSTERS[env]} (`--env {env}`):", "",
                  "| label | fit | total | start | first epoch | epoch | report | end | overhead | CPU | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, fits in summary.items():
            for fit in FITS:
                lines.append(f"| {label} | {fit} | " + " | ".join(_cell(fits[fit].get(p)) for p in columns) + " |")
        lines.append("")
    commits = sorted({f"{run['label']}: `{harness.short_revision(run['code_revision'])}` "
                      f"({run['srel_ray_imported_from']})" for run in results["runs"]})
    return "\n".join(lines + ["Code measured: " + "; ".join(commits) + "."])


def code_revision(package: str) -> str:
    """HEAD of the checkout srel_ray was imported from (the code measured, which may not be this script's)."""
    return subprocess.run(["git", "-C", package, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f}, {stats['n']})"


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="work folder (the prepared tiny run is kept here)")
    parser.add_argument("--label", help="what code this is, e.g. before or after")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--env", choices=("user", "tests"), default="user")
    parser.add_argument("--result", type=Path, default=harness.RESULTS / "train_overhead.json")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: rewrite the docs table from the results file")
    args = parser.parse_args()
    earlier = json.loads(args.result.read_text())["runs"] if args.result.exists() else []
    if not args.report:
        if args.out is None or args.label is None:
            parser.error("--out and --label are needed to measure")
        earlier.append(measure_run(args.out.resolve(), args.label, args.env, args.repeat))
    results = {"benchmark": "train_overhead", "runs": earlier}
    results["summary"] = {env: summarise([r for r in earlier if r["env"] == env])
                          for env in sorted({r["env"] for r in earlier})}
    harness.publish(results, args.result, harness.DOCS, BLOCK, markdown)


def measure_run(out: Path, label: str, env: str, repeat: int) -> dict:
    """One invocation's fits, with what made them."""
    workers = start_cluster(env)
    prep = prepare(out)
    work = out / f"fits-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    began = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = measure_fits(prep, work, repeat)
    shutil.rmtree(work)
    return {"label": label, "env": env, "started": began, **harness.made_by(),
            "srel_ray_imported_from": workers["srel_ray_imported_from"],
            "code_revision": code_revision(workers["srel_ray_imported_from"]), "machine": harness.machine(),
            "rows": rows}


if __name__ == "__main__":
    main()
