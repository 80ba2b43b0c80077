"""Mixed precision for the hot loops (recover, relabel, squeeze, students): which dtype the models' forward passes
run in, and what stays fp32 whatever it is.

``fp32`` runs as before. ``bf16`` / ``fp16`` wrap only the model forward passes in ``torch.autocast``; the
image parameters of recovery, BatchNorm statistics matched in recovery (srel_ray.core.bn_matching casts its
inputs to fp32), every loss (computed on logits cast to fp32) and the optimiser states stay fp32. fp16 needs a
GradScaler (its gradients underflow otherwise); bf16 has fp32's range and needs none.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from srel_ray.errors import ConfigError

# The precisions themselves are listed in srel_ray.config.PRECISIONS (the config validates without torch).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def supported(device: torch.device) -> tuple[str, ...]:
    """The precisions ``device`` runs: CPUs fp32 and bf16 (torch's CPU autocast), CUDA GPUs fp32 and fp16, and bf16
    where the GPU has it (Ampere and later); any other device fp32 only."""
    if device.type == "cpu":
        return "fp32", "bf16"
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32",)


def resolve_precision(requested: str | None, device: torch.device | str, field: str = "resources.precision") -> str:
    """``requested`` made concrete for ``device``: None (auto) is bf16 on a GPU that has it, else fp32. A precision
    the device cannot run is a ConfigError naming the device and what it can run."""
    device = torch.device(device)
    options = supported(device)
    if requested is None:
        return "bf16" if device.type == "cuda" and "bf16" in options else "fp32"
    if requested not in options:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise ConfigError(f"{field}: {requested!r} is not supported on device {str(device)!r} ({name}); "
                          f"this device runs {list(options)} (or null: {resolve_precision(None, device)} here)")
    return requested


def autocast(precision: str, device: torch.device | str):
    """The forward-pass context for ``precision``: torch.autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (a disabled one passes ``scale``/``step``/``update`` straight through)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def prepare_model(model: nn.Module, device: torch.device | str, compile_model: bool = False) -> nn.Module:
    """GPU layout for a model already on ``device``: channels_last (NHWC convolutions are what tensor cores run) and
    cuDNN autotuning (fixed shapes every step), both no-ops on the CPU; ``torch.compile`` when asked (opt-in:
    compiling costs minutes of start-up). Returns the module to call (compiled or not); its parameters are shared."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def to_input(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch in the layout ``prepare_model`` gave the model (channels_last on GPUs)."""
    return x.contiguous(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else x
