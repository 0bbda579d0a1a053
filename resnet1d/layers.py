"""Layers shared by every model: normalisation factory, conv-norm-act, squeeze-and-excitation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


def _groups(channels: int, target: int = 8) -> int:
    """Largest group count <= target that divides ``channels`` (GroupNorm needs a divisor)."""
    for g in range(min(target, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(norm_layer: str | NormLayer | None) -> NormLayer:
    """``"batch"`` (default) -> BatchNorm1d; ``"group"`` -> GroupNorm (what differential privacy needs:
    Opacus cannot compute per-sample gradients through BatchNorm, which mixes samples); a callable
    ``channels -> module`` is used as given. Strings keep constructor kwargs JSON-serialisable."""
    if norm_layer is None or norm_layer == "batch":
        return nn.BatchNorm1d
    if norm_layer == "group":
        return lambda c: nn.GroupNorm(_groups(c), c)
    if callable(norm_layer):
        return norm_layer
    raise ValueError(f"norm_layer must be 'batch', 'group' or a callable, got {norm_layer!r}")


class ConvNormAct(nn.Sequential):
    """Conv1d (no bias: the norm has one) -> norm -> ReLU; 'same' padding for odd kernels."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, norm: NormLayer = nn.BatchNorm1d, act: bool = True, groups: int = 1
    ) -> None:
        layers: list[nn.Module] = [nn.Conv1d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False, groups=groups), norm(c_out)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): global average -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv1d(channels, hidden, 1)
        self.fc2 = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=-1, keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


def check_input(x: torch.Tensor, in_leads: int) -> None:
    if x.dim() != 3 or x.shape[1] != in_leads:
        raise ValueError(f"expected input [batch, {in_leads}, samples], got shape {tuple(x.shape)}")
