"""benchmarks/generalisation.py without Ray: which ladder folders it reads and which folders and configs its parts
make, the one error for a missing or different ladder run, and its tables from a hand-made results dict."""

import json
import sys

import generalisation
import pytest

from srel_ray.config import config_from_yaml, config_yaml
from srel_ray.stages.recover import RECOVERY_IDENTITY

RUN_SET = ["recover.iterations=500", "relabel.epochs=200", "evaluate.epochs=200"]


@pytest.fixture
def teacher(tmp_path):
    from srel_ray.core.normalization import Normalization
    from srel_ray.models import create_model
    from srel_ray.teacher import Teacher, save_teacher

    model = create_model("convnet", 10, 3, 32, width=8, depth=1)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 1}, [f"c{i}" for i in range(10)], 3, 32,
                         Normalization((0.5,) * 3, (0.5,) * 3), model.state_dict(), {"test_top1": 0.1}),
                 str(tmp_path / "teacher.pt"))
    return tmp_path / "teacher.pt"


def _args(tmp_path, teacher, *more):
    return generalisation.parse_args(["--out", str(tmp_path), "--teacher", str(teacher), "--ipc", "10", "50",
                                      "--seeds", "0", "1", *[w for o in RUN_SET for w in ("--run-set", o)], *more])


def test_the_plan_reads_the_ladders_folders_and_keeps_their_recovery(tmp_path, teacher):
    args = _args(tmp_path, teacher)
    cells = generalisation.plan_cells(args, teacher)
    out = tmp_path.resolve()
    assert [(c.ipc, c.seed) for c in cells] == [(10, 0), (10, 1), (50, 0), (50, 1)]
    c = cells[0]
    # edc's baselines are trained by + student-side choices (the same student protocol, an earlier ladder row).
    assert (c.run, c.baselines) == (out / "ladder" / "edc-ipc10-seed0",
                                    out / "ladder" / "student-side-choices-ipc10-seed0")
    assert not c.config.evaluate.baselines and c.baselines_config.evaluate.baselines
    assert c.own_folder == out / "generalisation" / "edc-ipc10-seed0"

    jobs = generalisation.plan_jobs(cells, list(generalisation.PARTS), ["resnet18_small", "bnvit_tiny"],
                                    teacher, "abcd1234", [10])
    assert [(j.part, j.cell.ipc, j.cell.seed) for j in jobs] == [
        *[("cross-arch", i, s) for i in (10, 50) for s in (0, 1)],
        *[("second-teacher", i, s) for i in (10, 50) for s in (0, 1)], ("continual", 10, 0), ("continual", 10, 1)]
    cross, second, continual = jobs[0], jobs[4], jobs[8]
    assert cross.folder == continual.folder == c.own_folder and cross.reuses
    assert second.folder == out / "generalisation" / "edc-ipc10-seed0-relabel-abcd1234"
    for job, students, labeller in ((cross, ["resnet18_small", "bnvit_tiny"], None),
                                    (second, [], str(teacher)), (continual, [], None)):
        cfg = config_from_yaml(config_yaml(c.config), "the run", list(job.overrides))
        assert cfg.evaluate.baselines and [s.arch for s in cfg.evaluate.students] == students
        assert cfg.relabel.teacher == labeller
        mine, run = cfg.identity(), c.config.identity()
        assert all(mine.get(k) == run.get(k) for k in RECOVERY_IDENTITY)  # recover.reuse takes the run's images

    # --run-set's resources (how students run, not what they are) apply to every job; the run's config has the ladder's.
    two_threads = generalisation.plan_jobs(cells, ["cross-arch", "continual"], ["resnet18_small"], None, "", [10],
                                           ("resources.threads_per_worker=2",))
    for job in two_threads:
        cfg = config_from_yaml(config_yaml(c.config), "the run", list(job.overrides))
        assert cfg.resources.threads_per_worker == 2 and cfg.evaluate.baselines

    # A step that trains its own baselines is studied in its own folder; only the relabelled one is new.
    one = ("--ipc", "10", "--seeds", "0")
    own = generalisation.plan_cells(_args(tmp_path, teacher, *one, "--step", "+ student-side choices"), teacher)[0]
    assert own.run == own.baselines == own.own_folder
    rded = generalisation.plan_cells(_args(tmp_path, teacher, *one, "--step", "rded"), teacher)[0]
    assert rded.baselines == out / "ipc10-seed0"  # sre2l's protocol: the quality benchmark's run


