"""Progress from Ray workers to the driver, without a sync per step.

Workers (Train rank 0 once per epoch, recovery actors every ``tracking.loss_interval`` iterations, the tasks of
RDED's start selection once a class) call ``send``: a fire-and-forget actor call on a small ``ProgressBoard``
actor, never awaited, so a training loop does not wait for it. A thread on the driver drains the board twice a
second and hands each event to the console's bars and to the MLflow run (``on_metrics``), so metrics are in
``mlflow ui`` while a stage runs, not only when it returns.

Events: ``{"source": "teacher" | "student.<name>", "epoch": e, "metrics": {...}}`` from training loops,
``{"source": "recover", "unit": u, "step": s, "loss": l}`` from recovery actors, and ``{"source": "starts",
"item": c}`` from the tasks that store RDED's start images, once a class (a step of the bar).

One board serves the commands of a driver process in turn (a notebook's, the tests'): each actor process costs a
second or two of CPU to start, paid once instead of once a command. Each command's events carry its token, so a
late event of one command never reaches the next one's bars or MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ray
from tqdm import tqdm

from srel_ray.progress import Console

log = logging.getLogger(__name__)

POLL_S = 0.5


# Restarted (empty) if its node is lost: it outlives a command, and a dead board would stop every later command's bars.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ProgressBoard:
    """Holds events until the driver drains them (a few per epoch or per unit: small)."""

    def __init__(self):
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


@dataclass(frozen=True)
class Board:
    """What workers get: the board actor and the token of the command whose events they post."""

    actor: Any  # the ProgressBoard actor handle
    token: str


# This process's board on each cluster it joined, by cluster, namespace and job (an anonymous namespace is new at
# each ray.init): the actor lives while this handle does, so commands run one after another reuse it.
_BOARDS: dict[str, Any] = {}
# Boards a live Progress of this process drains: a second Progress open at the same time (none is in srel_ray's
# commands) gets a board of its own instead of sharing, and so stealing, the first one's events.
_DRAINED: set[str] = set()


def send(board: Board | None, **event) -> ray.ObjectRef | None:
    """From a worker: post ``event`` to ``board`` (None: nobody watches) without waiting for it. Returns the call's
    reference (None without a board), for a task that must have its events on the board before it returns."""
    return board.actor.put.remote({**event, "token": board.token}) if board is not None else None


class Progress:
    """The driver's side for one command: the board workers post to, the bars of the running stage, and a thread
    that turns events into bar updates and ``on_metrics(prefix, step, metrics)`` calls. A context manager."""

    def __init__(self, console: Console, on_metrics: Callable[[str, int, dict], None], recover_iterations: int):
        self.console = console
        self.on_metrics = on_metrics
        self.recover_iterations = recover_iterations
        context = ray.get_runtime_context()
        key = f"{context.gcs_address}|{context.namespace}|{context.get_job_id()}"
        self._key = None if key in _DRAINED else key
        if self._key is None:
            actor = ProgressBoard.remote()
        else:
            if key not in _BOARDS:
                _BOARDS[key] = ProgressBoard.remote()
            actor = _BOARDS[key]
            _DRAINED.add(key)
        self.board = Board(actor, uuid.uuid4().hex)
        self.bars: dict[str, tqdm] = {}
        self.logged: dict[str, set[int]] = defaultdict(set)  # source -> epochs already sent to on_metrics
        self.items: dict[str, set] = defaultdict(set)  # source -> items its open bar has counted
        self.shared: dict[str, int] = {}  # source -> epochs done, of the training loops that share a bar
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="srel_ray-progress", daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._handle_all()  # what arrived after the last poll
        for key in list(self.bars):
            self.close_bar(key)
        if self._key is None:
            ray.kill(self.board.actor)
        else:
            _DRAINED.discard(self._key)  # the board stays for this process's next command; it ends with the job

    def bar(self, source: str, desc: str, total: int, unit: str, initial: int = 0) -> tqdm:
        """Open the bar that events of ``source`` advance (``initial``: done by an earlier command)."""
        with self._lock:
            self.bars[source] = self.console.bar(desc, total, unit, initial)
            self.items[source] = set()
            return self.bars[source]

    def close_bar(self, source: str) -> None:
        with self._lock:
            bar = self.bars.pop(source, None)
        if bar is not None:
            bar.close()

    @contextlib.contextmanager
    def epochs(self, source: str, desc: str, total: int, done: int) -> Iterator[None]:
        """An epoch bar around one training fit; ``done``: epochs restored from a checkpoint. Inside
        ``shared_epochs`` of this source, its epochs count on the shared bar instead."""
        own = source not in self.shared
        if own:
            self.bar(source, desc, total, "epoch", initial=done)
        try:
            yield
        finally:
            self.flush()
            if own:
                self.close_bar(source)

    @contextlib.contextmanager
    def shared_epochs(self, desc: str, totals: dict[str, int]) -> Iterator[None]:
        """One epoch bar for training loops that run at the same time (students trained concurrently): each
        ``source`` of ``totals`` (its epochs) counts its epochs on it. Bars of their own, one per loop, would
        redraw over each other on a console and garble a log file."""
        bar = self.bar(desc, desc, sum(totals.values()), "epoch")
        with self._lock:
            for source in totals:
                self.bars[source], self.shared[source] = bar, 0
        try:
            yield
        finally:
            self.flush()
            with self._lock:
                for source in totals:
                    self.bars.pop(source, None)
                    self.shared.pop(source, None)
            self.close_bar(desc)

    def already_logged(self, source: str) -> set[int]:
        return set(self.logged[source])

    def flush(self) -> None:
        """Handle every event posted so far (call once a stage's workers have returned)."""
        self._handle_all()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._handle_all()

    def _handle_all(self) -> None:
        with self._lock:
            for event in ray.get(self.board.actor.drain.remote()):
                if event.pop("token") == self.board.token:  # else a late event of an earlier command
                    self._handle(event)

    def _handle(self, event: dict) -> None:
        source = event["source"]
        bar = self.bars.get(source)
        if "epoch" in event:
            epoch, metrics = event["epoch"], event["metrics"]
            if bar is not None:
                shown = {k: round(v, 4) for k, v in metrics.items() if k in ("train_loss", "test_top1")}
                if source in self.shared:  # the bar counts the epochs of every loop that shares it
                    self.shared[source] = max(self.shared[source], epoch + 1)
                    bar.n = sum(n for s, n in self.shared.items() if self.bars.get(s) is bar)
                    shown = {"last": source.split(".", 1)[-1], **shown}
                else:
                    bar.n = max(bar.n, epoch + 1)  # a restarted worker group repeats epochs: the bar never goes back
                bar.set_postfix(shown, refresh=True)
            if epoch not in self.logged[source]:  # repeated epochs give the same values: log each once
                self.logged[source].add(epoch)
                self.on_metrics(f"{source}.", epoch, metrics)
        elif "item" in event:
            if bar is not None and event["item"] not in self.items[source]:  # a retried task repeats its items
                self.items[source].add(event["item"])
                bar.update(1)
        else:
            if bar is not None:
                bar.set_postfix({"unit": event["unit"], "loss": round(event["loss"], 4)}, refresh=True)
            self.on_metrics("recover.", event["unit"] * self.recover_iterations + event["step"],
                            {"loss": event["loss"]})


def open_bar(progress: Progress | None, source: str, desc: str, total: int, unit: str, initial: int = 0) -> tqdm:
    """A driver-side bar: the command's (``progress``), or a plain tqdm bar for callers without one (benchmarks)."""
    if progress is None:
        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return progress.bar(source, desc, total, unit, initial)


def close_bar(progress: Progress | None, source: str, bar: tqdm) -> None:
    if progress is None:
        bar.close()
    else:
        progress.flush()
        progress.close_bar(source)
