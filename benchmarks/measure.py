"""How the throughput and cost benchmarks measure: interleaved repeated timing with the load average around each
measurement, peak resident memory and CPU time of processes read from /proc (Linux), a randomly initialised teacher
checkpoint, and Ray started as the CLI starts it.

Scripts import it as ``measure`` (they run as ``python benchmarks/<script>.py``, which puts this folder on the path);
provenance, result files and statistics are ``harness``'s.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

from harness import srel_ray_location

CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616))  # the usual CIFAR-10 channel statistics


# ------------------------------------------------------------------------------------------- timing


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy machine-wide over the next ``seconds`` (from /proc/stat): a sharper view than the load
    average of how much of the machine other work takes right before a measurement."""
    def ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = ticks()
    time.sleep(seconds)
    total1, idle1 = ticks()
    return round((os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0)), 2)


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other work keeps at most ``max_busy`` cores busy; returns the last reading."""
    deadline = time.monotonic() + timeout
    busy = busy_cores()
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(2.0)
    return busy


def timed(fn: Callable[[], dict | None], max_busy: float = 0.5, wait: float = 60.0) -> dict:
    """Run ``fn`` once, after waiting up to ``wait`` s for the machine to quieten: wall seconds; CPU seconds of
    this process and its descendants, and of this process alone; peak RSS of each process; the cores other work
    kept busy just before; and the 1-minute load average before and after. CPU seconds say what the work cost
    whatever else ran; wall seconds on a shared machine also count the time it waited for a core."""
    busy = wait_for_quiet(max_busy, wait)
    before_load, before_own = load1(), time.process_time()
    sampler = ProcessSampler()
    sampler.start()
    start = time.perf_counter()
    extra = fn() or {}
    seconds = time.perf_counter() - start
    processes = sampler.stop()
    return {"seconds": seconds, "cpu_seconds": processes["cpu_seconds"],
            "driver_cpu_seconds": time.process_time() - before_own - sampler.sampler_cpu,
            "busy_cores_before": busy, "load1_before": before_load, "load1_after": load1(),
            "processes": processes["processes"], **extra}


def interleaved(variants: dict[str, Callable[[], dict | None]], repeats: int, **quiet) -> dict[str, list[dict]]:
    """Each repeat runs every variant once, the order rotated per repeat, so slow phases of a shared machine
    spread over all variants instead of landing on one."""
    names = list(variants)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sample = timed(variants[name], **quiet)
            sample["repeat"] = r
            samples[name].append(sample)
            print(f"  repeat {r} {name:>24s}: {sample['seconds']:7.2f} s  (busy before {sample['busy_cores_before']}"
                  f", load {sample['load1_before']:.2f} -> {sample['load1_after']:.2f})", flush=True)
    return samples


# ------------------------------------------------------------------------------------------- /proc


def process_stats() -> dict[int, tuple[int, float]]:
    """(parent pid, user + system CPU seconds) of every process on the machine, from /proc/<pid>/stat."""
    ticks, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
            out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)  # ppid, utime + stime
    return out


def descendants(stats: dict[int, tuple[int, float]], root: int | None = None) -> list[int]:
    """``root`` (default: this process) and every process below it (Ray's daemons and workers are descendants
    of the driver that started the cluster)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root or os.getpid()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def peak_rss(pid: int) -> int:
    """The kernel's peak resident bytes of a process (VmHWM)."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def anon_rss(pid: int) -> int:
    """A process's private resident bytes now (RssAnon): unlike VmHWM it leaves out the pages of Ray's shared
    object store that the process has read, which count in its resident memory but belong to the store."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def reset_peaks(pids: list[int]) -> None:
    """Reset the kernel's peak RSS (VmHWM) of these processes to their current RSS (Linux clear_refs 5), so a
    measurement's peak is its own and not left over from earlier work in a reused Ray worker."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass  # ended meanwhile, or not ours


def role(command_line: str) -> str:
    """A Ray process's role from the title Ray gives it (``ray::RecoveryWorker.recover``, ``ray::MapWorker(...)``)."""
    if command_line.startswith("ray::"):
        return command_line.split()[0].removeprefix("ray::").split(".")[0]
    for marker in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "default_worker"):
        if marker in command_line:
            return marker
    return command_line[:40]


