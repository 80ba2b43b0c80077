"""The hot loops before and after issue 21, timed side by side in one process (the machine is shared: only ratios
measured within one run mean much): recovery steps, relabel, student training.

    python benchmarks/hot_loops.py [--repeats 3] [--threads 1]

Recovery (batch 100, SRe2L's defaults): ``srel_ray.core.recover.recover_unit`` itself, with the step's augmentation
drawn two ways: ``before``, the sampler of the previous revision (``legacy_recovery_views`` below: one generator per
unit drawn image by image, ``sample_views`` + ``roll_shift``, ~4 RNG calls and Python per image); ``after``, the
batched, step-keyed ``recovery_views``. Everything else in the step is the same code, so on the CPU the ratio is the
sampler's share; on a GPU the old code also paid a host-device copy per box column (not reproduced here). Two
teachers: a BN ConvNet (width 128, depth 3) at 32 px and torchvision's ResNet-18 at 64 px, 10 classes, random
weights (time does not depend on them). A step's time is the CPU time of the (only) torch thread over a run of
N steps, divided by N (CPU time, not wall time: the machine is shared, and wall time counts waiting for a core).
The Python share of a step: torch.profiler over a few steps, 1 - (time inside profiled operators, by self time) /
wall time; it also counts the profiler's own overhead, so compare before with after, not with 0.

Relabel (one labelling actor's work on one block): ``before`` renders the views on the map step's CPU into float32
pixels and ships those (the previous pipeline), then runs the teacher; ``after`` ships each view's uint8 source
image and renders on the labeller's device (``label_views``). Reports views/s and bytes per view crossing the
object store, and that the logits are equal bit for bit. Rates by the thread's CPU time, as above.

Student: one epoch of ``train_student_epoch`` (``after``: views rendered from device-resident uint8 images, loss
summed on the device, read once) against the previous loop (``legacy_student_epoch`` below: rendered on the host,
copied per batch, ``float(loss)`` per batch); images/s by CPU time, and that the two losses agree.

Writes benchmarks/results/hot_loops.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from unittest import mock

import harness
import measure
import torch

import srel_ray.core.recover as recover_module
from srel_ray.config import Config, DataConfig, RecoverConfig
from srel_ray.core.losses import soft_label_kl
from srel_ray.core.normalization import Normalization
from srel_ray.core.recover import Recovery, Unit, freeze, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.relabel import label_views, teacher_logits, view_pixels, views_for
from srel_ray.core.seeding import STREAM_RECOVER, generator, seeded_init
from srel_ray.core.student import EpochLabels, shard_order, stretched_cosine, train_student_epoch
from srel_ray.core.views import Views, roll_shift, sample_views
from srel_ray.models import create_model

NORM = Normalization(*measure.CIFAR10_NORM)
TEACHERS = {"convnet_32px": ("convnet", 32, {"width": 128, "depth": 3}),
            "resnet18_64px": ("resnet18", 64, {})}


def make_model(arch: str, image_size: int, kwargs: dict, num_classes: int = 10, device="cpu") -> torch.nn.Module:
    with seeded_init(0, image_size):
        return create_model(arch, num_classes, 3, image_size, **kwargs).to(device)


# ------------------------------------------------------------------------------------------- recovery


_legacy_generators: dict[tuple[int, int], torch.Generator] = {}


def legacy_recovery_views(seed, unit, step, n, image_size, scale, hflip, jitter):
    """The previous revision's draw: one generator per unit, consumed image by image, step after step."""
    if step == 0:
        _legacy_generators[(seed, unit)] = generator(seed, STREAM_RECOVER, unit)
    gen = _legacy_generators[(seed, unit)]
    views = sample_views(n, image_size, image_size, scale, gen, hflip)
    return views, roll_shift(jitter, gen)


