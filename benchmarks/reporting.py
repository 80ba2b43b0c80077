"""Benchmark results: load the JSON files the scripts in benchmarks/ write, draw their figures (for
notebooks/benchmarks.ipynb) and write the throughput table (for benchmarks/report.py).

Plain JSON and matplotlib (the ``plots`` extra), no Ray, no torch and no srel_ray, so the notebook runs anywhere. It
lives beside the scripts, not in the library (the notebook puts benchmarks/ on its path). Every plotting
function takes one loaded result and an optional matplotlib Axes, and returns the Axes it drew on.
"""

from __future__ import annotations

import json
from pathlib import Path

from srel_ray.students import STUDENTS

# The files benchmarks/*.py write, by the name the notebook uses for them.
RESULT_FILES = {
    "quality": "quality_cifar10.json",
    "recover": "recover_throughput.json",
    "relabel": "relabel_throughput.json",
    "growth": "cost_growth.json",
    "ladder": "ladder_cifar10.json",
}
STAGES = ("squeeze", "recover", "relabel", "evaluate")


def load_results(folder: str | Path) -> dict[str, dict]:
    """The results present in ``folder``, by name (``quality``, ``recover``, ``relabel``, ``growth``, ``ladder``)."""
    folder = Path(folder)
    return {name: json.loads((folder / file).read_text()) for name, file in RESULT_FILES.items()
            if (folder / file).is_file()}


def describe(results: dict[str, dict]) -> str:
    """One line per result: which file, from which revision and command."""
    if not results:
        return "no benchmark results found"
    return "\n".join(f"{name:8s} {RESULT_FILES[name]}: revision {r.get('git_revision', '?')[:12]}, "
                     f"command: {r.get('command', '?')}" for name, r in results.items())


# ------------------------------------------------------------------------------------------- quality


def accuracy_by_ipc(quality: dict) -> dict[str, dict[str, list[float]]]:
    """Per student: IPCs (ascending) with the mean and standard deviation of top-1 over seeds."""
    rows = sorted(quality["summary"], key=lambda row: row["ipc"])
    return {student: {"ipc": [row["ipc"] for row in rows if student in row["top1"]],
                      "mean": [row["top1"][student]["mean"] for row in rows if student in row["top1"]],
                      "std": [row["top1"][student]["std"] for row in rows if student in row["top1"]]}
            for student in STUDENTS}


def plot_accuracy_vs_ipc(quality: dict, ax=None):
    """Top-1 against IPC for the condensed set and both random-real baselines (mean +- std over seeds), with the
    student trained on the full data as the ceiling."""
    ax = _axes(ax)
    for student, series in accuracy_by_ipc(quality).items():
        if series["ipc"]:
            ax.errorbar(series["ipc"], [100 * m for m in series["mean"]], yerr=[100 * s for s in series["std"]],
                        marker="o", capsize=3, label=STUDENTS[student].label)
    if quality.get("ceiling_top1") is not None:
        ax.axhline(100 * quality["ceiling_top1"], color="black", linestyle="--", label="full data (ceiling)")
    ipcs = sorted({row["ipc"] for row in quality["summary"]})
    ax.set_xscale("log")
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test top-1 (%)")
    teacher = quality.get("teacher", {})
    ax.set_title(f"CIFAR-10, teacher {teacher.get('arch', '?')} ({100 * teacher.get('test_top1', float('nan')):.1f} %)")
    ax.legend()
    return ax


def stage_seconds(quality: dict) -> dict[int, dict[str, float]]:
    """Mean seconds of each stage per IPC, over the runs (seeds) at that IPC."""
    by_ipc: dict[int, list[dict]] = {}
    for run in quality["runs"]:
        by_ipc.setdefault(run["ipc"], []).append(run["seconds"])
    return {ipc: {stage: sum(r.get(stage, 0.0) for r in runs) / len(runs) for stage in STAGES}
            for ipc, runs in sorted(by_ipc.items())}