class ProcessSampler(threading.Thread):
    """Polls this process and its descendants: CPU seconds each used since the sampler started, and peak RSS,
    by pid with the role seen last. Ray kills actors at the end of a stage and its raylet does not collect
    their CPU time, so the sampler polls often and counts what it saw last (a dying process loses at most one
    interval). Its own thread's CPU is reported so the driver's figure can leave it out."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self._done, self.sampler_cpu = interval, threading.Event(), 0.0
        stats = process_stats()
        pids = descendants(stats)
        self.first = {pid: stats[pid][1] for pid in pids}
        self.seen: dict[int, list] = {}  # pid -> [role, cpu seconds, peak bytes, peak private bytes as sampled]
        reset_peaks(pids)

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(self.interval)
        self.sampler_cpu = time.thread_time()

    def sample(self) -> None:
        stats = process_stats()
        for pid in descendants(stats):
            try:
                name = "driver" if pid == os.getpid() else role(cmdline(pid))
                peak, anon = peak_rss(pid), anon_rss(pid)
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue  # ended meanwhile
            old = self.seen.get(pid, ["", 0.0, 0, 0])
            # keep the most specific role: a pooled Ray worker shows "IDLE" between tasks
            self.seen[pid] = [name if name != "IDLE" or not old[0] else old[0], stats[pid][1], max(peak, old[2]),
                              max(anon, old[3])]

    def stop(self) -> dict:
        """CPU seconds of all the processes together, and one row per process (role, CPU, peak RSS, and the
        peak of its private resident memory among the samples)."""
        self._done.set()
        self.join()
        self.sample()
        rows = sorted(({"pid": pid, "role": name, "cpu_seconds": round(cpu - self.first.get(pid, 0.0), 2),
                        "peak_rss_mb": round(peak / 2**20, 1), "peak_anon_mb": round(anon / 2**20, 1)}
                       for pid, (name, cpu, peak, anon) in self.seen.items()),
                      key=lambda r: -r["peak_rss_mb"])
        return {"cpu_seconds": sum(r["cpu_seconds"] for r in rows) - self.sampler_cpu, "processes": rows}


def cpu_by_role(samples: list[dict]) -> dict[str, float]:
    """Median over samples of the CPU seconds each kind of process used (Ray's dashboard processes as one)."""
    per_sample = []
    for sample in samples:
        totals: dict[str, float] = {}
        for row in sample["processes"]:
            name = "dashboard" if "dashboard" in row["role"] or row["role"] == "DashboardAgent" else row["role"]
            totals[name] = totals.get(name, 0.0) + row["cpu_seconds"]
        per_sample.append(totals)
    names = {name for totals in per_sample for name in totals}
    medians = {name: statistics.median(t.get(name, 0.0) for t in per_sample) for name in names}
    return {name: round(v, 2) for name, v in sorted(medians.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def peaks_by_role(rows: list[dict], roles: tuple[str, ...]) -> dict[str, list[float]]:
    """Peak RSS (MB) of every process whose role contains one of ``roles``."""
    return {r: sorted((row["peak_rss_mb"] for row in rows if r in row["role"]), reverse=True) for r in roles}


# ------------------------------------------------------------------------------------------- teacher


def random_teacher(path: Path, num_classes: int = 10, width: int = 128, depth: int = 3, image_size: int = 32):
    """A randomly initialised BN ConvNet saved as a srel_ray teacher (throughput does not depend on its weights:
    the same operations run on the same shapes). Seeded, so every script and repeat uses the same teacher."""
    from srel_ray.core.normalization import Normalization
    from srel_ray.core.seeding import seeded_init
    from srel_ray.models import create_model
    from srel_ray.teacher import Teacher, save_teacher

    with seeded_init(0, num_classes, width, depth):
        model = create_model("convnet", num_classes, 3, image_size, width=width, depth=depth)
    teacher = Teacher("convnet", {"width": width, "depth": depth}, [f"class{c}" for c in range(num_classes)], 3,
                      image_size, Normalization(*CIFAR10_NORM), model.state_dict())
    save_teacher(teacher, str(path))
    return teacher


def start_ray(num_cpus: int | None = None) -> dict[str, str]:
    """The cluster a user gets from the CLI (srel_ray's own start-up, dashboard included); returns which checkout
    its workers import srel_ray from, for ``harness.write_result``'s ``ray_workers``."""
    from srel_ray.config import ResourcesConfig
    from srel_ray.distributed.cluster import start_ray as start

    for attempt in range(3):
        try:
            start(ResourcesConfig(num_cpus=num_cpus))
            break
        except Exception as e:  # Ray waits a fixed 30 s for its raylet, too short on a saturated machine
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            print(f"Ray start-up timed out (machine busy: load {load1()}); trying again", flush=True)
            import ray

            ray.shutdown()
    import ray.data  # configures its loggers on import: quieten them after

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution-plan lines
    # Ray puts the driver's working directory first on its workers' sys.path: a before/after run of another
    # checkout must start from that checkout, and this records which code the workers ran.
    return {"srel_ray_imported_from": ray.get(ray.remote(srel_ray_location).remote())}
