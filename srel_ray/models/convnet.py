"""The ConvNet of the dataset-condensation literature, with BatchNorm so SRe2L has statistics to match."""

from __future__ import annotations

from torch import nn

from srel_ray.models.registry import register_model


class ConvNet(nn.Module):
    """``depth`` blocks of conv3x3 -> BatchNorm -> ReLU -> avg-pool 2x2, then one linear classifier."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 64, depth: int = 3):
        super().__init__()
        if image_size // 2**depth < 1:
            raise ValueError(f"ConvNet depth {depth} pools a {image_size}px image below 1px; use depth <= "
                             f"{image_size.bit_length() - 1}")
        blocks, channels = [], in_channels
        for _ in range(depth):
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        side = image_size // 2**depth
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model("convnet")
def convnet(num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 64, depth: int = 3):
    return ConvNet(num_classes, in_channels, image_size, width=width, depth=depth)
