"""The hot loops on a GPU, in one short run (about 2 minutes on one recent GPU, well under 5): recovery ms per
iteration (ResNet-18, 224 px, batch 100, the setting of the published ~52 ms per iteration on one consumer GPU), relabel
views per second and student images per second, each in fp32 and in bf16 (or fp16 where bf16 is missing).

    python benchmarks/gpu_check.py                       # on the first CUDA GPU
    python benchmarks/gpu_check.py --device cpu --quick  # a tiny CPU run (the unit test runs this)
    python benchmarks/gpu_check.py --compile             # with torch.compile (resources.compile: true)

All three use srel_ray's own loops: ``recover_unit`` (ms per iteration = the difference of a warm run and a longer
one, divided by the extra steps, so start-up and autotuning cancel), ``label_views`` on uint8 view rows (the
labelling actor's work), ``train_student_epoch`` on device-resident uint8 images. Random weights and images: time
does not depend on them. Writes benchmarks/results/gpu_check.json (or --out) and prints one line per measurement.
"""

from __future__ import annotations

import argparse
import time

import harness
import torch

import hot_loops
from srel_ray.core.precision import prepare_model, supported
from srel_ray.core.recover import freeze

PUBLISHED_MS = 52.0  # SRe2L recovery, ResNet-18 at 224 px, batch 100, one consumer GPU (docs/scaling.md)
FULL = {"arch": "resnet18", "size": 224, "kwargs": {}, "classes": 1000, "batch": 100, "warm": 10, "steps": 40,
        "relabel_views": 4096, "relabel_batch": 256, "student_images": 2048, "student_batch": 128}
QUICK = {"arch": "convnet", "size": 16, "kwargs": {"width": 16, "depth": 2}, "classes": 10, "batch": 8, "warm": 0,
         "steps": 2, "relabel_views": 32, "relabel_batch": 16, "student_images": 32, "student_batch": 16}


def synced(device: torch.device, fn):
    """Wall seconds of ``fn`` with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began, out


def recovery_ms(s: dict, device: torch.device, precision: str, compile_model: bool) -> float:
    model = prepare_model(freeze(hot_loops.make_model(s["arch"], s["size"], s["kwargs"], s["classes"], device)),
                          device, compile_model)
    kw = dict(precision=precision, device=device, batch=s["batch"])
    hot_loops.recover_seconds(model, 2, s["size"], legacy=False, **kw)  # first-call costs, autotuning, compilation
    long = hot_loops.recover_seconds(model, s["warm"] + s["steps"], s["size"], legacy=False, **kw)
    if not s["warm"]:  # --quick: one run, fixed costs included (a difference of two tiny runs is noise)
        return long / s["steps"] * 1e3
    short = hot_loops.recover_seconds(model, s["warm"], s["size"], legacy=False, **kw)
    return (long - short) / s["steps"] * 1e3


def relabel_rate(s: dict, device: torch.device, precision: str, compile_model: bool) -> float:
    model = prepare_model(freeze(hot_loops.make_model(s["arch"], s["size"], s["kwargs"], s["classes"], device)),
                          device, compile_model)
    rows, views = hot_loops.relabel_inputs(s["relabel_views"], 1, s["size"])

    def run():
        return hot_loops.relabel_after(model, rows, views, s["size"], s["relabel_batch"], device, precision)

    run()  # warm-up (cuDNN autotuning, compilation)
    seconds, _ = synced(device, run)
    return len(rows) / seconds


def student_rate(s: dict, device: torch.device, precision: str) -> float:
    images, labels, model, optimizer, scheduler = hot_loops.student_setup(
        s["arch"], s["size"], s["kwargs"], s["student_images"], s["classes"], device)
    model = prepare_model(model, device)

    def run():
        return hot_loops.student_epoch(False, model, optimizer, scheduler, images, labels, s["size"],
                                       s["student_batch"], device, precision)

    run()  # warm-up
    seconds, _ = synced(device, run)
    return len(images) / seconds


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny ConvNet at 16 px: seconds, for a smoke test")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (resources.compile)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/gpu_check.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU; use --device cpu --quick for the CPU smoke run")
    s = QUICK if args.quick else FULL
    low = "bf16" if "bf16" in supported(device) else "fp16"
    precisions = ["fp32", low]
    began = time.perf_counter()
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "setup": s, "compile": args.compile, "precisions": precisions,
              "published_ms_per_iteration": PUBLISHED_MS, "recovery_ms_per_iteration": {},
              "relabel_views_per_second": {}, "student_images_per_second": {}}
    for p in precisions:
        ms = recovery_ms(s, device, p, args.compile)
        result["recovery_ms_per_iteration"][p] = ms
        print(f"recovery {s['arch']} {s['size']} px batch {s['batch']} {p}: {ms:.1f} ms/iteration "
              f"({ms / PUBLISHED_MS:.2f} x the published {PUBLISHED_MS:.0f} ms)", flush=True)
    for p in precisions:
        rate = relabel_rate(s, device, p, args.compile)
        result["relabel_views_per_second"][p] = rate
        print(f"relabel {p}: {rate:.0f} views/s", flush=True)
    for p in precisions:
        rate = student_rate(s, device, p)
        result["student_images_per_second"][p] = rate
        print(f"student {p}: {rate:.0f} images/s", flush=True)
    result["seconds"] = time.perf_counter() - began
    harness.write_result("gpu_check", result, args.out)


if __name__ == "__main__":
    main()
