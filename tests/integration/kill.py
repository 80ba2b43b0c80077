"""Fault injection for the failure tests: catch a real process in the middle of its work, freeze it (SIGSTOP), check
that it is still in the middle, then kill it (SIGKILL); otherwise let it go on (SIGCONT) and wait for the next
chance. The check runs on a frozen process, so a kill that lands after the work finished cannot pass for one that
landed in the middle of it, however loaded the machine is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

POLL_S = 0.01
LINGERING_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # see kill_driver_when


def title(pid: int) -> str:
    """The process title: Ray names a worker ``ray::<Class>.<method>`` while it runs an actor task, ``ray::<Class>``
    (or ``ray::IDLE``) between tasks. Empty once the process is gone."""
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def ray_workers(prefix: str) -> list[int]:
    """Live workers of the Ray cluster this test process started (its descendants) whose title starts with
    ``prefix``; another engineer's cluster on the same machine is never among them."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if title(p.pid).startswith(prefix) and not gone(p.pid)]


def read_json(path: Path) -> dict | None:
    """A JSON file written by another process, or None while it is absent or half-written (Ray's own snapshot
    files are not written atomically)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class KillInTheMiddle:
    """Around a run (``with KillInTheMiddle(find, in_the_middle) as k: ...``), a thread waits for ``find()`` to
    name a process at work, freezes it, and kills it if ``in_the_middle(pid)`` still holds on the frozen process.
    ``killed`` is the pid it killed (None if it never got the chance: the test must then fail)."""

    def __init__(self, find: Callable[[], int | None], in_the_middle: Callable[[int], bool]):
        self.find, self.in_the_middle = find, in_the_middle
        self.killed: int | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._done.is_set() and self.killed is None:
                pid = self.find()
                if pid is not None and self._try(pid):
                    self.killed = pid
                time.sleep(POLL_S)
        except BaseException as e:  # surfaced in the test thread by __exit__
            self.error = e

    def _try(self, pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        try:
            middle = self.in_the_middle(pid)
        finally:
            os.kill(pid, signal.SIGKILL if middle else signal.SIGCONT)
        return middle

    def __enter__(self) -> "KillInTheMiddle":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``condition``; a deadline only so a broken run fails instead of hanging (no duration is asserted)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(interval_s)


def kill_driver_when(cmd: list[str], env: dict, log: Path, condition: Callable[[], bool],
                     timeout_s: float = 900) -> dict[int, str]:
    """Start ``cmd`` (a driver that starts its own local Ray cluster, or joins the tests' cluster), SIGKILL it as
    soon as ``condition()`` holds, and wait until every process that worked for it or held its state is gone: the
    GCS, raylet and workers of its own cluster, or the actors and Train workers it had started on the joined one
    (they go within seconds). Returns those processes' titles by pid. Fails if the driver finished first.

    Ray's per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) of a cluster the driver started notice
    their raylet's death only at their own one-minute check and then exit by themselves; they hold no work or
    files, and a new local cluster starts beside them (the tests rerun while they linger), so waiting for them would
    only cost a minute a kill. Idle workers (``ray::IDLE``) of the joined cluster belong to no job and stay."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # Polled often and frozen at once: a driver whose actors ran ahead writes the remaining label epochs within
        # milliseconds of the first. Frozen, it writes nothing more, so the condition is checked on what stays.
        wait_until(lambda: condition() or driver.poll() is not None, timeout_s, f"the moment to kill {cmd[3]}",
                   interval_s=0.005)
        assert driver.poll() is None, f"the driver ended (rc {driver.returncode}) before the kill:\n" + \
            log.read_text()[-3000:]
        driver.send_signal(signal.SIGSTOP)
        assert condition(), "the driver got past the moment to kill it before it could be frozen"
        started = {p.pid: title(p.pid) for p in psutil.Process().children(recursive=True) if p.pid not in before}
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    started.pop(driver.pid, None)
    own_cluster = any("gcs_server" in name for name in started.values())
    # Of a joined cluster, only the workers the driver's job had started end with it.
    stay = LINGERING_AGENTS if own_cluster else LINGERING_AGENTS + ("ray::IDLE",)
    working = {pid: name for pid, name in started.items() if not name.startswith(stay)
               and (own_cluster or name.startswith("ray::"))}
    assert working, f"the driver had started no Ray process besides its agents: {started}"
    wait_until(lambda: all(gone(pid) for pid in working), 120, "the killed driver's Ray processes to exit")
    return working
