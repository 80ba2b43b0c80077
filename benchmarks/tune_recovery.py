"""Choose edc's recovery budget and starting images on a validation split instead of the test set: one
``srel-ray tune`` grid search per IPC over ``recover.iterations`` x ``recover.init`` for the ladder's ``edc`` row,
under the quality protocol (its config, its teacher, seed 0).

    python benchmarks/tune_recovery.py --out /work/runs/bench-quality --searches /work/runs/tune-edc --ipc 10 50 \\
        --run-set recover.iterations=500 --run-set relabel.epochs=200 --run-set evaluate.epochs=200

Every trial recovers, relabels and trains the protocol's student to its last epoch (no early stopping) and is
scored on ``data.val_fraction`` (10 %) of each training class, held out: the condensed sets start from the other
90 %, and no trial reads the test split. The search's best trial is scored once on test (``best.json``). The
table puts each searched recovery beside the ladder row that recovers the same way, whose test results
(``--ladder-results``, every seed against its own random-real baseline) were measured on the whole training split.

``--grid FIELD=[...]`` adds further recover/relabel/evaluate fields to the grid (e.g. RDED's selection).

A grid holding ``recover.iterations`` 0 with ``recover.init`` real has the random-real baseline among its trials
(the starting images relabelled, no optimisation); ``--baseline-searches`` reads that trial from an earlier search
instead, after checking it is exactly the baseline this search would run. Every trial is then also given as its
margin over that baseline, and with several IPCs the one recipe for all of them is chosen as the one whose smallest
margin is the largest.

A search folder ``SEARCHES/ipc<IPC>`` whose ``best.json`` exists is read, not run again (after a check that it holds
this exact search); an unfinished one is resumed. Results go to ``--results`` and between the ``--block`` markers of
``--docs``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import harness
import yaml
from ladder_steps import LADDER

from srel_ray.config import from_dict, load_config, to_dict
from srel_ray.search_space import apply_params
from srel_ray.tuning import run_search

HEADING = "## Choosing edc's recovery on a validation split (CIFAR-10)"
BASELINE = (0, "real")  # (recover.iterations, recover.init) of the trial that is random real + teacher labels
STEP = "edc"  # the ladder row whose recovery is searched
TUNED = ("recover.iterations", "recover.init")


def ladder_overrides(args, ipc: int, step: str, teacher_pt: Path, tracking: str) -> list[str]:
    """The overrides benchmarks/ladder.py applies for ``step`` (seed 0), as it builds them."""
    return args.run_overrides + [tracking, "seed=0", f"recover.ipc={ipc}", "teacher.source=checkpoint",
                                 f"teacher.checkpoint={teacher_pt}", *dict(LADDER)[step]]


def extra_grid(args) -> dict[str, list]:
    """``--grid FIELD=[v1, v2]`` as {FIELD: [v1, v2]} (YAML values)."""
    out = {}
    for item in args.grid:
        name, sep, values = item.partition("=")
        values = yaml.safe_load(values) if sep else None
        if not isinstance(values, list) or not values:
            raise SystemExit(f"tune_recovery: --grid {item!r}: want FIELD=[value, ...], "
                             "e.g. recover.rded_pool=[100, 300]")
        out[name] = values
    return out


def search_config(args, ipc: int, teacher_pt: Path, tracking: str):
    space = {name: {"grid": values} for name, values in zip(TUNED, (args.iterations, args.inits))}
    space.update({name: {"grid": values} for name, values in extra_grid(args).items()})
    return load_config(args.config, ladder_overrides(args, ipc, STEP, teacher_pt, tracking) + [
        "evaluate.baselines=false", f"tune.space={json.dumps(space)}", "tune.asha=false",
        f"tune.score_interval={args.score_interval}"])


def comparable(cfg) -> dict:
    d = cfg.identity()
    d["evaluate"].pop("baselines")  # the ladder trains them in one run per protocol; trials train none
    return d


def run_or_read(cfg, folder: Path, made_by: dict) -> None:
    """Run (or resume) the search in ``folder``, unless it is finished; ``folder/made_by.json`` says which command
    and revision ran it."""
    if (folder / "best.json").exists():
        saved = load_config(folder / "config.yaml")
        if saved.identity() != cfg.identity() or to_dict(saved.tune) != to_dict(cfg.tune):
            raise SystemExit(f"tune_recovery: {folder} holds another search; choose another --searches folder")
        logging.info("tune_recovery: %s is finished, reading it", folder)
        return
    run_search(cfg, folder, resume=(folder / "config.yaml").exists())
    if not (folder / "made_by.json").exists():  # after the search: run_search wants a new folder to be empty
        (folder / "made_by.json").write_text(json.dumps(made_by, indent=1))


def ladder_row(ipc: int, trial_cfg, steps: dict[str, dict], teacher_sha: str, ladder: dict) -> dict | None:
    """The ladder's test results of the row that runs exactly ``trial_cfg`` (None if no row does); ``steps``: each
    ladder row's comparable config."""
    for step, config in steps.items():
        if config == comparable(trial_cfg):
            runs = [r for r in ladder["runs"] if r["ipc"] == ipc and r["step"] == step
                    and r["teacher"]["sha256"] == teacher_sha]
            if runs:
                gaps = [r["condensed"] - r["random_real_soft"] for r in runs]
                return {"step": step, "n": len(runs), "condensed": statistics.mean(r["condensed"] for r in runs),
                        "condensed_std": statistics.stdev(r["condensed"] for r in runs) if len(runs) > 1 else 0.0,
                        "baseline": statistics.mean(r["random_real_soft"] for r in runs),
                        "gap": statistics.mean(gaps), "gap_min": min(gaps), "gap_max": max(gaps)}
    return None


