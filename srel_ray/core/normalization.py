"""Per-channel normalisation. Images are stored in [0, 1]; models and recovery work in normalised space."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _shape(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(x01)
        return (x01 - mean) / std

    def normalize_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (a stored image, a batch of real data) -> the normalised float input of a model."""
        return self.normalize(from_uint8(x))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(x)
        return x * std + mean

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised images of pixel values 0 and 1: the valid range recovery clips to."""
        mean, std = self._shape(like)
        return (0 - mean) / std, (1 - mean) / std


IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]."""
    return x.float() / 255