def recover_seconds(model, iterations: int, image_size: int, legacy: bool, precision: str = "fp32",
                    device="cpu", batch: int = 100, clock=time.perf_counter) -> float:
    """Seconds of ``recover_unit`` at ``iterations`` steps by ``clock`` (synchronised at the end by its copy to the
    host). ``time.thread_time``: this thread's CPU seconds, which do not count waiting for a core on a busy machine
    (torch runs one intra-op thread here: the calling one)."""
    classes = tuple(range(min(10, batch)))
    unit = Unit(0, classes, 0, batch // len(classes))
    recovery, terms = sre2l_recovery(model, iterations, image_size, device, precision)
    views = legacy_recovery_views if legacy else recover_module.recovery_views
    with mock.patch.object(recover_module, "recovery_views", views):
        began = clock()
        recover_unit(recovery, unit, terms)
        return clock() - began


def sre2l_recovery(model, iterations: int, image_size: int, device="cpu", precision: str = "fp32"):
    """SRe2L's defaults at ``iterations`` steps (jitter 4) with ``model`` as the one teacher; and its terms."""
    cfg = Config(data=DataConfig(image_size=image_size), recover=RecoverConfig(iterations=iterations, jitter=4))
    return (Recovery.of(cfg, [model], NORM, device=device, precision=precision), recover_terms(cfg.recover))


def cpu_step_ms(model, image_size: int, legacy: bool, steps: int) -> float:
    """This thread's CPU milliseconds per recovery step over one run of ``steps`` (fixed costs included: a small
    share at these step costs)."""
    return recover_seconds(model, steps, image_size, legacy, clock=time.thread_time) / steps * 1e3


def python_share(model, image_size: int, legacy: bool, steps: int = 3) -> dict:
    """1 - (self time of profiled operators) / wall time over ``steps`` recovery steps; and the sampler's own time."""
    from torch.profiler import ProfilerActivity, profile

    sampler = recover_module.recovery_views if not legacy else legacy_recovery_views
    spent = []

    def timed_sampler(*args):
        began = time.thread_time()
        out = sampler(*args)
        spent.append(time.thread_time() - began)
        return out

    recover_seconds(model, 1, image_size, legacy)  # warm-up outside the profile
    recovery, terms = sre2l_recovery(model, steps, image_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof, mock.patch.object(recover_module, "recovery_views",
                                                                              timed_sampler):
        began = time.perf_counter()
        recover_unit(recovery, Unit(0, tuple(range(10)), 0, 10), terms)
        wall = time.perf_counter() - began
    user_scopes = ("Optimizer.", "ProfilerStep", "##")  # record_function regions: their self time is Python
    op_us = sum(e.self_cpu_time_total for e in prof.key_averages() if not e.key.startswith(user_scopes))
    return {"python_share": 1 - op_us / 1e6 / wall, "sampler_ms_per_step": 1e3 * sum(spent) / len(spent),
            "profiled_wall_ms_per_step": 1e3 * wall / steps}


def bench_recovery(repeats: int) -> dict:
    out = {}
    for name, (arch, size, kwargs) in TEACHERS.items():
        model = freeze(make_model(arch, size, kwargs))
        steps = 8 if arch == "convnet" else 4
        recover_seconds(model, 2, size, legacy=False)  # first-call costs (allocator, kernels) out of every sample
        samples = {"before": [], "after": []}
        for r in range(repeats):
            for variant in (("before", "after") if r % 2 == 0 else ("after", "before")):
                samples[variant].append(cpu_step_ms(model, size, variant == "before", steps))
        ratios = [b / a for b, a in zip(samples["before"], samples["after"])]
        out[name] = {"cpu_ms_per_step": {k: harness.median_range(v) for k, v in samples.items()},
                     "speedup_after_over_before": harness.median_range(ratios),
                     "profile": {"before": python_share(model, size, True), "after": python_share(model, size, False)},
                     "batch": 100, "steps_per_sample": steps}
        print(name, {k: round(v["median"], 1) for k, v in out[name]["cpu_ms_per_step"].items()},
              "speedup", round(out[name]["speedup_after_over_before"]["median"], 3), flush=True)
    return out


# ------------------------------------------------------------------------------------------- relabel


def relabel_inputs(num_images: int, k: int, size: int, seed: int = 0) -> tuple[torch.Tensor, Views]:
    """Random uint8 images (one row per view, as a relabel block holds them) and their epoch-0 views."""
    images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    views = [views_for(seed, i, 0, k, size, size, (0.08, 1.0)) for i in range(num_images)]
    boxes, flips = torch.cat([v.boxes for v in views]), torch.cat([v.flips for v in views])
    return images.repeat_interleave(k, 0), Views(boxes, flips)


def relabel_before(model, rows_uint8, views, size, batch_size, device="cpu") -> tuple[torch.Tensor, int]:
    """The previous pipeline: float32 view pixels rendered on the map step's CPU, shipped, then labelled."""
    pixels = view_pixels(rows_uint8, views, size, NORM)
    return teacher_logits(model, pixels, batch_size, device), pixels.numpy().nbytes


def relabel_after(model, rows_uint8, views, size, batch_size, device="cpu", precision="fp32"
                  ) -> tuple[torch.Tensor, int]:
    logits = label_views([model], rows_uint8, views, image_size=size, norm=NORM, batch_size=batch_size,
                         device=device, precision=precision)
    return logits, rows_uint8.numpy().nbytes


def bench_relabel(repeats: int) -> dict:
    model = freeze(make_model("convnet", 32, {"width": 128, "depth": 3}))
    rows, views = relabel_inputs(512, 1, 32)
    samples = {"before": [], "after": []}
    for r in range(repeats):
        for variant in (("before", "after") if r % 2 == 0 else ("after", "before")):
            fn = relabel_before if variant == "before" else relabel_after
            began = time.thread_time()
            logits, shipped = fn(model, rows, views, 32, 256)
            samples[variant].append({"views_per_second": len(rows) / (time.thread_time() - began),
                                     "bytes_per_view": shipped / len(rows)})
    equal = torch.equal(relabel_before(model, rows, views, 32, 256)[0], relabel_after(model, rows, views, 32, 256)[0])
    vps = {k: harness.median_range([s["views_per_second"] for s in v]) for k, v in samples.items()}
    out = {"views_per_second": vps, "bytes_per_view_shipped": {k: v[0]["bytes_per_view"] for k, v in samples.items()},
           "speedup_after_over_before": harness.median_range([a["views_per_second"] / b["views_per_second"]
                                                       for a, b in zip(samples["after"], samples["before"])]),
           "logits_identical": equal, "views": len(rows), "teacher": "convnet w128 d3, 32 px", "batch": 256}
    print("relabel", {k: round(v["median"]) for k, v in vps.items()}, "identical", equal, flush=True)
    return out


# ------------------------------------------------------------------------------------------- student


def legacy_student_epoch(model, optimizer, scheduler, images, labels: EpochLabels, *, epoch, seed, batch_size,
                         temperature, image_size, device="cpu") -> float:
    """The previous loop: views rendered on the host per batch, copied, ``float(loss)`` after every batch."""
    model.train()
    rows = shard_order(len(labels.image_index), seed, epoch, 0, 1)
    total, count = 0.0, 0
    for batch in rows.split(batch_size):
        idx = labels.image_index[batch]
        x = view_pixels(images[idx], Views(labels.views.boxes[batch], labels.views.flips[batch]), image_size,
                        NORM).to(device)
        loss = soft_label_kl(model(x), labels.targets(batch).to(device), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(batch)
        count += len(batch)
    return total / max(count, 1)


def student_setup(arch: str, size: int, kwargs: dict, num_images: int, num_classes: int, device="cpu"):
    rows, views = relabel_inputs(num_images, 1, size)
    labels = EpochLabels(torch.arange(num_images), views,
                         torch.randn(num_images, num_classes, generator=torch.Generator().manual_seed(1)))
    model = make_model(arch, size, kwargs, num_classes, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return rows, labels, model, optimizer, stretched_cosine(optimizer, 1000)


def student_epoch(legacy: bool, model, optimizer, scheduler, images, labels, size, batch_size, device="cpu",
                  precision="fp32") -> float:
    kw = dict(epoch=0, seed=0, batch_size=batch_size, temperature=4.0, image_size=size, device=device)
    if legacy:
        return legacy_student_epoch(model, optimizer, scheduler, images, labels, **kw)
    return train_student_epoch(model, optimizer, scheduler, images, torch.zeros(len(images), dtype=torch.long),
                               labels, norm=NORM, precision=precision, **kw)


def bench_student(repeats: int) -> dict:
    images, labels, model, optimizer, scheduler = student_setup("convnet", 32, {"width": 128, "depth": 3}, 512, 10)
    start = copy.deepcopy((model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))
    samples, losses = {"before": [], "after": []}, {}
    for r in range(repeats):
        for variant in (("before", "after") if r % 2 == 0 else ("after", "before")):
            model.load_state_dict(start[0]), optimizer.load_state_dict(start[1]), scheduler.load_state_dict(start[2])
            began = time.thread_time()
            losses[variant] = student_epoch(variant == "before", model, optimizer, scheduler, images, labels, 32, 64)
            samples[variant].append(len(images) / (time.thread_time() - began))
    ips = {k: harness.median_range(v) for k, v in samples.items()}
    out = {"images_per_second": ips, "speedup_after_over_before": harness.median_range(
        [a / b for a, b in zip(samples["after"], samples["before"])]),
        "epoch_loss": losses, "losses_equal": losses["before"] == losses["after"],
        "student": "convnet w128 d3, 32 px", "images": len(images), "batch": 64}
    print("student", {k: round(v["median"]) for k, v in ips.items()}, "losses equal", out["losses_equal"], flush=True)
    return out


def main() -> None:
    harness.quiet_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine has 2 cores, shared)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/hot_loops.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"setup": {"threads": args.threads, "repeats": args.repeats, "device": "cpu",
                        "note": "shared machine: compare the before/after ratios measured within this run"},
              "load1_before": measure.load1(),
              "recovery": bench_recovery(args.repeats), "relabel": bench_relabel(args.repeats),
              "student": bench_student(args.repeats), "load1_after": measure.load1()}
    harness.write_result("hot_loops", result, args.out)


if __name__ == "__main__":
    main()
