"""AlexNet in 1D (Krizhevsky et al., NeurIPS 2012): five convolutions, three pools, two hidden FC layers.

Adapted for ECG: kernels and strides over time (11/4 first, as in the original); channels
48-96-192-192-96 (``width`` = 48) instead of 64-192-384-256-256 and hidden layers of 256 instead of
4096 (12 input leads and 6 classes, not 3 colours and 1000 classes: 0.37 M parameters, not 60 M); a
norm after each convolution (the original's local response normalisation is obsolete and the norm is
what ``norm_layer`` swaps); global average + max pooling in place of the 6-cell adaptive pooling, so
any length works and the graph exports to ONNX with a dynamic length (the ONNX exporter cannot express
adaptive pooling whose output size does not divide the input).
"""

from __future__ import annotations

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, check_dropout, check_input, check_positive, make_norm
from resnet1d.registry import register_model


class AlexNet1d(nn.Module):
    """1D AlexNet. Input [batch, in_leads, T] with T >= ``min_samples``, output logits."""

    min_samples = 57  # shortest input whose three max pools still leave one step

    def __init__(
        self,
        *,
        num_classes: int = 6,
        in_leads: int = 12,
        width: int = 48,
        hidden: int = 256,
        dropout: float = 0.5,
        norm_layer: str | NormLayer | None = "batch",
    ) -> None:
        """``width``: channels of the first convolution (the others are 2x, 4x, 4x, 2x); ``hidden``: size of
        the two hidden fully connected layers; ``norm_layer``: ``"batch"``, ``"group"`` or a callable."""
        super().__init__()
        check_positive(num_classes=num_classes, in_leads=in_leads, width=width, hidden=hidden)
        check_dropout(dropout)
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
            nn.Dropout(dropout), nn.Linear(2 * w * 2, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_leads, self.min_samples)
        h = self.features(x)
        return self.classifier(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1))


@register_model
def alexnet1d(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> AlexNet1d:
    """1D AlexNet sized for ECG (0.37 M parameters)."""
    return AlexNet1d(num_classes=num_classes, in_leads=in_leads, **kwargs)
