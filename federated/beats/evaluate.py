"""Scoring a beat model (``.pt`` checkpoint or ``.onnx``) on every annotated beat of every record under a folder.

``python -m federated.evaluate --model-file FILE --data DIR`` lands here when FILE is a beat model (label
set ``aami``, read from the checkpoint or the ONNX metadata). ``--split`` does not apply: the held-out
set of the inter-patient protocol is another folder (DS2), so every beat-annotated record under DIR is
scored; records the model trained or validated on are named in the report (``seen_in_training``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cpsc2018.beats import BeatConfig, is_beat_config
from cpsc2018.labels import AAMI
from federated.beats.metrics import beat_metrics, format_beat_table

# windows (n, leads, W), RR features (n, n_rr) -> probabilities (n, 5)
BeatPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class BeatModel:
    predict: BeatPredictor
    cfg: BeatConfig
    labels: list[str]
    split: dict
    description: str


def is_beat_model(path: Path) -> bool:
    """Whether ``path`` holds a beat model; False for anything unreadable (the caller reports that)."""
    try:
        if path.suffix == ".onnx":
            from export.metadata import read_onnx_metadata

            meta = read_onnx_metadata(str(path))
            return meta.label_set == "aami" or is_beat_config(meta.preprocess)
        from federated.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return ckpt.label_set == "aami" or is_beat_config(ckpt.preprocess)
    except Exception:
        return False


def load_beat_model(path: Path) -> BeatModel:
    if path.suffix == ".onnx":
        from export.runtime import OnnxPredictor

        onnx_pred = OnnxPredictor(str(path))
        meta = onnx_pred.meta
        use_rr = bool(meta.features)

        def predict_onnx(w: np.ndarray, rr: np.ndarray) -> np.ndarray:
            if use_rr:
                return onnx_pred.predict_windows(w, batch=512, features=rr)
            return onnx_pred.predict_windows(w, batch=512)

        q = meta.quantization
        kind = "int8" if q else "fp32"
        return BeatModel(predict_onnx, BeatConfig.from_dict(meta.preprocess), meta.labels, meta.split, f"ONNX {kind} {meta.model_name}")
    import torch

    from federated.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    use_rr = bool(getattr(model, "num_features", 0))

    @torch.no_grad()
    def predict_torch(w: np.ndarray, rr: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(w), 1024):
            x = torch.from_numpy(np.ascontiguousarray(w[i : i + 1024], dtype=np.float32))
            f = torch.from_numpy(np.ascontiguousarray(rr[i : i + 1024], dtype=np.float32))
            out.append(torch.softmax(model(x, f) if use_rr else model(x), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(ckpt.labels)), dtype=np.float32)

    return BeatModel(predict_torch, BeatConfig.from_dict(ckpt.preprocess), list(ckpt.labels), ckpt.split, f"checkpoint {ckpt.model_name}")


def evaluate_beat_model(path: Path, data: Path, progress: bool = False) -> dict:
    """The JSON of ``evaluate --json`` for beat models: ``task``, ``beats``, ``macro.f1``, ``per_class``
    (``sensitivity``, ``ppv``, ``f1`` and more), ``confusion`` (rows reference, columns predicted)."""
    from federated.beats.data import BeatDataError, load_beat_data
    from federated.evaluate import EvaluationError

    try:
        model = load_beat_model(path)
    except Exception as exc:  # checkpoint or metadata errors: one line naming the file
        raise EvaluationError(f"{path}: cannot load the beat model ({exc})") from None
    if list(model.labels) != list(AAMI):
        raise EvaluationError(f"{path}: beat labels {model.labels}, expected {list(AAMI)}")
    try:
        bd = load_beat_data(data, model.cfg, progress=progress)
    except BeatDataError as exc:
        raise EvaluationError(str(exc)) from None
    ys, probs, per_record = [], [], {}
    for name, rb in tqdm(bd.records.items(), desc="scoring", unit="rec", disable=not progress):
        p = model.predict(rb.windows, rb.rr)
        ys.append(rb.labels)
        probs.append(p)
        per_record[name] = {"beats": len(rb), "accuracy": float((p.argmax(axis=1) == rb.labels).mean()) if len(rb) else None}
    y, p = np.concatenate(ys), np.concatenate(probs)
    result = {"task": "beats", **beat_metrics(y, p.argmax(axis=1), list(AAMI), p)}
    seen = set(model.split.get("train_records", [])) | set(model.split.get("val_records", []))
    result.update(
        model=model.description,
        records=list(bd.records),
        per_record=per_record,
        seen_in_training=sorted(seen & set(bd.records)),
        skipped=bd.skipped,
    )
    return result


def format_beat_report(r: dict) -> str:
    lines = [f"{r['model']} on {r['beats']} beats of {len(r['records'])} records", "", format_beat_table(r)]
    if r.get("seen_in_training"):
        lines.append(f"\nnote: the model trained or validated on {len(r['seen_in_training'])} of these records "
                     f"({', '.join(r['seen_in_training'])}): not an inter-patient figure")
    for s in r.get("skipped", []):
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    return "\n".join(lines)