def field(cfg, name: str):
    section, key = name.split(".", 1)
    value = getattr(getattr(cfg, section), key)
    return list(value) if isinstance(value, tuple) else value


def baseline_from(args, ipc: int, cfg) -> float:
    """The validation top-1 of the baseline trial of ``--baseline-searches``'s IPC search, if it is exactly the trial
    this search's grid would run as its baseline; else SystemExit."""
    want = comparable(apply_params(cfg, dict(zip(TUNED, BASELINE))))
    for path in sorted((args.baseline_searches.resolve() / f"ipc{ipc}" / "trials").glob("*/trial.json")):
        record = json.loads(path.read_text())
        if comparable(from_dict(record["config"])) == want:
            return record["final"]["val_top1"]
    raise SystemExit(f"tune_recovery: no trial under {args.baseline_searches}/ipc{ipc} is this search's baseline "
                     f"({dict(zip(TUNED, BASELINE))} on the same config)")


def search_result(args, ipc: int, folder: Path, cfg, teacher_pt: Path, tracking: str, ladder: dict) -> dict:
    best = json.loads((folder / "best.json").read_text())
    steps = {step: comparable(load_config(args.config, ladder_overrides(args, ipc, step, teacher_pt, tracking)))
             for step, _ in LADDER}
    teacher_sha = harness.file_sha256(teacher_pt)
    extra = list(extra_grid(args))
    trials = []
    for path in sorted((folder / "trials").glob("*/trial.json")):
        record = json.loads(path.read_text())
        trial_cfg = from_dict(record["config"])
        trials.append({"trial": record["trial"], "iterations": trial_cfg.recover.iterations,
                       "init": trial_cfg.recover.init,
                       "extra": {name: field(trial_cfg, name) for name in extra},
                       "val_top1": record["final"]["val_top1"],
                       "epochs": record["history"][-1]["epoch"] + 1, "seconds": record["seconds"],
                       "ladder": ladder_row(ipc, trial_cfg, steps, teacher_sha, ladder)})
    trials.sort(key=lambda t: (t["iterations"], t["init"], json.dumps(t["extra"])))
    baseline = next((t["val_top1"] for t in trials if (t["iterations"], t["init"]) == BASELINE), None)
    if baseline is None and args.baseline_searches:
        baseline = baseline_from(args, ipc, cfg)
    for t in trials:
        t["val_margin"] = None if baseline is None else t["val_top1"] - baseline
    made_by = folder / "made_by.json"
    return {"ipc": ipc, "folder": str(folder),
            "validation_images": json.loads((folder / "search.json").read_text())["validation_images"],
            "made_by": json.loads(made_by.read_text()) if made_by.exists() else None,
            "baseline_val_top1": baseline, "trials": trials,
            "best": {"trial": best["trial"], "values": best["values"], "test": best["test"]}}


