"""Write the throughput and cost section of docs/benchmarks.md from the JSON results in benchmarks/results/.

    python benchmarks/report.py [--results benchmarks/results] [--docs docs/benchmarks.md]

The quality and ladder sections are written by their own scripts after every run; the throughput scripts only
write JSON, so this puts their numbers into the docs (between the throughput markers) without copying by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness
from reporting import load_results, throughput_markdown

DOC_BLOCK = harness.DocBlock("throughput-benchmark",
                             "## Throughput and cost: srel_ray against a bare PyTorch loop (CPU)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=harness.RESULTS)
    p.add_argument("--docs", type=Path, default=harness.DOCS)
    args = p.parse_args()
    results = load_results(args.results)
    missing = [n for n in ("recover", "relabel", "growth") if n not in results]
    if len(missing) == 3:
        raise SystemExit(f"report: no throughput results in {args.results}: run benchmarks/recover_throughput.py, "
                         "relabel_throughput.py and cost_growth.py first")
    text = throughput_markdown(results.get("recover"), results.get("relabel"), results.get("growth"))
    if missing:
        text += f"\n\nNot measured yet: {', '.join(missing)}."
    DOC_BLOCK.write(args.docs, text)
    print(text)


if __name__ == "__main__":
    main()
