"""Hybrid models: which hand-feature function (if any) a run feeds to the model head."""

from __future__ import annotations

from functools import partial

from cpsc2018.dataset import FeatureFn
from cpsc2018.preprocess import PreprocessConfig
from federated.config import TrainConfig


def feature_setup(cfg: TrainConfig, pre: PreprocessConfig) -> tuple[FeatureFn | None, list[str]]:
    if not cfg.features:
        return None, []
    from cpsc2018.features import FEATURE_NAMES, window_features

    # partial, not lambda: DataLoader workers may need to pickle it.
    return partial(window_features, fs=pre.fs), list(FEATURE_NAMES)
