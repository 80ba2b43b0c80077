"""Issue 21's hot loops: the batched crop sampler of recovery, mixed precision, and uint8 relabel rows rendered where
the teacher runs (no Ray)."""

import math
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srel_ray.config import Config, DataConfig, RecoverConfig, load_config
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.normalization import Normalization, to_uint8
from srel_ray.core.precision import autocast, resolve_precision
from srel_ray.core.recover import Recovery, Unit, cosine_lr, freeze, recover_unit, recovery_views
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.relabel import label_views, row_views, teacher_logits, view_pixels, view_rows
from srel_ray.core.seeding import STREAM_RECOVER, STREAM_RECOVER_VIEWS, generator, seeded_init
from srel_ray.core.views import RATIO, render_views, roll, sample_boxes, sample_boxes_batched
from srel_ray.errors import ConfigError
from srel_ray.models import create_model

NORM = Normalization((0.5,), (0.5,))
REPO = Path(__file__).resolve().parents[2]


def _recover_unit(teacher, unit, cfg, seed, precision, on_step=None):
    recovery = Recovery.of(Config(seed=seed, data=DataConfig(image_size=8), recover=cfg), [teacher], NORM,
                           precision=precision)
    return recover_unit(recovery, unit, recover_terms(cfg), on_step=on_step)


def documented_boxes(n, height, width, scale, gen, ratio=RATIO, tries=10):
    """sample_boxes_batched as its docstring states it, one image at a time in plain Python: draw rand(n, tries)
    area fractions, rand(n, tries) log aspects, rand(n, 2) positions; keep the first try that fits; else the
    centre square."""
    area_u = torch.rand(n, tries, generator=gen, dtype=torch.float64).tolist()
    aspect_u = torch.rand(n, tries, generator=gen, dtype=torch.float64).tolist()
    position = torch.rand(n, 2, generator=gen, dtype=torch.float64).tolist()
    out = []
    for i in range(n):
        box = None
        for t in range(tries):
            target = height * width * (scale[0] + (scale[1] - scale[0]) * area_u[i][t])
            aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * aspect_u[i][t])
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                box = [math.floor(position[i][0] * (height - h + 1)), math.floor(position[i][1] * (width - w + 1)),
                       h, w]
                break
        side = min(height, width)
        out.append(box or [(height - side) // 2, (width - side) // 2, side, side])
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (24, 40, (0.25, 0.5)), (7, 5, (0.9, 1.0)),
                                                (224, 224, (0.08, 1.0)), (16, 16, (1.0, 1.0))])
