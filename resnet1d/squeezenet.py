"""SqueezeNet 1.1 in 1D (Iandola et al., 2016): fire modules (1x1 squeeze, then 1x1 and 3x3 expand).

Kept from 1.1: the early down-sampling, the fire sequence 16/64 .. 64/256 (``width`` = 16) with three
max pools, the dropout and the 1x1 classifier convolution followed by global (adaptive) average pooling.
Changed: 1D kernels, a stem of kernel 7 (28 ms at 250 Hz) instead of 3, a norm in every convolution
(trains from scratch on small data; ``norm_layer`` swaps it), and no ReLU after the classifier (outputs
are logits, which a ReLU would clip at 0). 0.36 M parameters (the 2D net has 1.2 M: 3 taps, not 3x3).
"""

from __future__ import annotations

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, check_dropout, check_input, check_positive, make_norm
from resnet1d.registry import register_model


class Fire1d(nn.Module):
    """Fire module: 1x1 squeeze, then 1x1 and 3-tap expand branches concatenated (2 * expand channels)."""

    def __init__(self, c_in: int, squeeze: int, expand: int, norm: NormLayer) -> None:
        super().__init__()
        self.squeeze = ConvNormAct(c_in, squeeze, 1, 1, norm)
        self.expand1 = ConvNormAct(squeeze, expand, 1, 1, norm)
        self.expand3 = ConvNormAct(squeeze, expand, 3, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


class SqueezeNet1d(nn.Module):
    """1D SqueezeNet 1.1. Input [batch, in_leads, T] (any T >= 1), output logits."""

    min_samples = 1

    def __init__(
        self,
        *,
        num_classes: int = 6,
        in_leads: int = 12,
        width: int = 16,
        dropout: float = 0.5,
        norm_layer: str | NormLayer | None = "batch",
    ) -> None:
        """``width``: squeeze channels of the first fire module (16 in SqueezeNet 1.1; all others scale
        with it); ``norm_layer``: ``"batch"``, ``"group"`` or a callable ``channels -> module``."""
        super().__init__()
        check_positive(num_classes=num_classes, in_leads=in_leads, width=width)
        check_dropout(dropout)
        norm = make_norm(norm_layer)
        s = width  # squeeze width of the first fire module (16 in SqueezeNet 1.1)
        self.in_leads = in_leads
        self.num_features = 0
        self.features = nn.Sequential(
            ConvNormAct(in_leads, 4 * s, 7, 2, norm), nn.MaxPool1d(3, 2, 1),
            Fire1d(4 * s, s, 4 * s, norm), Fire1d(8 * s, s, 4 * s, norm), nn.MaxPool1d(3, 2, 1),
            Fire1d(8 * s, 2 * s, 8 * s, norm), Fire1d(16 * s, 2 * s, 8 * s, norm), nn.MaxPool1d(3, 2, 1),
            Fire1d(16 * s, 3 * s, 12 * s, norm), Fire1d(24 * s, 3 * s, 12 * s, norm),
            Fire1d(24 * s, 4 * s, 16 * s, norm), Fire1d(32 * s, 4 * s, 16 * s, norm),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(32 * s, num_classes, 1), nn.AdaptiveAvgPool1d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_leads)
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model
def squeezenet1d(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> SqueezeNet1d:
    """1D SqueezeNet 1.1 (fire modules), 0.36 M parameters."""
    return SqueezeNet1d(num_classes=num_classes, in_leads=in_leads, **kwargs)
