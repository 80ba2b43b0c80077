"""BN-ViT (the SRe2L paper, section 2.1): a ViT whose LayerNorms are BatchNorms, with one more BatchNorm between
the two linear layers of every MLP block, so that it has running statistics for recovery to match.

Built on timm's VisionTransformer (its ``norm_layer`` and ``mlp_layer`` hooks); DeiT-Tiny's shape (embed 192,
depth 12, 3 heads) by default. The patch is 16 px from 128 px inputs up (ImageNet) and 4 px below (CIFAR: 8 x 8
tokens from 32 px), unless ``patch_size`` is given.
"""

from __future__ import annotations

from torch import nn

from srel_ray.models.registry import register_model


class TokenBatchNorm(nn.Module):
    """BatchNorm over the channels of (B, tokens, C) sequences: statistics over batch and tokens. The BatchNorm1d
    is a child module, so hooks on BN layers (recovery's statistics matching) see channels-first (B, C, tokens)
    inputs, as for convolutional BN layers."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, device=device, dtype=dtype)

    def forward(self, x):
        if x.dim() == 2:  # pooled features (B, C)
            return self.bn(x)
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


def _bn_mlp():
    from timm.layers import Mlp

    class BNMlp(Mlp):
        """timm's Mlp with a BatchNorm between fc1 (after the activation) and fc2, whatever norm it is given."""

        def __init__(self, in_features, hidden_features=None, norm_layer=None, **kwargs):
            super().__init__(in_features, hidden_features, norm_layer=TokenBatchNorm, **kwargs)

    return BNMlp


def bn_vit(num_classes: int, in_channels: int, image_size: int, embed_dim: int, depth: int, num_heads: int,
           patch_size: int | None = None, **kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    patch = patch_size or (16 if image_size >= 128 else 4)
    if image_size % patch:
        raise ValueError(f"BN-ViT: image_size {image_size} is not a multiple of the patch size {patch}")
    return VisionTransformer(img_size=image_size, patch_size=patch, in_chans=in_channels, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, norm_layer=TokenBatchNorm,
                             mlp_layer=_bn_mlp(), **kwargs)


@register_model("bnvit_tiny")
def bnvit_tiny(num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs):
    kwargs = {"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs}
    return bn_vit(num_classes, in_channels, image_size, **kwargs)
