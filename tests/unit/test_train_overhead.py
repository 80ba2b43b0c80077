"""benchmarks/train_overhead.py: a fit's phases from its stamps, and the measured checkout's test environment."""

import train_overhead


def _stamps(**times):
    return [{"event": event.removesuffix("_2"), "t": t} for event, t in times.items()]


def test_phases_add_up_to_the_call_and_leave_the_loop_out_of_the_overhead():
    events = _stamps(call_start=0.0, fit_call=0.5, loop_start=10.5, report_begin=14.0, report_end=14.1,
                     report_begin_2=15.0, report_end_2=15.3, loop_end=15.4, fit_return=16.4, call_end=16.5)
    p = train_overhead.phases(events)
    assert p == {"driver_before_fit": 0.5, "start": 10.0, "end": 1.0, "driver_after_fit": 0.1, "total": 16.5,
                 "reports": 2, "first_epoch": 3.6, "loop_tail": 0.1, "report": 0.2, "epoch": 1.2, "overhead": 11.6}
    loop = p["first_epoch"] + p["epoch"] + p["loop_tail"]
    assert round(p["driver_before_fit"] + p["start"] + loop + p["end"] + p["driver_after_fit"], 3) == p["total"]


def test_an_empty_loop_has_no_epochs():
    p = train_overhead.phases(_stamps(call_start=0.0, fit_call=0.0, loop_start=9.0, loop_end=9.0, fit_return=10.0,
                                      call_end=10.0))
    assert p["overhead"] == p["total"] == 10.0 and "epoch" not in p and p["reports"] == 0


def test_the_tests_environment_is_read_from_the_checkout(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text('import os\nos.environ.setdefault("RAY_A", "0.2")\n'
                                                   'os.environ.setdefault("B_C", "x")\nos.environ["D"] = "1"\n')
    assert train_overhead.tests_environment(tmp_path) == {"RAY_A": "0.2", "B_C": "x"}
