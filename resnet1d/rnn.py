"""Recurrent attention model: convolutional front end + bidirectional GRU + attention pooling.

The recurrent family of earlier federated ECG work (e.g. CNN-RNN hybrids with attention over time,
Mousavi & Afghah 2019; Yao et al. 2020): the convolutions shorten the sequence 8x and learn beat
shapes, the GRU reads the beat sequence both ways, and additive attention (Bahdanau et al. 2015)
weights the moments that matter before the linear head. Exports to ONNX with the legacy exporter
(GRU is a standard op). For differential privacy, Opacus' ``ModuleValidator.fix`` swaps ``nn.GRU`` for
its ``DPGRU``; the rest (``norm_layer="group"``) needs no change.
"""

from __future__ import annotations

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, check_dropout, check_input, check_positive, make_norm
from resnet1d.registry import register_model
from resnet1d.resnet import _check_features, _feature_norm  # the hybrid head's checks and norm, one home


class RnnAttention(nn.Module):
    """Conv front end (time / 8) -> bidirectional GRU -> attention pooling -> linear head."""

    min_samples = 5  # shortest input the front end's max pool accepts

    def __init__(
        self,
        *,
        num_classes: int = 6,
        in_leads: int = 12,
        width: int = 64,
        hidden: int = 64,
        dropout: float = 0.3,
        norm_layer: str | NormLayer | None = "batch",
        num_features: int = 0,
        feature_hidden: int = 16,
    ) -> None:
        """``width``: channels out of the front end (>= 2; its first convolution has half); ``hidden``: GRU
        size per direction; ``norm_layer``: ``"batch"``, ``"group"`` or a callable ``channels -> module``;
        ``num_features`` > 0: extra per-sample features (the RR features of a heartbeat) join the pooled
        state in the head, as in the ResNet's hybrid head, and forward takes ``(x, features)``."""
        super().__init__()
        check_positive(num_classes=num_classes, in_leads=in_leads, width=width, hidden=hidden)
        if width < 2:
            raise ValueError(f"width must be >= 2 (the first convolution has width // 2 channels), got {width}")
        check_dropout(dropout)
        norm = make_norm(norm_layer)
        self.in_leads = in_leads
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 0:
            raise ValueError(f"num_features must be an integer >= 0, got {num_features!r}")
        self.num_features = num_features
        self.frontend = nn.Sequential(
            ConvNormAct(in_leads, width // 2, 7, 2, norm),
            ConvNormAct(width // 2, width, 7, 2, norm),
            nn.MaxPool1d(2, 2),
        )
        self.gru = nn.GRU(width, hidden, batch_first=True, bidirectional=True)
        self.attn = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.feature_net = None
        if num_features:
            check_positive(feature_hidden=feature_hidden)
            self.feature_net = nn.Sequential(
                _feature_norm(norm, num_features), nn.Linear(num_features, feature_hidden), nn.ReLU()
            )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden + (feature_hidden if num_features else 0), num_classes))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.in_leads, self.min_samples)
        if self.feature_net is None and features is not None:
            raise ValueError("this model has num_features=0: call it with the ECG only")
        h, _ = self.gru(self.frontend(x).transpose(1, 2))  # [batch, time, 2*hidden]
        w = torch.softmax(self.attn(h), dim=1)  # attention weights over time
        z = (w * h).sum(dim=1)
        if self.feature_net is not None:
            _check_features(features, self.num_features)
            z = torch.cat([z, self.feature_net(features)], dim=1)
        return self.head(z)


@register_model
def rnn_attention(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> RnnAttention:
    """Small CNN + bidirectional GRU + attention pooling (0.08 M parameters)."""
    return RnnAttention(num_classes=num_classes, in_leads=in_leads, **kwargs)
