"""AlexNet in 1D (Krizhevsky et al., NeurIPS 2012): five convolutions, three pools, two hidden FC layers.

Adapted for ECG: kernels and strides over time (11/4 first, as in the original), channel counts cut to
~1/3 (ECG has 12 input channels and 6 classes, not 3 and 1000), a norm after each convolution (the
original's local response normalisation is obsolete), and global average + max pooling in place of the
6-cell adaptive pooling, so any length works and the graph exports to ONNX with a dynamic length (the
ONNX exporter cannot express adaptive pooling whose output does not divide the input).
"""

from __future__ import annotations

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, check_input, make_norm
from resnet1d.registry import register_model


class AlexNet1d(nn.Module):
    def __init__(
        self, *, num_classes: int = 6, in_leads: int = 12, width: int = 48, hidden: int = 256, dropout: float = 0.5,
        norm_layer: str | NormLayer | None = "batch",
    ) -> None:
        super().__init__()
        norm = make_norm(norm_layer)
        w = width
        self.in_leads = in_leads
        self.num_features = 0
        self.features = nn.Sequential(
            ConvNormAct(in_leads, w, 11, 4, norm), nn.MaxPool1d(3, 2),
            ConvNormAct(w, 2 * w, 5, 1, norm), nn.MaxPool1d(3, 2),
            ConvNormAct(2 * w, 4 * w, 3, 1, norm),
            ConvNormAct(4 * w, 4 * w, 3, 1, norm),
            ConvNormAct(4 * w, 2 * w, 3, 1, norm), nn.MaxPool1d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * w * 2, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_leads)
        h = self.features(x)
        return self.classifier(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1))


@register_model
def alexnet1d(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> AlexNet1d:
    return AlexNet1d(num_classes=num_classes, in_leads=in_leads, **kwargs)