def test_a_missing_or_different_ladder_run_is_one_error_naming_the_ladder_command(tmp_path, teacher, monkeypatch,
                                                                                   capsys):
    monkeypatch.setattr(sys, "argv", ["benchmarks/generalisation.py", *map(str, _args_list(tmp_path, teacher)),
                                      "--dry-run"])
    with pytest.raises(SystemExit) as missing:
        generalisation.main()
    message = str(missing.value)
    assert message.startswith("generalisation: no finished ladder run in ")
    assert "edc-ipc10-seed1" in message and "student-side-choices-ipc50-seed0" in message
    assert message.endswith(f"make it with:\n  python benchmarks/ladder.py --out {tmp_path} --ipc 10 50 --seeds 0 1 "
                            f"--steps edc --teacher {teacher} --run-set recover.iterations=500 --run-set "
                            "relabel.epochs=200 --run-set evaluate.epochs=200")
    printed = capsys.readouterr().out
    assert "run " + str(tmp_path.resolve() / "ladder" / "edc-ipc10-seed0") + " (MISSING)" in printed
    assert "second-teacher  IPC  10 seed 0" in printed and "-relabel-<its sha256>" in printed

    args = _args(tmp_path, teacher)
    cells = generalisation.plan_cells(args, teacher)
    for c in cells:
        for folder, cfg in ((c.run, c.config), (c.baselines, c.baselines_config)):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(config_yaml(cfg))
            (folder / "summary.json").write_text("{}")
    generalisation.check_cells(args, cells)  # every run there, made as planned

    other = _args(tmp_path, teacher, "--run-set", "relabel.epochs=100")
    with pytest.raises(SystemExit, match="edc-ipc10-seed0 holds a ladder run with other relabel settings"):
        generalisation.check_cells(other, generalisation.plan_cells(other, teacher))


def _args_list(tmp_path, teacher):
    return ["--out", tmp_path, "--teacher", teacher, "--ipc", "10", "50", "--seeds", "0", "1",
            *[w for o in RUN_SET for w in ("--run-set", o)]]


def _row(part, seed, condensed, soft, step="edc", **more):
    return {"part": part, "ipc": 10, "seed": seed, "step": step, "date": "2026-12-03", "git_revision": "f" * 40,
            "command": "python benchmarks/generalisation.py --out OUT", "out": "OUT/generalisation/x",
            "teacher": {"sha256": "575e6cd8" + "0" * 56, "test_top1": 0.7541},
            "ladder": {"condensed": 0.50, "random_real_soft": 0.47 + 0.01 * seed}, "condensed": condensed,
            "random_real_hard": 0.30, "random_real_soft": soft, **more}


PROTOCOL = {"evaluate": {"epochs": 200, "batch_size": 16, "optimizer": "adamw", "lr": 0.001, "temperature": 4.0,
                         "ema_decay": 0.99, "lr_stretch": 2.0}}


def test_the_tables_and_the_verdict_come_from_the_numbers():
    labeller = {"sha256": "b6911d7b" + "0" * 56, "test_top1": 0.78, "arch": "convnet",
                "arch_kwargs": {"width": 64, "depth": 3}}
    curve = {"classes_seen": [5, 10], "top1": {"condensed": [0.8, 0.5], "random_real_soft": [0.7, 0.52]},
             "mean_top1": {"condensed": 0.65, "random_real_soft": 0.61}}
    runs = [_row("cross-arch", s, c, b, student=key, student_order=i, arch=arch)
            for i, (key, arch, pairs) in enumerate([("convnet", "convnet", [(0.50, 0.47), (0.52, 0.48)]),
                                                    ("resnet18_small", "resnet18_small", [(0.40, 0.42), (0.41, 0.45)])])
            for s, (c, b) in enumerate(pairs)]
    runs += [_row("second-teacher", s, c, b, student="convnet", student_order=0, arch="convnet", labeller=labeller)
             for s, (c, b) in enumerate([(0.49, 0.48), (0.47, 0.49)])]
    runs += [{**_row("continual", s, None, None), "learner": {"arch": "convnet", "epochs": 200},
              "steps": {"5": curve}} for s in (0, 1)]
    results = {"teacher": runs[0]["teacher"], "complete": True, "runs": runs, "protocols": {"edc": PROTOCOL},
               "summary": generalisation.summarise(runs)}
    text = generalisation.markdown(results)
    lines = text.splitlines()
    assert "# 2026-12-03, git ffffffffffff" in lines and "python benchmarks/generalisation.py --out OUT" in lines
    assert "| `edc` | 10 | convnet | 51.00 ± 1.41 (n=2) | 30.00 ± 0.00 (n=2) | 47.50 ± 0.71 (n=2) | " \
        "+3.50 (+3.00 to +4.00) |" in lines
    assert "| `edc` | 10 | resnet18_small | 40.50 ± 0.71 (n=2) | 30.00 ± 0.00 (n=2) | 43.50 ± 2.12 (n=2) | " \
        "-3.00 (-4.00 to -2.00) |" in lines
    # The second teacher's margin beside the one the recovery teacher's labels gave on the same seeds (+3 and +2).
    assert "| `edc` | 10 | 48.00 ± 1.41 (n=2) | 30.00 ± 0.00 (n=2) | 48.50 ± 0.71 (n=2) | -0.50 (-2.00 to +1.00) | " \
        "+2.50 (+2.00 to +3.00) |" in lines
    assert "convnet {'width': 64, 'depth': 3}, test top-1 78.00 %, `b6911d7b`" in text
    assert "| 5 | condensed set (soft labels) | 80.0 (5), 50.0 (10) | 65.00 |" in lines
    assert "| 5 | random real, teacher labels | 70.0 (5), 52.0 (10) | 61.00 |" in lines
    assert "| 5 | margin (mean over steps, per seed) | | +4.00 (+4.00 to +4.00) |" in lines
    # Said plainly, first: where the condensed set does not beat random real images with the same labels.
    verdict = next(line for line in lines if line.startswith("**The condensed set does not beat"))
    assert verdict == (
        "**The condensed set does not beat random real images with the same labels** for resnet18_small students "
        "at IPC 10 (-3.00 (-4.00 to -2.00)); the second teacher's labels at IPC 10 (-0.50 (-2.00 to +1.00)). It "
        "beats them in every seed for convnet students at IPC 10 (+3.50 (+3.00 to +4.00)); class-incremental "
        "learning in 5 steps at IPC 10 (mean over steps) (+4.00 (+4.00 to +4.00)).")
    assert "Incomplete" not in text
    # An earlier invocation's row is replaced by a later one's with the same key, never averaged with it.
    assert len({generalisation.row_key(r) for r in runs}) == len(runs)


