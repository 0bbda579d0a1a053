"""Layers shared by every model: norm-layer resolution, conv-norm-act, squeeze-and-excitation, and the
argument and input checks every model runs."""

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
    """Resolve ``norm_layer`` to a factory ``channels -> module``.

    ``"batch"`` (default, also ``None``) -> ``BatchNorm1d``; ``"group"`` -> ``GroupNorm`` with the largest
    group count <= 8 that divides the channels (what differential privacy needs: Opacus cannot compute
    per-sample gradients through BatchNorm, which mixes the samples of a batch); a callable is used as
    given. Strings keep constructor kwargs JSON-serialisable, so checkpoints can store them.
    """
    if norm_layer is None or norm_layer == "batch":
        return nn.BatchNorm1d
    if norm_layer == "group":
        return lambda c: nn.GroupNorm(_groups(c), c)
    if callable(norm_layer) and not isinstance(norm_layer, str):
        return norm_layer
    raise ValueError(f"norm_layer must be 'batch', 'group' or a callable channels -> module, got {norm_layer!r}")


class ConvNormAct(nn.Sequential):
    """Conv1d (no bias: the norm has one) -> norm -> ReLU; 'same' padding for odd kernels.

    ReLUs are not in-place anywhere in the zoo: Opacus' backward hooks reject in-place ops on their outputs.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        norm: NormLayer = nn.BatchNorm1d,
        act: bool = True,
        groups: int = 1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv1d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False, groups=groups),
            norm(c_out),
        ]
        if act:
            layers.append(nn.ReLU())
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


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming every constructor argument that is not an integer >= 1."""
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"expected integers >= 1, got {', '.join(f'{k}={v!r}' for k, v in bad.items())}")


def check_dropout(p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


def check_input(x: torch.Tensor, in_leads: int, min_samples: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[batch, in_leads, samples]`` with ``samples >= min_samples``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"expected input [batch, {in_leads}, samples], got {_shape(x)}")
    if torch.jit.is_tracing():
        return  # sizes are traced values during ONNX export; comparing them would bake in the example's shape
    if x.shape[1] != in_leads:
        raise ValueError(f"expected input [batch, {in_leads}, samples], got shape {tuple(x.shape)}")
    if x.shape[2] < min_samples:
        raise ValueError(f"expected at least {min_samples} samples, got shape {tuple(x.shape)}")


def _shape(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
