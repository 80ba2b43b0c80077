"""Recovery throughput: a bare single-process PyTorch loop against srel_ray's recover actor pool with one and with
two actors (one torch thread each), and the recovery step's compute against the machine's matrix-multiply rate.

    python benchmarks/recover_throughput.py [--width 128] [--ipc 40] [--iterations 20] [--repeats 3]

Teacher: a randomly initialised BN ConvNet (depth 3, width 128 as in jobs/configs/cifar10.yaml) on CIFAR-10-shaped
input (3 x 32 x 32, 10 classes); throughput does not depend on its weights. Units as in that config: 10 classes x
10 images = batches of 100 images, so ``--ipc 40`` gives four units, two per actor when there are two.

Variants, interleaved and repeated (the machine is shared). Every variant starts cold, as a recovery run by hand
does: ``bare`` is the loop below (load the teacher, optimise each unit, save PNGs; the shape of the reference
SRe2L script, with the same view, roll and BN-loss functions as srel_ray) in a new Python process, timed from its
spawn to its end; ``bare_2_processes`` is that loop in two new processes side by side, each taking half the units
(no Ray: how far this machine's two cores scale on their own); ``srel_ray_1_actor`` and ``srel_ray_2_actors`` are
``run_recover`` on a local Ray cluster started once, timed from the call to its return (the actors are started,
the teacher loaded and the images written inside each measurement); ``gemm`` is a 1024^3 fp32 matrix multiply
on one thread, the machine's floor. Besides whole runs, the unit seconds measured inside each process give the
steady state (every unit but a process's first, which also warms its allocator and kernels) and so the fixed
cost per run. Writes benchmarks/results/recover_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import harness
import measure
import torch
import torch.nn.functional as F
from PIL import Image

from srel_ray.config import Config, from_dict
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.normalization import to_uint8
from srel_ray.core.recover import cosine_lr, plan_units, recovery_views
from srel_ray.core.seeding import STREAM_RECOVER, generator
from srel_ray.core.views import render_views, roll
from srel_ray.teacher import load_teacher

GEMM_N, GEMM_REPS = 1024, 10


def make_config(ipc: int, iterations: int, actors: int) -> Config:
    return from_dict({
        "data": {"name": "parquet", "image_size": 32, "channels": 3, "hflip": True},
        "recover": {"ipc": ipc, "iterations": iterations, "classes_per_unit": 10, "ipc_per_unit": 10},
        "resources": {"recover_actors": actors, "threads_per_worker": 1, "cpus_per_actor": 1.0, "use_gpu": False},
    }).validate()


def bare_recover(teacher_path: str, cfg: Config, out: Path, part: tuple[int, int] = (0, 1)) -> dict:
    """The whole recovery in one process, written out plainly: what one would run without srel_ray.
    ``part`` (i, n): only every n-th unit from the i-th (one of n processes running side by side)."""
    r = cfg.recover
    teacher = load_teacher(teacher_path)
    model, norm, size = teacher.build().eval(), teacher.norm, cfg.data.image_size
    for p in model.parameters():
        p.requires_grad_(False)
    bn = BNStatsMatcher(model)
    unit_seconds = []
    for unit in plan_units(teacher.num_classes, r.ipc, r.classes_per_unit, r.ipc_per_unit)[part[0]::part[1]]:
        began = time.perf_counter()
        gen = generator(cfg.seed, STREAM_RECOVER, unit.index)
        targets = torch.tensor([c for c, _ in unit.targets()])
        x = torch.randn(len(targets), 3, size, size, generator=gen).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=r.lr, betas=(0.5, 0.9), eps=1e-8)
        low, high = norm.bounds(x)
        for step in range(r.iterations):
            optimizer.param_groups[0]["lr"] = cosine_lr(r.lr, step, r.iterations)
            views, shift = recovery_views(cfg.seed, unit.index, step, len(x), size, r.crop_scale, cfg.data.hflip,
                                          r.jitter)
            logits = model(roll(render_views(x, views, size), shift))
            loss = F.cross_entropy(logits, targets) + r.bn_weight * bn.loss(r.first_bn_multiplier)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        images = to_uint8(norm.denormalize(x.detach()))
        for (c, i), image in zip(unit.targets(), images):
            (out / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / str(c) / f"{i:05d}.png")
        unit_seconds.append(time.perf_counter() - began)
    bn.remove()
    return {"unit_seconds": unit_seconds, "pid": os.getpid()}


def bare_in_new_processes(teacher_path: str, cfg: Config, out: Path, n: int) -> dict:
    """The bare loop in ``n`` new processes, each taking every n-th unit (a recovery started by hand, ``n`` times
    side by side): spawning them, importing torch and loading the teacher count, as they do for a user."""
    with ProcessPoolExecutor(n, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        parts = [f.result() for f in [pool.submit(bare_recover, teacher_path, cfg, out, (i, n)) for i in range(n)]]
    return {"unit_seconds": [u for p in parts for u in p["unit_seconds"]],
            "warm_unit_seconds": [u for p in parts for u in p["unit_seconds"][1:]],
            "workers": n}


def srel_ray_recover(teacher_path: str, cfg: Config, set_dir: Path, num_classes: int) -> dict:
    from srel_ray.distributed.recover import run_recover

    result = run_recover(cfg, teacher_path, str(set_dir), num_classes, use_gpu=False)
    # pid -> (unit, seconds): the pool hands out units in order, so an actor's first unit has its lowest index
    per_actor: dict[int, list[tuple[int, float]]] = {}
    for s in result["stats"]:
        per_actor.setdefault(s["worker"]["pid"], []).append((s["unit"], s["seconds"]))
    warm = [sec for units in per_actor.values() for _, sec in sorted(units)[1:]]
    return {"unit_seconds": [s["seconds"] for s in result["stats"]], "warm_unit_seconds": warm,
            "workers": len(result["actors"])}


def gemm() -> dict:
    """The matrix-multiply rate per wall second and per CPU second of this thread (the latter does not count
    time spent waiting for a core on a busy machine)."""
    a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
    torch.mm(a, b)  # warm-up
    began, began_cpu = time.perf_counter(), time.thread_time()
    for _ in range(GEMM_REPS):
        torch.mm(a, b)
    flops = 2 * GEMM_N**3 * GEMM_REPS
    return {"gflops": flops / (time.perf_counter() - began) / 1e9,
            "gflops_per_cpu_second": flops / (time.thread_time() - began_cpu) / 1e9}


def step_flops_and_profile(teacher_path: str, cfg: Config) -> tuple[float, list[dict]]:
    """FLOPs of the teacher's forward + backward in one recovery step (counted by torch, matmuls and
    convolutions), per image; and the step's operators by self CPU time over a few profiled steps."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    teacher = load_teacher(teacher_path)
    model = teacher.build().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n, size = cfg.recover.classes_per_unit * cfg.recover.ipc_per_unit, cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=gen).requires_grad_(True)
    targets = torch.arange(n) % teacher.num_classes

    def step() -> None:
        views, shift = recovery_views(0, 0, 0, n, size, cfg.recover.crop_scale, True, 4)
        F.cross_entropy(model(roll(render_views(x, views, size), shift)), targets).backward()

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3)} for e in events[:10]]
    return counter.get_total_flops() / n, top


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ipc", type=int, default=40, help="images per class; 10 per unit")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-busy", type=float, default=0.5, help="wait for other work to take fewer cores")
    parser.add_argument("--wait", type=float, default=30.0, help="... for at most this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = parser.parse_args()
    if args.ipc % 20 or args.ipc < 40:
        parser.error(f"--ipc must be a multiple of 20 and at least 40 (two units per actor or process of the 2-worker "
                     f"variants, so each has a warm unit), got {args.ipc}")
    torch.set_num_threads(1)  # the bare loop and the GEMM run at the thread count of one actor

    work = Path(tempfile.mkdtemp(prefix="srel-bench-recover-"))
    teacher_path = str(work / "teacher.pt")
    teacher = measure.random_teacher(Path(teacher_path), width=args.width)
    configs = {a: make_config(args.ipc, args.iterations, a) for a in (1, 2)}
    image_iterations = teacher.num_classes * args.ipc * args.iterations
    workers = measure.start_ray()
    counter = iter(range(10**6))

    def fresh(name: str) -> Path:
        return work / f"{name}-{next(counter)}"

    variants = {
        "bare": lambda: bare_in_new_processes(teacher_path, configs[1], fresh("bare"), 1),
        "bare_2_processes": lambda: bare_in_new_processes(teacher_path, configs[1], fresh("bare2"), 2),
        "srel_ray_1_actor": lambda: srel_ray_recover(teacher_path, configs[1], fresh("ray1"), teacher.num_classes),
        "srel_ray_2_actors": lambda: srel_ray_recover(teacher_path, configs[2], fresh("ray2"), teacher.num_classes),
        "gemm": gemm,
    }
    print(f"recover: {image_iterations} image-iterations per run, {args.repeats} repeats; work in {work}")
    samples = measure.interleaved(variants, args.repeats, max_busy=args.max_busy, wait=args.wait)
    identical = _same_images(next(work.glob("bare-*")), next(work.glob("bare2-*")), next(work.glob("ray1-*")),
                             next(work.glob("ray2-*")))
    flops_per_image_iteration, top_ops = step_flops_and_profile(teacher_path, configs[1])
    shutil.rmtree(work)

    rate = {name: harness.rates(samples[name], image_iterations) for name in variants if name != "gemm"}
    gemm_gflops = harness.median_range([s["gflops"] for s in samples["gemm"]])
    gemm_gflops_cpu = harness.median_range([s["gflops_per_cpu_second"] for s in samples["gemm"]])
    per_repeat = [{"overhead_1_actor": samples["srel_ray_1_actor"][r]["seconds"] / samples["bare"][r]["seconds"] - 1,
                   "speedup_2_over_1": samples["srel_ray_1_actor"][r]["seconds"]
                   / samples["srel_ray_2_actors"][r]["seconds"],
                   "speedup_bare_2_processes": samples["bare"][r]["seconds"] / samples["bare_2_processes"][r]["seconds"]}
                  for r in range(args.repeats)]
    # Steady state: the units after each process's first; the rest of a run's wall time is its fixed cost (process
    # or actor start, torch import, teacher load, the first unit's warm-up beyond a warm unit, scheduling).
    warm = {name: harness.median_range([u for s in samples[name] for u in s["warm_unit_seconds"]]) for name in rate}
    fixed = {name: harness.median_range([s["seconds"] - len(s["unit_seconds"]) / s["workers"] * warm[name]["median"]
                                  for s in samples[name]]) for name in rate}
    # CPU seconds per 1000 image-iterations: what the work costs whatever else runs on the machine (wall time on a
    # shared machine also counts waiting for a core). Every process below the benchmark counts, Ray's daemons
    # included (they idle beside the bare variants too); cpu_seconds_by_role splits it.
    cpu = {name: harness.median_range([s["cpu_seconds"] / image_iterations * 1e3 for s in samples[name]]) for name in rate}
    # The loop's own rate: a warm unit's work over its seconds (one thread, nothing else in that process). Its CPU
    # time equals its wall time on an idle core; on a busy machine compare with the GEMM's rate per CPU second.
    achieved = achieved_cpu = flops_per_image_iteration * args.iterations * 100 / warm["bare"]["median"] / 1e9
    summary = {
        "image_iterations_per_second": {k: v["median"] for k, v in rate.items()},
        "overhead_1_actor_over_bare": harness.median_range([p["overhead_1_actor"] for p in per_repeat]),
        "speedup_2_actors_over_1": harness.median_range([p["speedup_2_over_1"] for p in per_repeat]),
        "speedup_bare_2_processes_over_bare": harness.median_range([p["speedup_bare_2_processes"] for p in per_repeat]),
        "targets": {"overhead_1_actor_over_bare": "< 0.05", "speedup_2_actors_over_1": "> 1.8"},
        "cpu_seconds_per_1000_image_iterations": cpu,
        "cpu_overhead_1_actor_over_bare": cpu["srel_ray_1_actor"]["median"] / cpu["bare"]["median"] - 1,
        "warm_unit_seconds": warm,
        "steady_state_overhead_1_actor_over_bare": warm["srel_ray_1_actor"]["median"] / warm["bare"]["median"] - 1,
        "fixed_seconds_per_run": fixed,
        "outputs_identical_bare_1_actor_2_actors": identical,
        "flops_per_image_iteration": flops_per_image_iteration,
        "achieved_gflops_bare": achieved,
        "gemm_gflops_1_thread": gemm_gflops,
        "compute_fraction_of_gemm_rate": achieved / gemm_gflops["median"],
        "achieved_gflops_per_cpu_second_bare": achieved_cpu,
        "gemm_gflops_per_cpu_second": gemm_gflops_cpu,
        "compute_fraction_of_gemm_rate_cpu": achieved_cpu / gemm_gflops_cpu["median"],
        "cpu_seconds_by_role": {name: measure.cpu_by_role(samples[name]) for name in cpu},
        "step_top_ops": top_ops,
    }
    setup = {"teacher": {"arch": "convnet", "width": args.width, "depth": 3, "weights": "random init (seeded)",
                         "num_classes": 10, "input": [3, 32, 32]},
             "ipc": args.ipc, "iterations": args.iterations, "batch": 100, "units": args.ipc // 10,
             "image_iterations_per_run": image_iterations, "threads_per_worker": 1, "repeats": args.repeats,
             "gemm": {"n": GEMM_N, "reps": GEMM_REPS, "dtype": "float32", "threads": 1}}
    harness.write_result("recover_throughput", {"setup": setup, "summary": summary, "rates": rate,
                                               "per_repeat": per_repeat, "samples": samples}, args.out, workers)
    for key in ("image_iterations_per_second", "overhead_1_actor_over_bare", "speedup_2_actors_over_1",
                "speedup_bare_2_processes_over_bare", "steady_state_overhead_1_actor_over_bare",
                "fixed_seconds_per_run", "cpu_overhead_1_actor_over_bare", "compute_fraction_of_gemm_rate_cpu",
                "outputs_identical_bare_1_actor_2_actors"):
        print(f"{key}: {summary[key]}")


def _same_images(*dirs: Path) -> bool:
    """Bare loop and srel_ray wrote bit-identical images (the same optimisation, whatever the actor count)."""
    def pixels(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)).removeprefix("images/"): Image.open(io.BytesIO(p.read_bytes())).tobytes()
                for p in sorted(folder.rglob("*.png"))}

    first = pixels(dirs[0])
    return bool(first) and all(pixels(d) == first for d in dirs[1:])


if __name__ == "__main__":
    main()