def test_mobilenet_v2_is_built_for_32_px_images():
    """torchvision's MobileNetV2 halves 32 px in its stem; with its second stage at stride 1 its last feature map
    is 2 x 2 (1 x 1 with torchvision's strides), and it is checked like any student before heavy work."""
    import torch

    from srel_ray.models import create_model
    from srel_ray.models.registry import check_model_fits

    spec = generalisation.ARCHITECTURES["mobilenet_v2"]
    check_model_fits(spec["arch"], 10, 3, 32, spec["arch_kwargs"])
    with torch.device("meta"):
        features = create_model(spec["arch"], 10, 3, 32, **spec["arch_kwargs"]).features
        assert features(torch.empty(1, 3, 32, 32)).shape[-2:] == (2, 2)


def test_rows_of_two_ladder_steps_share_one_file_and_each_table_row_names_its_step(tmp_path):
    runs = [_row("second-teacher", s, c, b, step=step, student="convnet", student_order=0, arch="convnet",
                 labeller={"sha256": "3bc51e98" + "0" * 56, "test_top1": 0.79, "arch": "convnet", "arch_kwargs": {}})
            for step, pairs in [("edc, validation's one recipe", [(0.47, 0.43), (0.49, 0.46)]),
                                ("edc", [(0.46, 0.44), (0.48, 0.46)])]
            for s, (c, b) in enumerate(pairs)]
    other = {"evaluate": {**PROTOCOL["evaluate"], "epochs": 300}}
    results = {"teacher": runs[0]["teacher"], "complete": True, "runs": runs, "summary": generalisation.summarise(runs),
               "protocols": {"edc": PROTOCOL, "edc, validation's one recipe": PROTOCOL, "rded": other}}
    lines = generalisation.markdown(results).splitlines()
    # The heading names both rows in the ladder's order and gives the one protocol they share once.
    assert any("ladder's `edc` and `edc, validation's one recipe` rows" in line for line in lines)
    assert sum("200 epochs, batch 16" in line for line in lines) == 1
    assert not any("300 epochs" in line for line in lines)  # a row with no runs in the file is not described
    assert "| `edc` | 10 | 47.00 ± 1.41 (n=2) | 30.00 ± 0.00 (n=2) | 45.00 ± 1.41 (n=2) | +2.00 (+2.00 to +2.00) | " \
        "+2.50 (+2.00 to +3.00) |" in lines
    assert "| `edc, validation's one recipe` | 10 | 48.00 ± 1.41 (n=2) | 30.00 ± 0.00 (n=2) | 44.50 ± 2.12 (n=2) | " \
        "+3.50 (+3.00 to +4.00) | +2.50 (+2.00 to +3.00) |" in lines
    verdict = next(line for line in lines if "It beats them in every seed" in line)
    assert "the second teacher's labels at IPC 10, row `edc` (+2.00" in verdict
    assert "the second teacher's labels at IPC 10, row `edc, validation's one recipe` (+3.50" in verdict
    # Differing protocols are given per row; a results file from before several rows held one row's protocol.
    results["protocols"]["edc"] = other
    assert any("`edc`: 300 epochs" in line and "`edc, validation's one recipe`: 200 epochs" in line
               for line in generalisation.markdown(results).splitlines())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"step": "edc", "protocol": PROTOCOL, "runs": []}))
    assert generalisation.earlier_protocols(old) == {"edc": PROTOCOL}
    assert generalisation.earlier_protocols(tmp_path / "none.json") == {}

    # One seed is not "every seed".
    one = [r for r in runs if r["seed"] == 0]
    lines = generalisation.markdown({**results, "runs": one, "summary": generalisation.summarise(one)}).splitlines()
    verdict = next(line for line in lines if "beats them" in line)
    assert "every seed" not in verdict and "With one seed measured so far, it beats them for" in verdict