def one_recipe(searches: list[dict]) -> dict | None:
    """The searched values (iterations, init and any --grid fields) whose smallest validation margin over the IPCs'
    baselines is the largest (None without a baseline in every search, or with a single IPC)."""
    if len(searches) < 2 or any(t["val_margin"] is None for s in searches for t in s["trials"]):
        return None
    margins: dict[tuple, list[float]] = {}
    for search in searches:
        for t in search["trials"]:
            margins.setdefault((t["iterations"], t["init"], json.dumps(t.get("extra", {}))), []).append(
                t["val_margin"])
    recipes = [{"iterations": k[0], "init": k[1], "extra": json.loads(k[2]), "min_margin": min(v), "margins": v}
               for k, v in margins.items() if len(v) == len(searches) and k[:2] != BASELINE]
    return max(recipes, key=lambda r: r["min_margin"]) if recipes else None


def markdown(results: dict) -> str:
    extra = list(results["searches"][0]["trials"][0].get("extra", {})) if results["searches"] else []
    searched = " x ".join(f"`{name}`" for name in [*TUNED, *extra])
    lines = [f"`srel-ray tune` grid searches of the `{STEP}` ladder row's {searched} "
             "(seed 0; every trial trains the protocol's student to its last epoch, no early stopping), each trial "
             "scored on held-out training images (10 % of each class); its condensed set starts from the other "
             "90 %. The right-hand column is the ladder row that recovers the same way, measured on the test split "
             "with every seed paired with its own random-real baseline (that row's sets start from the whole "
             "training split).", "",
             f"Table made by `{results['command']}` at git `{harness.short_revision(results['git_revision'])}`, "
             f"{results['date']}.",
             *(f"IPC {s['ipc']} search run by `{s['made_by']['command']}` at git "
               f"`{harness.short_revision(s['made_by']['git_revision'])}`, "
               f"{s['made_by']['date']}." for s in results["searches"] if s["made_by"]),
             *([f"The baseline (0 iterations from random real images, the config otherwise the same) is that trial "
                f"of the searches in `{results['baseline_searches']}`: "
                + ", ".join(f"IPC {s['ipc']} {100 * s['baseline_val_top1']:.2f} %" for s in results["searches"])
                + "."] if results.get("baseline_searches") else []), "",
             "| IPC | recover.iterations | recover.init | " + "".join(f"{name} | " for name in extra)
             + "validation top-1 | minus the baseline trial | seconds (recover + relabel + student) | "
             "ladder row: test top-1 vs random real + teacher labels |",
             "|---|---|---|" + "---|" * len(extra) + "---|---|---|---|"]
    for search in results["searches"]:
        best = search["best"]["trial"]
        for t in search["trials"]:
            val = f"{100 * t['val_top1']:.2f}" + (" **(chosen)**" if t["trial"] == best else "")
            margin = ("baseline" if (t["iterations"], t["init"]) == BASELINE else
                      "" if t["val_margin"] is None else f"{100 * t['val_margin']:+.2f}")
            s = t["seconds"]
            row = t["ladder"]
            test = (f"`{row['step']}`: {100 * row['condensed']:.2f} ± {100 * row['condensed_std']:.2f} vs "
                    f"{100 * row['baseline']:.2f} ({100 * row['gap']:+.2f}; seeds {100 * row['gap_min']:+.2f} to "
                    f"{100 * row['gap_max']:+.2f}; n={row['n']})") if row else "no ladder row"
            cells = "".join(f"{t['extra'][name]} | " for name in extra)
            lines.append(f"| {search['ipc']} | {t['iterations']} | {t['init']} | {cells}{val} | {margin} | "
                         f"{s['recover']:.0f} + "
                         f"{s['relabel']:.0f} + {s['student']:.0f} | {test} |")
    lines.append("")
    for search in results["searches"]:
        b = search["best"]
        lines.append(f"- IPC {search['ipc']}: chosen {', '.join(f'{k}={v}' for k, v in b['values'].items())} on "
                     f"{search['validation_images']} validation images; that trial's student on the test split "
                     f"(scored once, after the search): {100 * b['test']['test_top1']:.2f} %.")
    if results.get("one_recipe"):
        r = results["one_recipe"]
        lines.append(f"- One recipe for IPC {', '.join(str(s['ipc']) for s in results['searches'])} (largest smallest "
                     f"margin over the baseline trial): recover.iterations={r['iterations']}, recover.init={r['init']}"
                     + "".join(f", {k}={v}" for k, v in r.get("extra", {}).items())
                     + f", margins {', '.join(f'{100 * m:+.2f}' for m in r['margins'])}.")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the quality benchmark's --out (its teacher is reused)")
    harness.add_teacher_option(p)
    p.add_argument("--searches", type=Path, required=True, help="one search folder per IPC is made here")
    p.add_argument("--config", type=Path, default=harness.QUALITY_CONFIG)
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--iterations", type=int, nargs="+", default=[75, 500])
    p.add_argument("--inits", nargs="+", default=["real", "rded"])
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=[V1, V2]",
                   help="a further field of the grid, e.g. 'recover.rded_pool=[100, 300]' (repeatable)")
    p.add_argument("--baseline-searches", type=Path,
                   help="read the baseline trial (0 iterations from random real images) from this earlier search")
    p.add_argument("--score-interval", type=int, default=1,
                   help="tune.score_interval: student epochs between validation scores (200: only the last)")
    p.add_argument("--run-set", dest="run_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--ladder-results", type=Path, default=harness.RESULTS / "ladder_cifar10.json")
    p.add_argument("--results", type=Path, default=harness.RESULTS / "tune_recovery_cifar10.json")
    p.add_argument("--docs", type=Path, default=harness.DOCS)
    p.add_argument("--block", default="tune-recovery",
                   help="the docs block's marker name (<!-- BLOCK:begin -->): one per --results file")
    p.add_argument("--heading", default=HEADING, help="the docs section the block is appended under when absent")
    args = p.parse_args()
    out = args.out.resolve()
    teacher_pt = harness.teacher_checkpoint(args, "tune_recovery")
    tracking = f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"
    configs = {ipc: search_config(args, ipc, teacher_pt, tracking) for ipc in args.ipc}  # bad input fails first
    ladder = json.loads(args.ladder_results.read_text())
    made_by = harness.made_by()
    searches = []
    for ipc, cfg in configs.items():
        folder = args.searches.resolve() / f"ipc{ipc}"
        run_or_read(cfg, folder, made_by)
        searches.append(search_result(args, ipc, folder, cfg, teacher_pt, tracking, ladder))
    results = {**made_by, "searches": searches, "one_recipe": one_recipe(searches),
               "baseline_searches": str(args.baseline_searches) if args.baseline_searches else None}
    harness.publish(results, args.results, args.docs, harness.DocBlock(args.block, args.heading), markdown)


if __name__ == "__main__":
    main()
