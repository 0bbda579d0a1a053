"""``beatnet``: the narrow 1D ResNet for single heartbeats (one or two leads, RR features in its head).

The ResNet1D of :mod:`resnet1d.resnet` with settings for a 0.7 s beat window at 180 Hz (126 samples)
instead of a 10 s record (variants are arguments, not forks):

* widths 16-32-48-64, one block per stage (0.07 M parameters with the RR head): a beat window holds far less than a
  12-lead record, and the inter-patient setting rewards small models (few patients, so big nets learn
  the 22 training patients rather than the beat classes; Kiranyaz et al., IEEE TBME 63:664, 2016 used
  a 3-layer 1D CNN).
* stem kernel 7 (39 ms at 180 Hz: a third of a QRS), block kernel 5; stride 1 in the first stage so
  that the last stage still has 8 steps (~90 ms each) across the window.
* the RR features (``cpsc2018.beats.RR_FEATURES``) enter the head through the hybrid path
  (``num_features``): batch-normalised, a small MLP, concatenated to the pooled embedding. Timing is
  what separates S beats (normal shape, early) from N beats; the window alone barely shows it.
"""

from __future__ import annotations

from resnet1d.registry import register_model
from resnet1d.resnet import ResNet1d


@register_model
def beatnet(*, num_classes: int = 5, in_leads: int = 2, **kwargs) -> ResNet1d:
    """Narrow ResNet1D for beat windows (0.07 M parameters with the RR head); ``num_features=7`` adds the RR head."""
    kwargs.setdefault("layers", (1, 1, 1, 1))
    kwargs.setdefault("widths", (16, 32, 48, 64))
    kwargs.setdefault("strides", (1, 2, 2, 2))
    kwargs.setdefault("stem_kernel", 7)
    kwargs.setdefault("kernel", 5)
    kwargs.setdefault("feature_hidden", 16)
    kwargs.setdefault("dropout", 0.2)
    return ResNet1d(num_classes=num_classes, in_leads=in_leads, **kwargs)
