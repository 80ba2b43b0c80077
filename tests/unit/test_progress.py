"""The console's lines (no Ray): what a stage line says it did, and what each verbosity lets through."""

import logging

from srel_ray.inspection import plot_curves
from srel_ray.progress import Console, setup_logging, stage_did


def test_stage_lines_say_what_was_done_resumed_and_skipped():
    assert stage_did("squeeze", {"metrics": {"test_top1": 0.9578}, "skipped_epochs": 3}) == \
        "teacher test top-1 95.78 %, 3 epochs resumed from a checkpoint"
    assert stage_did("recover", {"units": 10, "skipped_units": 4, "interrupted_units": [5, 6]}) == \
        "6 of 10 units recovered, 2 interrupted units redone"
    assert stage_did("recover", {"skipped": True}) == "already complete, skipped"
    assert stage_did("relabel", {"condensed": {"epochs": 300, "skipped_epochs": 120},
                                 "random_real": {"skipped": True, "epochs": 300, "skipped_epochs": 300},
                                 "skipped": False}) == \
        "condensed: 180 of 300 label epochs written; random_real: 0 of 300 label epochs written"
    score = {"top1": 0.5, "top5": 0.9}
    assert stage_did("evaluate", {"condensed": score, "random_real_hard": score, "random_real_soft": score,
                                  "skipped_students": ["condensed"],
                                  "resumed": {"random_real_hard": {"skipped_epochs": 50},
                                              "random_real_soft": {"skipped_epochs": 0}}}) == \
        "2 students trained, 1 already done, 1 resumed from a checkpoint"
    # Students of evaluate.students' architectures count too (their records are keyed "<arch key>/<student>").
    assert stage_did("evaluate", {"condensed": score, "resnet18_small/condensed": score,
                                  "resnet18_small/random_real_soft": score, "skipped_students": ["condensed"],
                                  "resumed": {}, "skipped": False}) == "2 students trained, 1 already done"


def test_quiet_console_prints_nothing(capsys):
    quiet = Console("quiet")
    quiet.stage_started(1, 4, "squeeze")
    bar = quiet.bar("squeeze", 3, "epoch")
    bar.update(3)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    normal = Console("normal")
    normal.stage_finished(1, 4, "squeeze", 12.34, "teacher test top-1 99.00 %")
    assert capsys.readouterr().err == "[1/4] squeeze done in 12.3 s (teacher test top-1 99.00 %)\n"


def test_each_verbosity_lets_through_what_it_says(capsys):
    for verbosity, expected in [("quiet", ["error"]), ("normal", ["ours", "error"]),
                                ("verbose", ["info", "ours", "error"])]:
        setup_logging(verbosity)
        logging.getLogger("a_library.sub").info("info")  # a library's INFO line
        logging.getLogger("srel_ray.config").warning("ours")  # e.g. a file overriding a preset
        logging.getLogger("a_library").error("error")
        err = capsys.readouterr().err
        assert [word for word in ("info", "ours", "error") if f": {word}" in err] == expected, verbosity
    setup_logging("normal")


def test_accuracy_curves_draw_the_teacher_and_every_student():
    teacher = [{"epoch": e, "test_top1": 0.5 + 0.1 * e} for e in range(3)]
    students = {"condensed": [{"epoch": 0, "train_loss": 2.0}, {"epoch": 1, "train_loss": 1.0, "test_top1": 0.8}],
                "random_real_soft": [{"epoch": 1, "test_top1": 0.85}]}
    fig = plot_curves(teacher, students)
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == {"teacher (squeeze epochs)", "condensed set (soft labels)", "random real, teacher labels"}
    assert list(lines["teacher (squeeze epochs)"].get_ydata()) == [50.0, 60.0, 70.0]
    assert list(lines["condensed set (soft labels)"].get_xdata()) == [2]  # only epochs that were tested