def plot_stage_times(quality: dict, ax=None):
    """Stacked bars: minutes per stage at each IPC."""
    ax = _axes(ax)
    seconds = stage_seconds(quality)
    labels = [f"IPC {ipc}" for ipc in seconds]
    bottom = [0.0] * len(seconds)
    for stage in STAGES:
        minutes = [s[stage] / 60 for s in seconds.values()]
        ax.bar(labels, minutes, bottom=bottom, label=stage)
        bottom = [b + m for b, m in zip(bottom, minutes)]
    ax.set_ylabel("minutes (mean over seeds)")
    ax.set_title("time per stage")
    ax.legend()
    return ax


# ------------------------------------------------------------------------------------------- method ladder


def ladder_rows(ladder: dict) -> dict[int, list[dict]]:
    """Per IPC, the ladder steps of the newest teacher measured at that IPC (runs of different teachers are never
    mixed): step name, condensed and baseline (random real + teacher labels under the step's student protocol)
    top-1 as {mean, std, n}."""
    newest: dict[int, dict] = {}
    for group in ladder["summary"]:  # benchmarks/ladder.py orders the groups of an IPC by date
        newest[group["ipc"]] = group
    return {ipc: [{"step": s["step"], "condensed": s["condensed"], "baseline": s["random_real_soft"]}
                  for s in newest[ipc]["steps"]] for ipc in sorted(newest)}


def plot_ladder(ladder: dict, axes=None):
    """One panel per IPC: each step's condensed set beside its own random-real baseline (mean +- std over seeds),
    steps top to bottom in ladder order."""
    import matplotlib.pyplot as plt

    rows = ladder_rows(ladder)
    if axes is None:
        _, axes = plt.subplots(1, max(1, len(rows)), figsize=(6 * max(1, len(rows)), 4), squeeze=False)
        axes = list(axes[0])
    height = 0.4
    for ax, (ipc, steps) in zip(axes, rows.items()):
        y = list(range(len(steps)))
        for offset, key, label in ((-height / 2, "condensed", "condensed"),
                                   (height / 2, "baseline", "random real, teacher labels (same student)")):
            ax.barh([i + offset for i in y], [100 * s[key]["mean"] for s in steps], height=height,
                    xerr=[100 * s[key]["std"] for s in steps], capsize=2, label=label)
        ax.set_yticks(y, [s["step"] for s in steps])
        ax.invert_yaxis()
        ax.set_xlabel("test top-1 (%)")
        ax.set_title(f"method ladder, IPC {ipc}")
        ax.legend(loc="lower right", fontsize="small")
    return axes


# ------------------------------------------------------------------------------------------- throughput


def throughput_rows(recover: dict | None, relabel: dict | None) -> list[tuple[str, str, float]]:
    """(stage, variant, median rate) for every measured variant."""
    rows = []
    if recover:
        rows += [("recover", k, v) for k, v in recover["summary"]["image_iterations_per_second"].items()]
    if relabel:
        rows += [("relabel", k, v) for k, v in relabel["summary"]["views_per_second"].items()]
    return rows


def plot_throughput(recover: dict | None, relabel: dict | None, axes=None):
    """Bars of the median rate of each variant: recovery in image-iterations/s, relabel in views/s."""
    import matplotlib.pyplot as plt

    rows = throughput_rows(recover, relabel)
    stages = [s for s in ("recover", "relabel") if any(r[0] == s for r in rows)]
    if axes is None:
        _, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 3.5), squeeze=False)
        axes = list(axes[0])
    units = {"recover": "image-iterations / s", "relabel": "views / s"}
    for ax, stage in zip(axes, stages):
        names = [r[1] for r in rows if r[0] == stage]
        ax.bar(names, [r[2] for r in rows if r[0] == stage])
        ax.set_ylabel(units[stage])
        ax.set_title(f"{stage} throughput (median)")
        ax.tick_params(axis="x", labelrotation=20)
    return axes


