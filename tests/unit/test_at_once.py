"""The scheduling of students trained at once (srel_ray.stages.at_once.concurrently), without Ray: how many run
at once, the order results come back in, and what a failure does to the others."""

import threading
import time

import pytest

from srel_ray.stages.at_once import concurrently


class Recorder:
    """A job function that sleeps for the job's seconds and records how many jobs ran at the same time."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail, self.running, self.most, self.started = fail, 0, 0, []
        self.lock = threading.Lock()

    def __call__(self, job: tuple[str, float]) -> str:
        name, seconds = job
        with self.lock:
            self.started.append(name)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
        if name in self.fail:
            raise RuntimeError(f"{name} failed")
        return name.upper()


def test_one_at_a_time_runs_in_the_callers_thread_in_order():
    threads = []
    out = list(concurrently(lambda job: threads.append(threading.current_thread()) or job * 2, [1, 2, 3], 1))
    assert out == [(1, 2), (2, 4), (3, 6)]
    assert set(threads) == {threading.current_thread()}


def test_at_most_at_once_run_together_and_results_come_as_they_finish():
    fn = Recorder()
    jobs = [("slow", 0.6), ("quick", 0.05), ("third", 0.05), ("fourth", 0.05)]
    out = list(concurrently(fn, jobs, 2))
    assert fn.most == 2
    assert fn.started == ["slow", "quick", "third", "fourth"]  # started in the given order
    assert [job[0] for job, _ in out][-1] == "slow"  # yielded as they finish, not in the given order
    assert sorted(result for _, result in out) == ["FOURTH", "QUICK", "SLOW", "THIRD"]


def test_after_a_failure_nothing_new_starts_those_running_finish_then_it_raises():
    fn = Recorder(fail={"bad"})
    jobs = [("bad", 0.05), ("long", 0.4), ("never", 0.05)]
    got = []
    with pytest.raises(RuntimeError, match="bad failed"):
        for job, result in concurrently(fn, jobs, 2):
            got.append(result)
    assert got == ["LONG"]  # the student running beside the failed one is kept (its record is written)
    assert "never" not in fn.started
