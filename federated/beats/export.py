"""int8 ONNX export of a beat model through the export package's steps and its gate.

``python -m export --checkpoint runs/beats/best.pt --calibration-data DIR --out DIR`` comes here for a beat
checkpoint (label set ``aami``). The steps are the 12-lead ones (``export/__main__.py``):

1. ``export.onnx_export.export_fp32``: inputs ``ecg`` [batch, leads, 126] and ``features`` [batch, 7] (the
   RR features: the hybrid models' second input), output softmax probabilities [batch, 5]; metadata
   carry the :class:`~cpsc2018.beats.BeatConfig` as ``preprocess``, the RR feature names as ``features``,
   the label set ``aami`` and the training/validation records (``split``).
2. ``export.quantize``: static QDQ int8, per-channel weights, calibrated on beats of the checkpoint's
   training records (``calibration_beats`` drawn at random), the same recipe ladder as the 12-lead
   models, with the small RR-feature path kept in fp32.
3. the gate, per beat: decision (top-1 class) agreement between int8 and fp32 on the beats of the
   checkpoint's validation records (>= 97 %) and the macro one-vs-rest AUROC drop (<= 0.01, classes with
   at least 20 validation beats); the macro F1 drop is reported (gated with ``--max-f1-drop``).
4. ``export.report``: sizes, parity, latency (one beat, batch 1) beside the CPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dataclasses import replace

import numpy as np
import onnx
import torch

from cpsc2018.beat_dataset import BeatDataset
from cpsc2018.beats import BeatConfig
from cpsc2018.labels import AAMI
from export.gate import GateResult, gate_reasons
from export.onnx_export import PARITY_TOL, ExportError, export_fp32, meta_from_checkpoint, write_metadata
from export.runtime import OnnxPredictor
from federated.beats.data import load_beat_data
from federated.beats.metrics import beat_metrics
from federated.checkpoint import Checkpoint

OUTPUTS = ("model.onnx", "model.int8.onnx", "report.json", "report.md")


# The gate's macro AUROC averages the classes with at least this many validation beats: an AUROC over
# 2 S beats (a validation record without S ectopy) moves by 0.01 when one beat's rank changes, which
# would fail a faithful int8 model on noise (the reason DECISIONS.md gates 12-lead models on agreement).
MIN_AUROC_BEATS = 20


def _gate_auroc(per_class: dict) -> float:
    vals = [c["auroc"] for c in per_class.values() if c["support"] >= MIN_AUROC_BEATS and not np.isnan(c["auroc"])]
    return float(np.mean(vals)) if vals else float("nan")


def beat_gate(p32: np.ndarray, p8: np.ndarray, y: np.ndarray, min_agreement: float, max_auroc_drop: float, max_f1_drop: float | None) -> GateResult:
    """The export gate for beats: top-1 agreement and macro AUROC drop (one-vs-rest, classes with at least
    :data:`MIN_AUROC_BEATS` validation beats), macro F1 drop reported."""
    r32 = beat_metrics(y, p32.argmax(axis=1), list(AAMI), p32)
    r8 = beat_metrics(y, p8.argmax(axis=1), list(AAMI), p8)
    m32 = {"auroc": _gate_auroc(r32["per_class"]), "f1": r32["macro"]["f1"]}
    m8 = {"auroc": _gate_auroc(r8["per_class"]), "f1": r8["macro"]["f1"]}
    agreement = float(np.mean(p32.argmax(axis=1) == p8.argmax(axis=1)))
    auroc_drop, f1_drop = m32["auroc"] - m8["auroc"], m32["f1"] - m8["f1"]
    reasons = gate_reasons(agreement, auroc_drop, f1_drop, min_agreement, max_auroc_drop, max_f1_drop, what="beat decision")
    return GateResult(not reasons, agreement, m32["auroc"], m8["auroc"], auroc_drop, m32["f1"], m8["f1"], f1_drop, reasons)


def _calibration(train: BeatDataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training beats drawn at random (seeded): the class mix the model meets. A class-balanced draw
    was tried and agreed less with fp32 (92.8 % against 96.5 % of 2,955 validation beats, an undertrained
    model): the rare V and F beats' large amplitudes stretch the activation ranges for everything else."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train), size=min(n, len(train)), replace=False))
    return train.windows.numpy()[pick], train.rr.numpy()[pick]


def run_beat_export(
    ckpt: Checkpoint, checkpoint: Path, data: Path, out: Path, *, opset: int = 17, method: str = "minmax",
    max_f1_drop: float | None = None, min_agreement: float = 0.97, max_auroc_drop: float = 0.01,
    calibration_beats: int = 2000, repeats: int = 50, reduce_range: bool = True, log=print,
) -> dict:
    from export.cpu import cpu_class, cpu_features
    from export.quantize import WindowReader, quantize, recipes
    from export.report import export_report, latency, publish

    cfg = BeatConfig.from_dict(ckpt.preprocess)
    train_names, val_names = list(ckpt.split.get("train_records", [])), list(ckpt.split.get("val_records", []))
    if not val_names:
        raise ExportError(f"{checkpoint}: the checkpoint records no validation records: the gate has nothing to decide on")
    bd = load_beat_data(data, cfg, progress=False, only=train_names + val_names)
    missing = sorted(set(val_names) - set(bd.records))
    if missing:
        raise ExportError(f"validation records {', '.join(missing)} of {checkpoint} are not under {data}")
    train_here = [n for n in train_names if n in bd.records]
    if not train_here:
        raise ExportError(f"none of the training records of {checkpoint} is under {data}: nothing to calibrate on")
    val = BeatDataset(bd.subset(val_names))
    calib_x, calib_rr = _calibration(BeatDataset(bd.subset(train_here)), calibration_beats, int(ckpt.split.get("seed", 0)))
    use_rr = bool(ckpt.features)
    vx, vrr, vy = val.windows.numpy(), val.rr.numpy(), val.labels.numpy()

    def probs(path: Path) -> np.ndarray:
        return OnnxPredictor(str(path)).predict_windows(vx, batch=512, features=vrr if use_rr else None)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
        log(f"[1/4] exporting {ckpt.model_name} (beats) to ONNX (opset {opset})")
        wrapped = export_fp32(ckpt, fp32, cfg.window_samples, opset)
        probe = slice(0, min(256, len(calib_x)))
        inputs = [torch.from_numpy(calib_x[probe])] + ([torch.from_numpy(calib_rr[probe])] if use_rr else [])
        with torch.no_grad():
            ref = wrapped(*inputs).numpy()
        got = OnnxPredictor(str(fp32)).predict_windows(calib_x[probe], features=calib_rr[probe] if use_rr else None)
        diff = float(np.max(np.abs(ref - got)))
        if not diff <= PARITY_TOL:
            raise ExportError(f"ONNX output differs from torch by {diff:.2e} (> {PARITY_TOL:g}) on real beats")
        log(f"      parity torch vs ONNX on {len(ref)} real beats: max |diff| {diff:.2e}; {len(calib_x)} calibration beats")
        p32 = probs(fp32)
        cpu = cpu_features()
        cls = cpu_class(cpu)
        # The RR path (BatchNorm + a 7 -> 16 Linear) stays fp32 in every recipe: it costs nothing, and an
        # 8-bit grid over the RR inputs' range (0.2-3 s, ratios up to ~10 at record edges) is coarse next
        # to the 5-10 % prematurity that tells an S beat from an N beat.
        rr_nodes = tuple(n.name for n in onnx.load(str(fp32)).graph.node if "feature_net" in n.name) if use_rr else ()
        options = [
            replace(r, keep_fp32=tuple(sorted(set(r.keep_fp32) | set(rr_nodes))), note=r.note + (", RR-feature path fp32" if rr_nodes else ""))
            for r in recipes(fp32, method, reduce_range)
        ]
        attempts, chosen, gate = [], None, None
        for i, recipe in enumerate(options, 1):
            quantize(fp32, int8, WindowReader(calib_x, calib_rr if use_rr else None), recipe)
            g = beat_gate(p32, probs(int8), vy, min_agreement, max_auroc_drop, max_f1_drop)
            attempts.append({"note": recipe.note, "passed": g.passed, "reasons": g.reasons, **g.to_dict()})
            log(f"[2-3/4] {recipe.note}: agreement {g.agreement:.4f}, AUROC drop {g.auroc_drop:+.4f}, F1 drop {g.f1_drop:+.4f} "
                f"-> {'pass' if g.passed else 'fail'} ({len(vy)} validation beats)")
            if g.passed:
                chosen, gate = (i, recipe), g
                break
        if chosen is None:
            raise ExportError("no int8 beat model passed the gate: " + " | ".join(f"{a['note']}: {'; '.join(a['reasons'])}" for a in attempts))
        attempt, recipe = chosen
        write_metadata(int8, meta_from_checkpoint(ckpt, {"format": "QDQ", "weights": "int8", **recipe.to_dict(), "calibration_windows": len(calib_x), "gate_cpu": cls}))
        log(f"[4/4] latency on {cls}")
        lat = latency(fp32, int8, wrapped, calib_x[0], repeats, calib_rr if use_rr else None)
        note = (f"beats: gate decided on the {len(vy)} beats of the checkpoint's validation records ({', '.join(val_names)}); "
                f"calibration on {len(calib_x)} beats of its {len(train_here)} training records; no test part (DS2 is another folder)")
        report = export_report(
            ckpt=ckpt, checkpoint=checkpoint, fp32=fp32, int8=int8, parity_diff=diff, parity_windows=len(ref), recipe=recipe,
            attempt=attempt, attempts_available=len(options), attempts=attempts, gate=gate, cpu=cpu, records_note=note,
            validation_records=len(vy), test_records=0, test={}, lat=lat, extra={"task": "beats"},
        )
        publish(tmp, out, report, OUTPUTS, unit="beats")  # validation_records counts beats for this task
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
