"""Recurrent attention model: convolutional front end + bidirectional GRU + attention pooling.

The recurrent family of earlier federated ECG work (e.g. CNN-RNN hybrids with attention over time,
Mousavi & Afghah 2019; Yao et al. 2020): the convolutions shorten the sequence 8x and learn beat
shapes, the GRU reads the beat sequence both ways, and additive attention (Bahdanau et al. 2015)
weights the moments that matter before the linear head. Exports to ONNX (GRU is a standard op).
"""

from __future__ import annotations

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, check_input, make_norm
from resnet1d.registry import register_model


class RnnAttention(nn.Module):
    def __init__(
        self, *, num_classes: int = 6, in_leads: int = 12, width: int = 64, hidden: int = 64, dropout: float = 0.3,
        norm_layer: str | NormLayer | None = "batch",
    ) -> None:
        super().__init__()
        norm = make_norm(norm_layer)
        self.in_leads = in_leads
        self.num_features = 0
        self.frontend = nn.Sequential(
            ConvNormAct(in_leads, width // 2, 7, 2, norm),
            ConvNormAct(width // 2, width, 7, 2, norm),
            nn.MaxPool1d(2, 2),
        )
        self.gru = nn.GRU(width, hidden, batch_first=True, bidirectional=True)
        self.attn = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_leads)
        h, _ = self.gru(self.frontend(x).transpose(1, 2))  # [batch, time, 2*hidden]
        w = torch.softmax(self.attn(h), dim=1)  # attention weights over time
        return self.head((w * h).sum(dim=1))


@register_model
def rnn_attention(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> RnnAttention:
    return RnnAttention(num_classes=num_classes, in_leads=in_leads, **kwargs)