def test_batched_boxes_equal_the_documented_function_and_fit(height, width, scale):
    got = sample_boxes_batched(500, height, width, scale, torch.Generator().manual_seed(3))
    assert torch.equal(got, documented_boxes(500, height, width, scale, torch.Generator().manual_seed(3)))
    top, left, h, w = got.unbind(1)
    assert (got == got.round()).all() and (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def test_batched_boxes_fall_back_to_the_centre_square_when_no_try_fits():
    # An area above the image's with an aspect far from 1 never fits: every box is the centre square.
    boxes = sample_boxes_batched(20, 10, 30, (2.0, 2.0), torch.Generator().manual_seed(0), ratio=(4.0, 5.0))
    assert boxes.tolist() == [[0, 10, 10, 10]] * 20


def test_batched_boxes_follow_torchvisions_distribution():
    """Same law as the per-image sampler (different numbers): mean area and aspect agree within sampling error."""
    a = sample_boxes_batched(20000, 32, 32, (0.08, 1.0), torch.Generator().manual_seed(1))
    b = sample_boxes(4000, 32, 32, (0.08, 1.0), torch.Generator().manual_seed(1))
    for boxes_stat in (lambda x: (x[:, 2] * x[:, 3]).mean() / 1024, lambda x: (x[:, 3] / x[:, 2]).log().mean(),
                       lambda x: x[:, 0].mean() / 32):
        assert abs(float(boxes_stat(a)) - float(boxes_stat(b))) < 0.02


def test_recovery_views_are_keyed_by_seed_unit_and_step():
    args = dict(n=50, image_size=32, scale=(0.08, 1.0), hflip=True, jitter=4)
    first, shift = recovery_views(0, 5, 7, **args)
    again, shift_again = recovery_views(0, 5, 7, **args)
    assert torch.equal(first.boxes, again.boxes) and torch.equal(first.flips, again.flips) and shift == shift_again
    for other in (dict(seed=1, unit=5, step=7), dict(seed=0, unit=6, step=7), dict(seed=0, unit=5, step=8)):
        assert not torch.equal(recovery_views(**other, **args)[0].boxes, first.boxes), other
    # What it is: the batched sampler, then flips, then the roll, from generator(seed, STREAM_RECOVER_VIEWS, ...).
    gen = generator(0, STREAM_RECOVER_VIEWS, 5, 7)
    assert torch.equal(first.boxes, sample_boxes_batched(50, 32, 32, (0.08, 1.0), gen))
    assert torch.equal(first.flips, torch.rand(50, generator=gen) < 0.5)
    assert shift == tuple(int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
    assert first.flips.any() and not first.flips.all()
    assert not recovery_views(0, 5, 7, **{**args, "hflip": False})[0].flips.any()


def _teacher(channels=1, size=8):
    with seeded_init(123):
        model = create_model("convnet", num_classes=3, in_channels=channels, image_size=size, width=8, depth=1)
    bn = model.features[1]
    bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8))
    bn.running_var.copy_(torch.linspace(0.05, 0.3, 8))
    return freeze(model)


def test_fp32_recover_unit_is_the_plain_sre2l_loop_with_the_new_views():
    """recover_unit at fp32 against the previous loop written out plainly, with only the augmentation's source
    swapped for recovery_views: bit-identical images."""
    teacher, unit = _teacher(), Unit(2, (0, 1, 2), 0, 2)
    cfg = RecoverConfig(iterations=6, lr=0.1, bn_weight=0.01, first_bn_multiplier=10.0, jitter=1, crop_scale=(0.5, 1.0))
    got, _ = _recover_unit(teacher, unit, cfg, seed=4, precision="fp32")

    targets = torch.tensor([c for c, _ in unit.targets()])
    x = torch.randn(6, 1, 8, 8, generator=generator(4, STREAM_RECOVER, 2)).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    low, high = NORM.bounds(x)
    with BNStatsMatcher(teacher) as bn:
        for step in range(cfg.iterations):
            optimizer.param_groups[0]["lr"] = cosine_lr(cfg.lr, step, cfg.iterations)
            views, shift = recovery_views(4, 2, step, 6, 8, cfg.crop_scale, True, cfg.jitter)
            logits = teacher(roll(render_views(x, views, 8), shift))
            loss = F.cross_entropy(logits, targets) + cfg.bn_weight * bn.loss(cfg.first_bn_multiplier)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
    assert torch.equal(got, to_uint8(NORM.denormalize(x.detach())))


def test_bf16_autocast_on_cpu_keeps_bn_statistics_and_losses_fp32():
    teacher = _teacher()
    x = torch.randn(6, 1, 8, 8)
    with BNStatsMatcher(teacher) as bn:
        with autocast("bf16", "cpu"):
            conv_out = teacher.features[0](x)
            logits = teacher(x)
        assert conv_out.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16  # autocast is really on
        mean, var = bn.batch[0]
        assert mean.dtype == var.dtype == torch.float32 and bn.loss().dtype == torch.float32
        # The statistics are those of the bf16 activations, taken in fp32.
        torch.testing.assert_close(mean, conv_out.float().mean((0, 2, 3)))

    unit, cfg = Unit(0, (0, 1, 2), 0, 2), RecoverConfig(iterations=4, lr=0.1, jitter=1, crop_scale=(0.5, 1.0))
    losses = []
    bf16, stats = _recover_unit(teacher, unit, cfg, seed=0, precision="bf16",
                                on_step=lambda s, loss: losses.append(loss))
    fp32, _ = _recover_unit(teacher, unit, cfg, seed=0, precision="fp32")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and math.isfinite(stats["ce"])
    assert bf16.dtype == torch.uint8 and not torch.equal(bf16, fp32)  # bf16 changes the numbers: not a resource


