"""Benchmark reporting: the loaders and figures of benchmarks/reporting.py, and notebooks/benchmarks.ipynb executed
on the small committed results in tests/data/benchmark_results (so the notebook cannot silently break). benchmarks/
is on the tests' path (pyproject.toml's pytest ``pythonpath``), as it is on a script's."""

from pathlib import Path

import pytest

import reporting
from srel_ray.students import STUDENTS
from tests.unit.notebooks import execute, outputs as notebook_outputs

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "data" / "benchmark_results"


@pytest.fixture(scope="module")
def results():
    return reporting.load_results(FIXTURE)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib

    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_load_results_finds_every_file_and_skips_missing_ones(results, tmp_path):
    assert sorted(results) == ["growth", "ladder", "quality", "recover", "relabel"]
    (tmp_path / "recover_throughput.json").write_text((FIXTURE / "recover_throughput.json").read_text())
    assert list(reporting.load_results(tmp_path)) == ["recover"]
    assert reporting.describe({}) == "no benchmark results found"


def test_accuracy_plot_draws_each_student_at_its_mean_and_the_ceiling(results):
    quality = results["quality"]
    ax = reporting.plot_accuracy_vs_ipc(quality)
    series = reporting.accuracy_by_ipc(quality)
    assert series["condensed"] == {"ipc": [10, 50], "mean": [0.31, 0.42], "std": [0.01, 0.01]}
    curves = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    for student, label in ((name, s.label) for name, s in STUDENTS.items()):
        assert list(curves[label].get_xdata()) == [10, 50]
        assert list(curves[label].get_ydata()) == pytest.approx([100 * m for m in series[student]["mean"]])
    ceiling = [line for line in ax.get_lines() if line.get_label() == "full data (ceiling)"]
    assert len(ceiling) == 1 and list(ceiling[0].get_ydata()) == pytest.approx([64.0, 64.0])


def test_stage_seconds_average_over_seeds(results):
    seconds = reporting.stage_seconds(results["quality"])
    assert list(seconds) == [10, 50]
    assert seconds[10] == pytest.approx({"squeeze": 119.0, "recover": 305.0, "relabel": 41.0, "evaluate": 205.0})
    ax = reporting.plot_stage_times(results["quality"])
    heights = [patch.get_height() for patch in ax.patches]
    assert heights[:2] == pytest.approx([119.0 / 60, 120.0 / 60])  # squeeze bars of IPC 10 and 50 come first


def test_ladder_draws_the_newest_teacher_of_each_ipc_beside_its_own_baseline(results):
    rows = reporting.ladder_rows(results["ladder"])
    assert list(rows) == [10, 50]
    # IPC 10 has an older teacher's sre2l run (20 %) too: only the newest teacher's rows are drawn, never mixed.
    assert [r["step"] for r in rows[10]] == ["sre2l", "edc"]
    assert rows[10][0]["condensed"]["mean"] == pytest.approx(0.34) and rows[10][0]["condensed"]["n"] == 2
    assert rows[10][1]["baseline"]["mean"] == pytest.approx(0.46)
    axes = reporting.plot_ladder(results["ladder"])
    assert [ax.get_title() for ax in axes] == ["method ladder, IPC 10", "method ladder, IPC 50"]
    widths = [p.get_width() for p in axes[0].patches]  # condensed bars of each step, then the baselines
    assert widths == pytest.approx([34.0, 47.0, 43.0, 46.0])
    assert [t.get_text() for t in axes[1].get_yticklabels()] == ["sre2l", "edc"]


def test_throughput_rows_cover_every_variant(results):
    rows = reporting.throughput_rows(results["recover"], results["relabel"])
    recover = results["recover"]["summary"]["image_iterations_per_second"]
    assert [(s, v) for s, v, _ in rows if s == "recover"] == [("recover", k) for k in recover]
    assert {v for s, v, _ in rows if s == "relabel"} == set(results["relabel"]["summary"]["views_per_second"])
    axes = reporting.plot_throughput(results["recover"], None)
    assert len(axes) == 1 and [p.get_height() for p in axes[0].patches] == pytest.approx(list(recover.values()))


def test_notebook_runs_without_ray_and_draws_every_figure():
    # A last cell that reports whether anything imported Ray or torch while the notebook ran.
    nb = execute("benchmarks.ipynb", {"SREL_RAY_BENCHMARK_RESULTS": str(FIXTURE),
                                      "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
                 extra_cell="import sys; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    outputs = notebook_outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # accuracy, stage times, ladder, throughput and cost growth (one figure each)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "no quality result" not in text and "quality_cifar10.json" in text
    assert text.strip().endswith("[]"), "the notebook imported Ray or torch"


def test_throughput_markdown_quotes_the_measured_medians_and_targets(results):
    text = reporting.throughput_markdown(results["recover"], results["relabel"], results["growth"])
    recover, relabel = results["recover"]["summary"], results["relabel"]["summary"]
    for variant, rate in recover["image_iterations_per_second"].items():
        assert f"| {variant} | {rate:.1f} |" in text
    assert f"{100 * recover['overhead_1_actor_over_bare']['median']:.2f} (" in text and "(target < 5 %)" in text
    assert f"{recover['speedup_2_actors_over_1']['median']:.2f} (" in text and "(target > 1.8)" in text
    assert f"{100 * relabel['marginal_overhead_per_view']['median']:.2f} (" in text and "(target < 10 %)" in text
    growth = results["growth"]["summary"]["growth"]
    fit = growth["classes"]["relabel"]["fit"]
    assert f"| relabel | classes | " in text and f"| {fit['seconds_per_image']:.3f} | {fit['fixed_seconds']:.1f} |" in text
    assert results["recover"]["command"] in text and results["growth"]["git_revision"][:12] in text
    # Each section is optional: a missing result leaves its section out.
    only_relabel = reporting.throughput_markdown(None, results["relabel"], None)
    assert only_relabel.startswith("### Relabel") and "### Recovery" not in only_relabel


def test_report_script_writes_between_its_markers_and_keeps_the_rest(tmp_path):
    import subprocess
    import sys

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept above\n\n<!-- throughput-benchmark:begin -->\nstale block text\n"
                    "<!-- throughput-benchmark:end -->\n\nkept below\n")
    for _ in range(2):  # rewriting replaces the block, it does not add a second one
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--results", str(FIXTURE),
                        "--docs", str(docs)], check=True, capture_output=True)
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept above\n") and text.rstrip().endswith("kept below")
    assert "stale block text" not in text and text.count("### Recovery") == 1 and text.count("throughput-benchmark:begin") == 1
    empty = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--results", str(tmp_path),
                            "--docs", str(docs)], capture_output=True, text=True)
    assert empty.returncode != 0 and "no throughput results in" in empty.stderr
