"""Step 1 of the export: the fp32 ONNX graph (sigmoid included) with its metadata, and a parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.metadata import FEATURES_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, ModelMeta
from federated.checkpoint import Checkpoint

# Largest accepted |torch - onnxruntime| on the probabilities of real records: float32 kernels differ
# in summation order only, which moves a probability by ~1e-7; 1e-4 leaves margin and still catches a
# wrong graph (a dropped op moves outputs by 1e-2 or more).
PARITY_TOL = 1e-4


class ExportError(RuntimeError):
    """Export could not produce a valid model; the message says why."""


class WithSigmoid(nn.Module):
    """The exported graph ends in a sigmoid: the file outputs probabilities, thresholds are probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(*inputs))


class WithSoftmax(nn.Module):
    """Multi-class models (heartbeats, label set ``aami``): the graph ends in a softmax over the classes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(*inputs), dim=1)


def meta_from_checkpoint(ckpt: Checkpoint, quantization: dict | None = None) -> ModelMeta:
    return ModelMeta(
        model_name=ckpt.model_name,
        model_kwargs=ckpt.model_kwargs,
        labels=list(ckpt.labels),
        label_set=ckpt.label_set,
        thresholds=[float(t) for t in ckpt.thresholds],
        preprocess=dict(ckpt.preprocess),
        output="probabilities",
        features=list(ckpt.features),
        metrics=_finite(ckpt.metrics),
        split={k: v for k, v in ckpt.split.items()},
        quantization=quantization or {},
        lead_sets=_lead_sets(ckpt),
    )


def _lead_sets(ckpt: Checkpoint) -> str:
    """The ``lead_sets`` metadata of a 12-lead record model (none for heartbeat models)."""
    if ckpt.label_set == "aami":
        return ""
    from cpsc2018.leadsets import LeadSupport

    return LeadSupport.for_model(ckpt.model_kwargs, ckpt.lead_thresholds).to_json()


def _finite(obj):
    """Metadata is JSON: NaN becomes null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_metadata(path: Path, meta: ModelMeta) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())
    model.producer_name = "ecg-lite"
    onnx.save(model, str(path))


def export_fp32(ckpt: Checkpoint, path: Path, window: int, opset: int = 17) -> nn.Module:
    """Write the fp32 graph: input ``ecg`` [batch, 12, samples] (batch and length dynamic)."""
    model = ckpt.build_model()
    wrapped = (WithSoftmax if ckpt.label_set == "aami" else WithSigmoid)(model).eval()
    n_in = int(ckpt.model_kwargs.get("in_leads", 12))
    # Example batch of 2: the exporter would specialise a batch of 1 (PLATFORM.md).
    example: tuple[torch.Tensor, ...] = (torch.randn(2, n_in, window),)
    names = [INPUT_NAME]
    axes = {INPUT_NAME: {0: "batch", 2: "samples"}, OUTPUT_NAME: {0: "batch"}}
    if ckpt.features:
        example += (torch.randn(2, len(ckpt.features)),)
        names.append(FEATURES_INPUT_NAME)
        axes[FEATURES_INPUT_NAME] = {0: "batch"}
    def _export(axes: dict) -> None:
        # The legacy (TorchScript) exporter: seconds instead of minutes for the GRU model, and exact
        # dynamic axes for every model of the zoo (PLATFORM.md).
        torch.onnx.export(
            wrapped, example, str(path), dynamo=False, input_names=names, output_names=[OUTPUT_NAME],
            dynamic_axes=axes, opset_version=opset,
        )
        onnx.checker.check_model(onnx.load(str(path)))

    try:
        _export(axes)
    except Exception:
        # Some graphs (AlexNet's fixed-size adaptive pooling) cannot take a dynamic length: keep the
        # length fixed to the window, which is all the app and the evaluation feed anyway.
        axes[INPUT_NAME] = {0: "batch"}
        try:
            _export(axes)
        except Exception as exc:
            raise ExportError(f"ONNX export of {ckpt.model_name} failed: {type(exc).__name__}: {exc}") from None
    write_metadata(path, meta_from_checkpoint(ckpt))
    return wrapped


def parity(wrapped: nn.Module, onnx_path: Path, windows: np.ndarray) -> float:
    """Max |torch - onnxruntime| over real preprocessed windows; raises above ``PARITY_TOL``."""
    from export.runtime import OnnxPredictor

    predictor = OnnxPredictor(str(onnx_path))
    inputs = [torch.from_numpy(windows)]
    feats = predictor.features(windows)
    if feats is not None:
        inputs.append(torch.from_numpy(feats))
    with torch.no_grad():
        ref = wrapped(*inputs).numpy()
    got = predictor.predict_windows(windows)
    diff = float(np.max(np.abs(ref - got)))
    if not diff <= PARITY_TOL:
        raise ExportError(f"ONNX output differs from torch by {diff:.2e} (> {PARITY_TOL:g}) on real records")
    return diff
