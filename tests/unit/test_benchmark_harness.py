"""benchmarks/harness.py: doc blocks, accumulating results, revisions, run planning with shared baselines and the
statistics; and the ladder's plan from the command line (--dry-run), which runs nothing."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import harness
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_doc_block_is_appended_once_then_replaced_in_place(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n")
    block = harness.DocBlock("quality-benchmark", "## Quality")
    block.write(docs, "first table")
    assert docs.read_text() == ("# Benchmarks\n\nintro\n\n## Quality\n\n<!-- quality-benchmark:begin -->\n"
                                "first table\n<!-- quality-benchmark:end -->\n")
    docs.write_text(docs.read_text() + "\n## Later section\n")
    block.write(docs, "second table")
    text = docs.read_text()
    assert "first table" not in text and text.count("## Quality") == 1
    assert text.endswith("second table\n<!-- quality-benchmark:end -->\n\n## Later section\n")
    harness.DocBlock("other", "## Other").write(tmp_path / "new.md", "x")
    assert (tmp_path / "new.md").read_text().startswith("# Benchmarks\n\n## Other\n\n<!-- other:begin -->\nx\n")


def test_publish_writes_the_results_then_the_table(tmp_path, capsys):
    docs = tmp_path / "d.md"
    harness.publish({"a": 1}, tmp_path / "r" / "x.json", docs, harness.DocBlock("x", "## X"), lambda r: f"a={r['a']}")
    assert (tmp_path / "r" / "x.json").read_text() == '{\n "a": 1\n}\n'
    assert "<!-- x:begin -->\na=1\n<!-- x:end -->" in docs.read_text()
    assert capsys.readouterr().out == "a=1\n"


def test_merge_runs_keeps_earlier_runs_this_invocation_did_not_redo():
    earlier = [{"ipc": 10, "step": "a", "v": 1}, {"ipc": 10, "step": "b", "v": 2}]
    now = [{"ipc": 10, "step": "b", "v": 3}, {"ipc": 50, "step": "a", "v": 4}]
    merged = harness.merge_runs(earlier, now, key=lambda r: (r["ipc"], r["step"]))
    assert [r["v"] for r in merged] == [1, 3, 4]


def test_revisions_and_commands():
    revision = harness.git_revision()
    sha, _, flag = revision.partition("-")
    assert len(sha) == 40 and flag in ("", "dirty")
    assert harness.short_revision("0123456789abcdef0123456789abcdef01234567-dirty") == "0123456789ab-dirty"
    assert harness.short_revision("657a76e") == "657a76e"  # older files' short hashes stay as they are
    assert harness.short_revision("d873e2e+uncommitted") == "d873e2e+uncommitted"
    assert harness.command().startswith("python ")
    assert set(harness.made_by()) == {"git_revision", "date", "command"}


def test_statistics_have_one_meaning_each():
    assert harness.median_range([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert harness.mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}
    stats = harness.mean_std([0.4, 0.6])
    assert stats["mean"] == pytest.approx(0.5) and stats["std"] == pytest.approx(0.1414, abs=1e-4)
    assert harness.rates([{"seconds": 2.0}, {"seconds": 4.0}], 8.0)["median"] == 3.0


def test_planning_trains_each_protocols_baselines_once_and_brings_their_owner_along():
    steps = ["plain", "more", "student", "method"]
    protocol = {"plain": "p1", "more": "p1", "student": "p2", "method": "p2"}
    plan = harness.plan_shared_baselines([(10, 0)], steps, ["method", "more"],
                                         lambda cell, step: f"{cell}{protocol[step]}", known=set())
    assert [(r.step, r.trains_baselines) for r in plan] == [
        ("student", True), ("method", False), ("plain", True), ("more", False)]
    # Baselines measured before (the quality benchmark's runs): nothing is brought along, nothing retrains them.
    plan = harness.plan_shared_baselines([(10, 0), (50, 1)], steps, ["more"],
                                         lambda cell, step: f"{cell}{protocol[step]}", known={"(10, 0)p1"})
    assert [(r.cell, r.step, r.trains_baselines) for r in plan] == [
        ((10, 0), "more", False), ((50, 1), "plain", True), ((50, 1), "more", False)]


def test_nothing_happens_when_the_harness_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "RAY_DATA_DISABLE_PROGRESS_BARS")}
    code = ("import os, sys, harness; print(sorted(k for k in ('TQDM_DISABLE', 'RAY_DATA_DISABLE_PROGRESS_BARS') "
            "if k in os.environ), 'srel_ray' in sys.modules); harness.quiet_output(); "
            "print(os.environ['TQDM_DISABLE'])")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO / "benchmarks")},
                         capture_output=True, text=True, check=True).stdout
    assert out == "[] False\n1\n"


def test_the_teacher_is_the_option_or_the_quality_benchmarks(tmp_path):
    args = argparse.Namespace(out=tmp_path, teacher=None)
    with pytest.raises(SystemExit, match=f"ladder: no teacher at {harness.quality_teacher(tmp_path)}.*--teacher"):
        harness.teacher_checkpoint(args, "ladder")
    harness.quality_teacher(tmp_path).parent.mkdir(parents=True)
    harness.quality_teacher(tmp_path).write_bytes(b"")
    assert harness.teacher_checkpoint(args, "ladder") == tmp_path.resolve() / "teacher" / "teacher" / "teacher.pt"
    args.teacher = tmp_path / "elsewhere.pt"
    with pytest.raises(SystemExit, match="elsewhere.pt"):
        harness.teacher_checkpoint(args, "ladder")


def test_the_ladder_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    import ladder

    from srel_ray.core.normalization import Normalization
    from srel_ray.models import create_model
    from srel_ray.teacher import Teacher, save_teacher

    model = create_model("convnet", 10, 3, 32, width=8, depth=1)
    teacher = Teacher("convnet", {"width": 8, "depth": 1}, [f"c{i}" for i in range(10)], 3, 32,
                      Normalization((0.5,) * 3, (0.5,) * 3), model.state_dict(), {"test_top1": 0.1})
    save_teacher(teacher, str(tmp_path / "elsewhere.pt"))
    monkeypatch.setattr(sys, "argv", [
        "benchmarks/ladder.py", "--out", str(tmp_path), "--dry-run", "--ipc", "10", "--seeds", "0", "--steps", "edc",
        "cda", "--teacher", str(tmp_path / "elsewhere.pt"), "--results", str(tmp_path / "ladder.json"),
        "--quality-results", str(tmp_path / "none.json"), "--docs", str(tmp_path / "docs.md")])
    ladder.main()
    out = capsys.readouterr().out
    rows = [line.split()[4:] for line in out.splitlines() if line.startswith("IPC")]
    # edc's baselines belong to + student-side choices, cda's to sre2l (the quality benchmark's run): both come along.
    assert [row[:1] for row in rows] == [["+"], ["edc"], ["sre2l"], ["cda"]]
    assert "trains the baselines" in out and "quality benchmark run" in out
    assert not (tmp_path / "ladder.json").exists() and not (tmp_path / "docs.md").exists()


def test_the_ladder_table_keeps_each_teachers_runs_apart_and_names_the_teacher_of_every_run():
    import ladder

    old = {"sha256": "575e6cd8" + "0" * 56, "test_top1": 0.7541}
    new = {"sha256": "f0e8a871" + "0" * 56, "test_top1": 0.7572}
    seconds = {"squeeze": 1.0, "recover": 2.0, "relabel": 3.0, "evaluate": 4.0}

    def run(teacher, seed, step, condensed, baseline, date):
        return {"ipc": 10, "seed": seed, "step": step, "condensed": condensed, "random_real_soft": baseline,
                "seconds": seconds, "teacher": teacher, "date": date, "git_revision": "a" * 40, "command": "ladder"}

    # A re-measured step replaces the earlier teacher's run of the same (IPC, seed, step), as the results file does.
    earlier = [run(old, s, step, 0.40 + s / 100, 0.43, "2026-12-01") for s in (0, 1) for step in ("sre2l", "edc")]
    runs = harness.merge_runs(earlier, [run(new, s, "edc", 0.47, 0.46, "2026-12-06") for s in (0, 1)],
                              key=lambda r: (r["ipc"], r["seed"], r["step"]))
    text = ladder.markdown({"runs": runs, "summary": ladder.grouped(runs), "complete": True})
    table = [line for line in text.splitlines() if line.startswith("| 10 | 75.")]
    assert table == ["| 10 | 75.41 % (`575e6cd8`) | sre2l | 40.50 ± 0.71 (n=2) | 43.00 ± 0.00 (n=2) | "
                     "-2.50 (-3.00 to -2.00) |  |",
                     "| 10 | 75.72 % (`f0e8a871`) | edc | 47.00 ± 0.00 (n=2) | 46.00 ± 0.00 (n=2) | "
                     "+1.00 (+1.00 to +1.00) |  |"]
    per_run = [line.split(" | ")[2:4] for line in text.splitlines() if line.startswith("| 10 | 0 |")]
    assert per_run == [["75.41 % (`575e6cd8`)", "sre2l"], ["75.72 % (`f0e8a871`)", "edc"]]
