"""The students the evaluate stage trains, one meaning for the stage, the summary, ``show`` and the benchmarks.

Plain data with no heavy imports, so the reporting code (no torch) reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Student:
    name: str  # DIR/evaluate/<name>.json
    set_name: str  # the set it trains on: "condensed" or a baseline set
    hard: bool  # trained on the class index instead of the teacher's soft labels
    label: str  # how tables and figures name it
    summary_key: str  # its test top-1 in summary.json
    # The set's classes it trains and is tested on, one output each in this order (srel-ray continual's memory of
    # the classes seen so far); None: every class of the set.
    classes: tuple[int, ...] | None = None

    @property
    def baseline(self) -> bool:
        return self.set_name != "condensed"

    @property
    def source(self) -> str:
        """Its training loop's name in progress events and MLflow metric keys."""
        return f"student.{self.name}"


# In the order they are trained, recorded and summarised.
STUDENTS = {s.name: s for s in (
    Student("condensed", "condensed", False, "condensed set (soft labels)", "student_top1"),
    Student("random_real_hard", "random_real", True, "random real, hard labels", "baseline_random_hard_top1"),
    Student("random_real_soft", "random_real", False, "random real, teacher labels", "baseline_random_soft_top1"),
)}


def students_of(baselines: bool) -> list[Student]:
    """Every student with evaluate.baselines on, else the condensed set's alone."""
    return [s for s in STUDENTS.values() if baselines or not s.baseline]
