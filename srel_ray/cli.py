"""``srel-ray``: one subcommand per stage, ``run`` for all of them, ``quickstart`` for the embedded demo, ``tune``,
two studies of a finished run (``continual DIR``, ``tsne DIR``), and two that only look: ``config`` (the resolved
config, with where each value came from) and ``show DIR``.

Exit codes: 0 success; 2 a usage error (argparse: unknown option, missing argument); 3 bad config, data or output
folder (one line naming the problem, no traceback); 1 a crash (a bug or an environment failure: a traceback).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import srel_ray
from srel_ray.config import load_config
from srel_ray.errors import SrelError
from srel_ray.progress import Console, setup_logging

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_BAD_INPUT = 0, 1, 2, 3

COMMANDS = {
    "squeeze": ("squeeze",),
    "recover": ("recover",),
    "relabel": ("relabel",),
    "evaluate": ("evaluate",),
    "run": ("squeeze", "recover", "relabel", "evaluate"),
    "quickstart": ("squeeze", "recover", "relabel", "evaluate"),
}


def quickstart_config(name: str = "quickstart.yaml") -> Path:
    """A packaged config: ``quickstart.yaml`` (SRe2L on digits, the tests' base) or ``QUICKSTART``."""
    return Path(str(resources.files("srel_ray") / "configs" / name))


QUICKSTART = "quickstart_edc.yaml"  # what `srel-ray quickstart` runs: the method that does best on digits


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default="normal",
                       help="also show every log line, Ray's worker output and Ray Data's progress bars")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                       help="show only errors and the final table")


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", type=Path, required=required,
                   help="YAML config" + ("" if required else f" (default: the packaged {QUICKSTART})"))


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field; repeatable")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="srel-ray", description="Dataset condensation (SRe2L) on Ray. Exit codes: 0 "
                                "success, 2 usage error, 3 bad config, data or output folder, 1 crash.")
    p.add_argument("--version", action="version", version=f"srel-ray {srel_ray.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, stages in COMMANDS.items():
        s = sub.add_parser(name, help=f"run {' -> '.join(stages)}" if name != "quickstart"
                           else "all four stages on scikit-learn's digits, offline, in minutes")
        _add_config(s, required=name != "quickstart")
        s.add_argument("--out", required=True,
                       help="output folder or fsspec URL reachable from every Ray worker (re-running resumes it)")
        _add_overrides(s)
        _add_verbosity(s)
    t = sub.add_parser("tune", help="Ray Tune search over recover/relabel/evaluate settings (the config's tune: "
                       "section), one shared teacher, every trial tracked in MLflow")
    _add_config(t)
    t.add_argument("--out", type=Path, required=True, help="search folder (new or empty, unless --resume)")
    _add_overrides(t)
    t.add_argument("--resume", action="store_true", help="continue the search in --out without repeating "
                   "finished trials")
    _add_verbosity(t)
    c = sub.add_parser("config", help="print the fully resolved config (method preset applied) and where each "
                       "value came from: default, preset, file or --set")
    _add_config(c, required=False)
    _add_overrides(c)
    verify = sub.add_parser("verify", help="re-read every image and label file of a run's sets (or of one set) and "
                            "check it against its marker's checksum, and each marker against the manifest")
    verify.add_argument("out", metavar="DIR", help="a run's output folder, or a set's folder")
    show = sub.add_parser("show", help="a run's summary table, what each stage did, where its pictures are")
    show.add_argument("out", metavar="DIR", help="a run's output folder (the --out of srel-ray run)")
    continual = sub.add_parser("continual", help="class-incremental learning on a finished run (GDumb-style): the "
                               "condensed set as the memory against random real images of the same size, in "
                               "continual.steps steps (default 5 and 10), students on Ray; into DIR/continual/")
    tsne = sub.add_parser("tsne", help="t-SNE of the teacher's features of condensed and real images of a few "
                          "classes of a finished run, in this process; into DIR/tsne/")
    for study, sections in ((continual, "continual.*, evaluate.*, resources.*, tracking.*"),
                            (tsne, "tsne.*, tracking.*")):
        study.add_argument("out", metavar="DIR", help="a finished run's output folder (the --out of srel-ray run)")
        study.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help=f"override one setting of {sections}; repeatable")
        _add_verbosity(study)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a usage error exits with 2 here
    verbosity = getattr(args, "verbosity", "normal")
    setup_logging(verbosity)
    try:
        return _dispatch(args, Console(verbosity))
    except SrelError as e:
        print(f"srel-ray {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "show":
        from srel_ray.inspection import show_run

        print(show_run(args.out))
        return EXIT_OK
    if args.command == "verify":
        from srel_ray.inspection import verify_run

        print(verify_run(args.out))
        return EXIT_OK
    if args.command == "config":
        from srel_ray.inspection import config_sources, format_config

        print(format_config(*config_sources(args.config or quickstart_config(QUICKSTART), args.overrides)))
        return EXIT_OK
    if args.command == "tune":
        return _tune(args)
    if args.command in ("continual", "tsne"):
        return _study(args, console)
    from srel_ray.pipeline import run_stages
    from srel_ray.storage.layout import RunDir
    from srel_ray.summary import format_summary

    cfg = load_config(args.config or quickstart_config(QUICKSTART), args.overrides)
    summary = run_stages(cfg, args.out, COMMANDS[args.command], args.command, console)
    out = RunDir.at(args.out).out
    if summary:
        print("\n" + format_summary(summary))
        print(f"\noutputs: {out} (summary.json, condensed/, accuracy_curves.png, logs/; srel-ray show {out})")
    else:
        print(f"\n{args.command} finished; outputs in {out}")
    return EXIT_OK


def _study(args: argparse.Namespace, console: Console) -> int:
    if args.command == "continual":
        from srel_ray.pipeline import run_continual_study
        from srel_ray.studies.continual import format_continual

        results, written = run_continual_study(args.out, args.overrides, console)
        print("\n" + format_continual(results))
    else:
        from srel_ray.studies.feature_space import run_feature_space_study

        points, written = run_feature_space_study(args.out, args.overrides)
        print(f"t-SNE of the teacher's features: {len(points['points'])} points, classes "
              f"{', '.join(points['class_names'])}")
    print(f"\noutputs: {', '.join(written)}")
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from srel_ray.tuning import format_trials, run_search

    report = run_search(load_config(args.config, args.overrides), args.out, resume=args.resume,
                        verbosity=args.verbosity)
    out = args.out.resolve()
    print("\n" + format_trials(report))
    print(f"\noutputs: {out} (best.yaml: srel-ray run --config {out / 'best.yaml'} --out NEW_DIR; best.json, "
          "trials.csv, trials/, sets/)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
