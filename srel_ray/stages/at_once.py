"""Students trained at once (resources.concurrent_students): the scheduling that the evaluate stage and the
continual study share. A student on Ray is a Ray Train fit the driver only waits on, so a thread each is all it
costs the driver; in process, students run one after another."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator, TypeVar

T, R = TypeVar("T"), TypeVar("R")


def concurrently(fn: Callable[[T], R], jobs: list[T], at_once: int) -> Iterator[tuple[T, R]]:
    """(job, ``fn(job)``) for every job, in the order they finish: one after another in this thread with
    ``at_once`` 1, else up to ``at_once`` at a time, each on a thread of its own, started in the order given.
    Daemon threads: a driver interrupted or stopped does not wait for them. After a job fails no other starts;
    those running finish (and are yielded, so their records get written), then the first error is raised."""
    if at_once == 1:
        for job in jobs:
            yield job, fn(job)
        return
    finished: queue.Queue = queue.Queue()

    def work(job: T) -> None:
        try:
            finished.put((job, fn(job), None))
        except BaseException as e:  # handed to the driver's thread, which raises it
            finished.put((job, None, e))

    waiting, running, error = list(reversed(jobs)), 0, None
    while True:
        while waiting and running < at_once and error is None:
            threading.Thread(target=work, args=(waiting.pop(),), name="srel_ray-student", daemon=True).start()
            running += 1
        if running == 0:
            break
        job, result, failure = finished.get()
        running -= 1
        if failure is not None:
            error = error or failure
            continue
        yield job, result
    if error is not None:
        raise error


def at_once(executor, cfg, jobs: int) -> int:
    """How many of ``jobs`` students train at once on ``executor`` (at least one)."""
    return max(1, min(executor.students_at_once(cfg), jobs))


def shared_bar(progress, epochs: dict[str, int], students_at_once: int):
    """Students trained at once count their epochs (``epochs``: each one's progress source -> its epochs) on one
    bar of ``progress`` (a bar each would draw over the others); nothing to share one at a time, or without it."""
    if progress is None or students_at_once == 1:
        return contextlib.nullcontext()
    return progress.shared_epochs(f"students ({students_at_once} at a time)", epochs)
