"""ResNet1D family: the product's lightweight ``resnet1d18``, ``se_resnet1d18`` and the ``resnet1d34`` baseline.

Residual learning after He et al., CVPR 2016; ECG ResNets after Hannun et al., Nat. Med. 2019 and
Ribeiro et al., Nat. Commun. 2020. Modifications of ``resnet1d18`` against the image ResNet-18, each
for a reason:

1. 1D convolutions over time with the 12 leads as input channels.
2. A wide stem kernel (15 samples = 60 ms at 250 Hz, against 7 in the image net): one filter spans most
   of a QRS complex (80-120 ms) instead of a fraction of it.
3. Kernel 7 in the residual blocks instead of 3: with only four stages, the receptive field must
   still cover more than one RR interval (~1 s) to see rhythm (AF) and prematurity (PAC/PVC).
4. Narrow widths (24-48-96-160 instead of 64-512): 0.98 M parameters instead of 11 M, so the int8
   ONNX file stays near 1 MB and a 10 s record takes about 2 ms on one CPU thread (measured in
   ``benchmarks/results/models.md``). Widths are a constructor argument; ``resnet1d34`` is the
   full-width baseline that shows what the narrow net gives up.
   Every stage halves time, the first included (stride 2 where the image net has 1): a 10 s record
   at 250 Hz leaves the stem as 625 steps and the last stage as 40 (4 per second, ~4 per beat), which
   halves the compute (129 MFLOPs per record instead of 244 with stride 1). The receptive field still
   spans the whole 10 s record (about 2,500 samples) at the last stage, and 2 s after the second.
5. Global average and max pooling concatenated: the average sees the rhythm, the max a single
   ectopic beat that averaging would dilute.
6. Dropout before the linear head (small training sets), and the last norm of every block
   zero-initialised (Goyal et al. 2017) so each block starts as identity: stable from-scratch training.
7. Optional squeeze-and-excitation per block (``se=True``) and optional hand features concatenated
   to the pooled embedding (``num_features`` > 0: a hybrid head, ``forward(x, features)``). The
   features are normalised per feature by the model's norm when it is batch norm (running statistics,
   stored in the checkpoint and the ONNX file); with any other norm they pass as they come (the
   producer scales them to order 1), because GroupNorm over one value per group is constant and
   differential privacy forbids batch statistics. A Linear + ReLU then maps them to ``feature_hidden``.
8. Recordings with fewer leads (issue 21). Absent leads arrive as zero rows. ``lead_mask=True`` (a
   model for any subset): the model derives the presence mask from the input (a lead is present when
   any of its samples is non-zero; a standardised flat lead is zero too, so a dead electrode counts
   as absent) and gives it to the stem, as 12 constant channels beside the leads, and to the head,
   beside the pooled embedding: the same weights can then weigh a limb lead differently when the
   precordial leads are missing. Derived rather than a second input so that the ONNX contract
   (one input ``ecg``) stays, and the mask cannot disagree with the zeroed rows.
   ``input_mask`` (0/1 per input lead, a model for one fixed lead set) zeroes the other leads
   inside the model, so that the exported file ignores whatever a caller puts there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from resnet1d.layers import (
    ConvNormAct,
    NormLayer,
    SqueezeExcite,
    check_dropout,
    check_input,
    check_positive,
    make_norm,
)
from resnet1d.registry import register_model

# The models that take ``lead_mask``/``input_mask`` (reduced lead sets, issue 21).
LEAD_MASK_MODELS: tuple[str, ...] = ("resnet1d18", "se_resnet1d18", "resnet1d34")


class BasicBlock1d(nn.Module):
    """Two convolutions with a shortcut (1x1 conv + norm when shape changes); optional SE before the sum."""

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
    """Configurable 1D ResNet of basic blocks. Input [batch, in_leads, T] (any T >= 1), output logits."""

    min_samples = 1

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
        feature_hidden: int = 32,
        norm_layer: str | NormLayer | None = "batch",
        lead_mask: bool = False,
        input_mask: Sequence[int] | None = None,
    ) -> None:
        """``layers``/``widths``/``strides``: blocks, channels and time stride per stage (lists or tuples of
        equal length); ``stem_kernel``/``kernel``: odd kernel sizes of the stem and of the blocks; ``se``:
        squeeze-and-excitation in every block; ``num_features`` > 0 makes a hybrid model whose forward
        takes ``(x, features)``; ``norm_layer``: ``"batch"``, ``"group"`` or a callable ``channels -> module``;
        ``lead_mask``/``input_mask``: reduced lead sets (module docstring, item 8)."""
        super().__init__()
        if not layers or not len(layers) == len(widths) == len(strides):
            raise ValueError(
                "layers, widths and strides need the same non-zero length, "
                f"got {list(layers)}, {list(widths)}, {list(strides)}"
            )
        check_positive(
            num_classes=num_classes, in_leads=in_leads, stem_kernel=stem_kernel, kernel=kernel,
            feature_hidden=feature_hidden,
        )
        for arg, values in (("layers", layers), ("widths", widths), ("strides", strides)):
            check_positive(**{f"{arg}[{i}]": v for i, v in enumerate(values)})
        if stem_kernel % 2 == 0 or kernel % 2 == 0:
            raise ValueError(f"kernels must be odd for symmetric padding, got stem {stem_kernel}, block {kernel}")
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 0:
            raise ValueError(f"num_features must be an integer >= 0, got {num_features!r}")
        check_dropout(dropout)
        norm = make_norm(norm_layer)
        self.in_leads = in_leads
        self.num_features = num_features
        self.lead_mask = bool(lead_mask)
        if input_mask is not None:
            values = [int(v) for v in input_mask]
            if len(values) != in_leads or set(values) - {0, 1} or not any(values):
                raise ValueError(f"input_mask must be {in_leads} values of 0 or 1, at least one 1; got {list(input_mask)}")
            self.register_buffer("input_mask", torch.tensor(values, dtype=torch.float32).view(1, in_leads, 1))
        else:
            self.input_mask = None
        stem_in = 2 * in_leads if self.lead_mask else in_leads
        self.stem = nn.Sequential(ConvNormAct(stem_in, widths[0], stem_kernel, 2, norm), nn.MaxPool1d(3, 2, 1))
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
            # Hand features (RR statistics...) come in their own units: normalised, then a small MLP.
            self.feature_net = nn.Sequential(
                _feature_norm(norm, num_features), nn.Linear(num_features, feature_hidden), nn.ReLU()
            )
            embed += feature_hidden
        if self.lead_mask:
            embed += in_leads
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [batch, in_leads, samples]; ``features``: [batch, num_features], required exactly when
        ``num_features`` > 0. Returns [batch, num_classes] logits."""
        check_input(x, self.in_leads)
        if self.feature_net is None and features is not None:
            raise ValueError("this model has num_features=0: call it with the ECG only")
        if self.feature_net is not None:
            _check_features(features, self.num_features)
        if self.input_mask is not None:
            x = x * self.input_mask
        present = None
        if self.lead_mask:
            present = (x.abs().amax(dim=-1, keepdim=True) > 0).to(x.dtype)  # [batch, leads, 1]
            x = torch.cat([x, present.expand(-1, -1, x.shape[-1])], dim=1)
        h = self.stages(self.stem(x))
        z = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        if self.feature_net is not None:
            z = torch.cat([z, self.feature_net(features)], dim=1)
        if present is not None:
            z = torch.cat([z, present.squeeze(-1)], dim=1)
        return self.head(z)