def plot_cost_growth(growth: dict, axes=None):
    """Seconds per stage against the number of images, growing IPC and growing the class count: wall seconds
    (solid) and CPU seconds of all the run's processes (dashed; what the work costs on a busy machine)."""
    import matplotlib.pyplot as plt

    g = growth["summary"]["growth"]
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5), squeeze=False)
        axes = list(axes[0])
    for ax, stage in zip(axes, ("recover", "relabel")):
        for axis, marker in (("ipc", "o"), ("classes", "s")):
            points = g[axis][stage]["points"]
            images = [p["images"] for p in points]
            (line,) = ax.plot(images, [p["median_seconds"] for p in points], marker=marker, label=f"growing {axis}")
            if all("median_cpu_seconds" in p for p in points):
                ax.plot(images, [p["median_cpu_seconds"] for p in points], marker=marker, linestyle="--",
                        color=line.get_color(), label=f"growing {axis} (CPU s)")
        ax.set_xlabel("images in the set")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{stage}: cost growth")
        ax.legend()
    return axes


# ------------------------------------------------------------------------------------------- tables


def throughput_markdown(recover: dict | None, relabel: dict | None, growth: dict | None) -> str:
    """The throughput and cost section of docs/benchmarks.md, from the three results (each may be missing)."""

    def med(s: dict, scale: float = 1.0, fmt: str = ".2f") -> str:
        return f"{scale * s['median']:{fmt}} ({scale * s['min']:{fmt}} to {scale * s['max']:{fmt}}, n={s['n']})"

    lines = []
    if recover:
        s, st = recover["summary"], recover["setup"]
        rate = s["image_iterations_per_second"]
        t = st["teacher"]
        lines += [
            "### Recovery: bare PyTorch loop against srel_ray's actor pool", "",
            f"`{recover['command']}` at git `{recover['git_revision'][:12]}` ({recover['finished'][:10]}); "
            f"teacher {t['arch']} width {t['width']} depth {t['depth']} ({t['input'][1]} px, "
            f"{t['num_classes']} classes), batches of {st['batch']} images, {st['iterations']} iterations per unit, "
            f"{st['units']} units ({st['image_iterations_per_run']:,} image-iterations per run), one torch thread per "
            f"worker, {st['repeats']} interleaved repeats. Every run starts cold: the bare loop in a new process "
            "(spawn, torch import, teacher load, PNGs), srel_ray with new actors (start, teacher load, PNGs).", "",
            "| variant | image-iterations / s (median) |", "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in rate.items()], "",
            f"- Overhead of srel_ray with 1 actor over the bare loop, whole run: {med(s['overhead_1_actor_over_bare'], 100)} % "
            f"(target < 5 %). Steady state (a unit after a process's first): "
            f"{s['warm_unit_seconds']['srel_ray_1_actor']['median']:.2f} s per unit in the actor against "
            f"{s['warm_unit_seconds']['bare']['median']:.2f} s bare "
            f"({100 * s['steady_state_overhead_1_actor_over_bare']:+.1f} %); fixed cost per run (process or actor "
            f"start, teacher load, first-unit warm-up): {s['fixed_seconds_per_run']['bare']['median']:.2f} s bare, "
            f"{s['fixed_seconds_per_run']['srel_ray_1_actor']['median']:.2f} s with 1 actor.",
            f"- Speed-up of 2 actors over 1: {med(s['speedup_2_actors_over_1'])} (target > 1.8) on 2 cores that also "
            "run the driver and Ray's daemons" + (
                f"; two bare loops in two processes without Ray reach {med(s['speedup_bare_2_processes_over_bare'])} "
                "over one, the machine's own ceiling." if "speedup_bare_2_processes_over_bare" in s else "."),
            f"- Outputs identical (bare, 1 actor, 2 actors): {s['outputs_identical_bare_1_actor_2_actors']}.",
            f"- Compute against the floor: the teacher's forward + backward is {s['flops_per_image_iteration'] / 1e6:.0f} "
            f"MFLOP per image-iteration; the bare loop achieves {s['achieved_gflops_bare']:.1f} GFLOP/s against a "
            f"1024^3 fp32 matrix multiply at {s['gemm_gflops_1_thread']['median']:.1f} GFLOP/s on one thread: "
            f"{100 * s['compute_fraction_of_gemm_rate']:.0f} % of the machine's matrix-multiply rate.", ""]
    if relabel:
        s, st = relabel["summary"], relabel["setup"]
        small, large = st["epochs"]
        lines += [
            "### Relabel: bare loop against the Ray Data pipeline", "",
            f"`{relabel['command']}` at git `{relabel['git_revision'][:12]}` ({relabel['finished'][:10]}); "
            f"{st['set']} ({st['images']} images), {small} and {large} label epochs, {st['views_per_epoch']} view per "
            f"image per epoch, teacher batches of {st['batch_size']}, {st['logits_dtype']} logits, one teacher thread "
            f"and {st['relabel_actors']} labeling actor, {st['repeats']} interleaved repeats.", "",
            "| variant | views / s (median) |", "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in s["views_per_second"].items()], "",
            f"- Per view (the slope between the two epoch counts): {s['ms_per_view_marginal']['bare']['median']:.2f} ms "
            f"bare, {s['ms_per_view_marginal']['srel_ray']['median']:.2f} ms srel_ray: marginal overhead "
            f"{med(s['marginal_overhead_per_view'], 100)} % (target < 10 %).",
            f"- Fixed cost (the intercept): {s['fixed_seconds']['bare']['median']:.2f} s bare, "
            f"{s['fixed_seconds']['srel_ray']['median']:.2f} s srel_ray (Ray Data plan, actor start, teacher load); "
            f"whole-run overhead {100 * s[f'overhead_{small}_epochs']['median']:.0f} % at {small} epochs, "
            f"{100 * s[f'overhead_{large}_epochs']['median']:.0f} % at {large}.",
            f"- Labels identical (views and logits): {s['agreement_bare_vs_srel_ray']['views_identical']}, max "
            f"|logit difference| {s['agreement_bare_vs_srel_ray']['max_abs_logit_difference']:g}.", ""]
    if growth:
        s, st = growth["summary"], growth["setup"]
        lines += ["### How cost grows", "",
                  f"`{growth['command']}` at git `{growth['git_revision'][:12]}` ({growth['finished'][:10]}); "
                  f"{st['recover_iterations']} recovery iterations per unit of {st['unit']}, {st['label_epochs']} "
                  f"label epochs, {st['actors']} actor of {st['threads_per_worker']} thread, {st['repeats']} repeats; "
                  "median seconds (CPU seconds of all the run's processes in brackets).", "",
                  "| stage | growing | points (images: seconds) | seconds per image | fixed seconds | r^2 |",
                  "|---|---|---|---|---|---|"]
        for stage in ("recover", "relabel"):
            for axis in ("ipc", "classes"):
                g = s["growth"][axis][stage]
                pts = ", ".join(f"{p['images']}: {p['median_seconds']:.1f} ({p['median_cpu_seconds']:.1f})"
                                if "median_cpu_seconds" in p else f"{p['images']}: {p['median_seconds']:.1f}"
                                for p in g["points"])
                lines.append(f"| {stage} | {axis} | {pts} | {g['fit']['seconds_per_image']:.3f} | "
                             f"{g['fit']['fixed_seconds']:.1f} | {g['fit']['r2']:.3f} |")
        peaks = s["peak_rss_mb"]
        lines += ["", "Peak resident memory (MB, largest over all points): " + "; ".join(
            f"{stage}: " + ", ".join(f"{role} {mb:.0f}" for role, mb in roles.items() if mb is not None)
            for stage, roles in peaks.items()) + ".",
            "Soft-label bytes per image per epoch: " + ", ".join(
                f"{k} {v:.1f}" for k, v in s["label_bytes_per_image_per_epoch"].items()) + ".", ""]
    return "\n".join(lines).rstrip()


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))[1]
