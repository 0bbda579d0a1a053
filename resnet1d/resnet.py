"""ResNet1D family: the product's lightweight ``resnet1d18``, ``se_resnet1d18`` and the ``resnet1d34`` baseline.

Residual learning after He et al., CVPR 2016; ECG ResNets after Hannun et al., Nat. Med. 2019 and
Ribeiro et al., Nat. Commun. 2020. Modifications of ``resnet1d18`` against the image ResNet-18, each
for a reason:

1. 1D convolutions over time with the 12 leads as input channels.
2. A wide stem kernel (15 samples = 60 ms at 250 Hz): one filter spans a whole QRS complex.
3. Kernel 7 in the residual blocks instead of 3: with only four stages, the receptive field must
   still cover more than one RR interval (~1 s) to see rhythm (AF) and prematurity (PAC/PVC).
4. Narrow widths (24-48-96-160 instead of 64-512): ~0.95 M parameters instead of 11 M, so the int8
   model is under 1.5 MB and a 10 s record runs in milliseconds on a phone; the published CPSC2018
   results gain little from width on 6-9 classes.
   Every stage halves time, the first included (stride 2 where the image net has 1): a 10 s record
   at 250 Hz leaves the stem as 625 steps and the last stage as 40 (4 per second, ~4 per beat), which
   halves the compute (~130 MFLOPs per record instead of ~260) at no cost in what a rhythm label needs.
5. Global average and max pooling concatenated: the average sees the rhythm, the max a single
   ectopic beat that averaging would dilute.
6. Dropout before the linear head (small training sets), and the last norm of every block
   zero-initialised (Goyal et al. 2017) so each block starts as identity: stable from-scratch training.
7. Optional squeeze-and-excitation per block (``se=True``) and optional hand features concatenated
   to the pooled embedding (``num_features`` > 0: a hybrid head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from resnet1d.layers import ConvNormAct, NormLayer, SqueezeExcite, check_input, make_norm
from resnet1d.registry import register_model


class BasicBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, norm: NormLayer, se: bool) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, kernel, stride, norm)
        self.conv2 = ConvNormAct(c_out, c_out, kernel, 1, norm, act=False)
        self.se = SqueezeExcite(c_out) if se else nn.Identity()
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), norm(c_out))
        last_norm = self.conv2[1]
        if getattr(last_norm, "weight", None) is not None:
            nn.init.zeros_(last_norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return torch.relu(self.se(self.conv2(self.conv1(x))) + identity)


class ResNet1d(nn.Module):
    """Configurable 1D ResNet of basic blocks. Input [batch, in_leads, T] (any T), output logits."""

    def __init__(
        self,
        *,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (24, 48, 96, 160),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 6,
        in_leads: int = 12,
        stem_kernel: int = 15,
        kernel: int = 7,
        se: bool = False,
        dropout: float = 0.3,
        num_features: int = 0,
        norm_layer: str | NormLayer | None = "batch",
    ) -> None:
        super().__init__()
        if not layers or not len(layers) == len(widths) == len(strides):
            raise ValueError(
                f"layers, widths and strides need the same non-zero length, got {list(layers)}, {list(widths)}, {list(strides)}"
            )
        if stem_kernel % 2 == 0 or kernel % 2 == 0:
            raise ValueError(f"kernels must be odd for symmetric padding, got stem {stem_kernel}, block {kernel}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        norm = make_norm(norm_layer)
        self.in_leads = in_leads
        self.num_features = num_features
        self.stem = nn.Sequential(ConvNormAct(in_leads, widths[0], stem_kernel, 2, norm), nn.MaxPool1d(3, 2, 1))
        stages: list[nn.Module] = []
        c = widths[0]
        for n, w, st in zip(layers, widths, strides):
            blocks = [BasicBlock1d(c, w, st, kernel, norm, se)]
            blocks += [BasicBlock1d(w, w, 1, kernel, norm, se) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c = w
        self.stages = nn.Sequential(*stages)
        embed = 2 * c
        self.feature_net = None
        if num_features:
            # Hand features (RR statistics...) come in their own units: a norm, then a small MLP.
            self.feature_net = nn.Sequential(norm(num_features), nn.Linear(num_features, 32), nn.ReLU(inplace=True))
            embed += 32
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.in_leads)
        h = self.stages(self.stem(x))
        z = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        if self.feature_net is not None:
            if features is None or features.shape[-1] != self.num_features:
                raise ValueError(f"this hybrid model needs features [batch, {self.num_features}]")
            z = torch.cat([z, self.feature_net(features)], dim=1)
        return self.head(z)


@register_model
def resnet1d18(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> ResNet1d:
    """The product's model: lightweight ResNet1D-18 (~0.95 M parameters, ~130 MFLOPs per 10 s)."""
    return ResNet1d(layers=(2, 2, 2, 2), num_classes=num_classes, in_leads=in_leads, **kwargs)


@register_model
def se_resnet1d18(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> ResNet1d:
    """``resnet1d18`` with squeeze-and-excitation in every block."""
    kwargs.setdefault("se", True)
    return ResNet1d(layers=(2, 2, 2, 2), num_classes=num_classes, in_leads=in_leads, **kwargs)


@register_model
def resnet1d34(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> ResNet1d:
    """Full-width ResNet-34 in 1D (3-4-6-3 blocks, 64-512 channels, kernel 3 as in the image net):
    the literature baseline, ~7 M parameters, to show what the lightweight model gives up."""
    kwargs.setdefault("widths", (64, 128, 256, 512))
    kwargs.setdefault("strides", (1, 2, 2, 2))
    kwargs.setdefault("kernel", 3)
    kwargs.setdefault("stem_kernel", 7)
    return ResNet1d(layers=(3, 4, 6, 3), num_classes=num_classes, in_leads=in_leads, **kwargs)