def load_widened(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model`` where a tensor of the model is larger along one axis (the lead-mask
    channels of the stem, the mask inputs of the head): the saved values fill the leading part and the
    rest is zero, so the widened model starts out computing exactly what the saved one did (the new
    inputs are appended last). Returns the names widened; any other mismatch raises."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own) - {"input_mask"})
    if missing and missing != ["input_mask"] or unexpected:
        raise ValueError(f"checkpoint does not fit this model: missing {missing}, unexpected {unexpected}")
    widened = []
    merged = {}
    for name, target in own.items():
        if name not in state:
            merged[name] = target
            continue
        src = state[name]
        if src.shape == target.shape:
            merged[name] = src
            continue
        grow = [i for i, (a, b) in enumerate(zip(src.shape, target.shape)) if a != b]
        if src.dim() != target.dim() or len(grow) != 1 or src.shape[grow[0]] > target.shape[grow[0]]:
            raise ValueError(f"{name}: saved shape {tuple(src.shape)} cannot widen to {tuple(target.shape)}")
        new = torch.zeros_like(target)
        new.narrow(grow[0], 0, src.shape[grow[0]]).copy_(src)
        merged[name] = new
        widened.append(name)
    model.load_state_dict(merged)
    return widened


def _feature_norm(norm: NormLayer, num_features: int) -> nn.Module:
    """The model's norm on the hand features if it is batch norm, else identity (see the module docstring)."""
    layer = norm(num_features)
    return layer if isinstance(layer, nn.BatchNorm1d) else nn.Identity()


def _check_features(features: torch.Tensor | None, num_features: int) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        got = f"shape {tuple(features.shape)}" if isinstance(features, torch.Tensor) else repr(type(features).__name__)
        raise ValueError(f"this hybrid model needs features [batch, {num_features}], got {got}")
    if not torch.jit.is_tracing() and features.shape[1] != num_features:
        raise ValueError(f"this hybrid model needs features [batch, {num_features}], got shape {tuple(features.shape)}")


@register_model
def resnet1d18(*, num_classes: int = 6, in_leads: int = 12, **kwargs) -> ResNet1d:
    """The product's model: lightweight ResNet1D-18 (0.98 M parameters, 129 MFLOPs per 10 s at 250 Hz)."""
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
