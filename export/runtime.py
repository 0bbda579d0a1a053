"""Run an exported ECG-Lite ONNX file with onnxruntime. numpy + onnxruntime only (no torch): used by
``federated.evaluate`` for ``.onnx`` files, the export gate and the benchmarks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from export.metadata import FEATURES_INPUT_NAME, INPUT_NAME, ModelMeta, MetadataError


def make_session(path: str, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """Probabilities for batches of preprocessed windows ``(n, 12, L)``."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        try:
            self.session = make_session(path, threads)
        except Exception as exc:
            raise MetadataError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
        self.meta = ModelMeta.from_props(self.session.get_modelmeta().custom_metadata_map, source=path)
        self.output = self.session.get_outputs()[0].name

    def predict_windows(self, windows: np.ndarray, batch: int = 64, features: np.ndarray | None = None) -> np.ndarray:
        """``features``: the second input when the caller computes it (a beat model's RR features come from
        the whole record, not from the window); otherwise a hybrid model's hand features are computed here."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        feats = self.features(x) if features is None else np.ascontiguousarray(features, dtype=np.float32)
        outs = []
        for i in range(0, len(x), batch):
            feed = {INPUT_NAME: x[i : i + batch]}
            if feats is not None:
                feed[FEATURES_INPUT_NAME] = feats[i : i + batch]
            outs.append(self.session.run([self.output], feed)[0])
        probs = np.concatenate(outs, axis=0)
        if self.meta.output == "logits":
            probs = 1.0 / (1.0 + np.exp(-probs))
        return probs

    def features(self, windows: np.ndarray) -> np.ndarray | None:
        """Hand features of a hybrid model, computed by the project's own numpy function."""
        if not self.meta.features:
            return None
        from cpsc2018.features import FEATURE_NAMES, window_features

        if list(FEATURE_NAMES) != list(self.meta.features):
            raise MetadataError(f"model expects features {self.meta.features}, this version computes {list(FEATURE_NAMES)}")
        fs = float(self.meta.preprocess["fs"])
        return np.stack([window_features(w, fs) for w in windows]).astype(np.float32)