def test_fp16_on_cpu_is_refused_naming_the_device_and_the_options():
    with pytest.raises(ConfigError, match=r"resources.precision: 'fp16' is not supported on device 'cpu'.*"
                                          r"\['fp32', 'bf16'\]"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="resources.precision.*'fp8'"):
        load_config(None, ["resources.precision=fp8"])


def test_fp16_on_cpu_is_refused_before_any_stage():
    from srel_ray.distributed.cluster import check_precision  # no cluster needed: the driver checks its device

    cfg = load_config(None, ["resources.precision=fp16", "resources.use_gpu=false"])
    with pytest.raises(ConfigError, match="'fp16' is not supported on device 'cpu'"):
        check_precision(cfg.resources, use_gpu=False)


def test_explicit_precision_is_part_of_a_runs_identity_auto_is_not():
    auto = load_config(None, []).identity()
    assert "precision" not in auto  # runs configured before precision existed keep their identity
    assert load_config(None, ["resources.precision=bf16"]).identity() == {**auto, "precision": "bf16"}
    assert load_config(None, ["resources.compile=true"]).identity() == auto


def test_relabel_rows_index_the_block_images_and_label_views_equals_the_old_float_pixels():
    """At fp32 the logits label_views gives from a block's uint8 images, each row's gathered by its image id, equal,
    bit for bit, the teacher's logits on the float pixels the map step used to render (in a different batch split
    too)."""
    teacher = _teacher(channels=3, size=16)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    columns = view_rows([10, 11, 12, 13, 14], [0, 0, 1, 1, 2], [3] * 5, height=16, width=16, k=4, scale=(0.08, 1.0),
                        hflip=True, seed=0)
    assert "image" not in columns and columns["image_id"].tolist() == [i for i in range(10, 15) for _ in range(4)]
    views = row_views(columns)
    old_pixels = view_pixels(images.repeat_interleave(4, 0), views, 16, norm)
    old = teacher_logits(teacher, old_pixels, 64, "cpu")
    index = torch.from_numpy(columns["image_id"] - 10).long()
    new = label_views([teacher], images, views, image_size=16, norm=norm, batch_size=7, device="cpu",
                      image_index=index)
    assert torch.equal(new, old)
    two = label_views([teacher, teacher], images, views, image_size=16, norm=norm, batch_size=64, device="cpu",
                      image_index=index)
    assert torch.equal(two, old)  # the mean of one teacher twice: the same numbers
    one_per_row = label_views([teacher], images.repeat_interleave(4, 0), views, image_size=16, norm=norm,
                              batch_size=7, device="cpu")
    assert torch.equal(one_per_row, old)  # without an index: row r shows image r


def test_gpu_check_runs_on_cpu_at_a_tiny_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                    "--out", str(out)], check=True, cwd=REPO, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["precisions"] == ["fp32", "bf16"]
    for p in ("fp32", "bf16"):
        assert result["recovery_ms_per_iteration"][p] > 0
        assert result["relabel_views_per_second"][p] > 0 and result["student_images_per_second"][p] > 0
    assert result["published_ms_per_iteration"] == 52.0


def test_prefetch_yields_every_item_in_order_and_passes_errors_on():
    from srel_ray.core.student import prefetch

    assert list(prefetch(iter(range(5)), enabled=True)) == list(range(5))
    assert list(prefetch(iter(range(5)), enabled=False)) == list(range(5))

    def failing():
        yield 1
        raise OSError("unreadable")

    with pytest.raises(OSError, match="unreadable"):
        list(prefetch(failing(), enabled=True))
