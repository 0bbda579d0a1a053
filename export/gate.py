"""Step 3 of the export: does int8 decide like fp32 on records the model did not train on?

The gate decides (which quantization recipe, pass or fail) on the checkpoint's VALIDATION records:
selecting on the test records would make the test figures optimistic. The same figures on the test
records are computed for the chosen recipe and reported beside, never used to decide. Calibration uses
training records only. Records are read with the checkpoint's data options (its PTB-XL rate).

The validation split is small (a few positives per class), so one record moves macro F1 by more than
0.01. The gate (DECISIONS.md) therefore uses what small samples measure well: the agreement of the
per-class decisions of int8 and fp32 (>= 97 %) and the drop of macro AUROC (<= 0.01); the F1 drop is
reported beside them, and gated only when ``--max-f1-drop`` is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cpsc2018.catalog import Entry, load, ptbxl_rates_read, scan
from cpsc2018.preprocess import EVAL_MAX_WINDOWS, PreprocessConfig, preprocess, windows
from cpsc2018.records import RecordError
from cpsc2018.splits import split_by_patient
from export.runtime import OnnxPredictor
from federated.checkpoint import Checkpoint
from federated.metrics import multilabel_metrics


@dataclass
class RecordSet:
    keys: list[str]
    windows: list[np.ndarray]  # per record: (n_windows, 12, L)
    targets: np.ndarray


@dataclass
class EvalData:
    validation: RecordSet  # the gate decides on these
    test: RecordSet  # reported beside, never used to decide
    calibration: np.ndarray  # (n, 12, L) windows of training records
    note: str


def _load(entries: list[Entry], pre: PreprocessConfig, label_set: str, max_windows: int, desc: str) -> RecordSet:
    keys, wins, ys = [], [], []
    for e in tqdm(entries, desc=desc, unit="rec", leave=False):
        try:
            x = preprocess(load(e).signal, e.fs, pre)
        except (RecordError, ValueError):
            continue
        keys.append(e.key)
        wins.append(windows(x, pre, max_windows))
        ys.append(e.targets(label_set))
    return RecordSet(keys, wins, np.array(ys).reshape(len(ys), -1))


def gather(ckpt: Checkpoint, data_dir, calibration_records: int = 100, seed: int = 0) -> EvalData:
    """Validation records (the gate's), test records (reported) and calibration windows (training).

    The checkpoint's own split where its records are under ``data_dir``; otherwise a fresh patient
    split of that folder with the checkpoint's seed and fractions (stated in the note).
    """
    pre = PreprocessConfig.from_dict(ckpt.preprocess)
    rate = int(ckpt.data_options["ptbxl_rate"])  # read records as training did (DESIGN: one source)
    entries = [e for e in scan(data_dir, ptbxl_rate=rate, progress=False).entries if e.n_leads == 12]
    if not entries:
        raise ValueError(f"no readable 12-lead record under {data_dir} for calibration")
    val_ids = set(ckpt.split.get("val_ids", []))
    test_ids = set(ckpt.split.get("test_ids", []))
    val = [e for e in entries if e.key in val_ids]
    test = [e for e in entries if e.key in test_ids]
    note = (
        f"gate decided on the checkpoint's validation split ({len(val)} of {len(val_ids)} found under {data_dir}); "
        f"test split ({len(test)} of {len(test_ids)}) reported beside"
    )
    if not val:
        seed_ = int(ckpt.split.get("seed", 0))
        fractions = tuple(ckpt.split.get("fractions", (0.7, 0.15, 0.15)))
        parts = split_by_patient(entries, fractions=fractions, seed=seed_, label_set=ckpt.label_set)  # type: ignore[arg-type]
        val, test = parts["val"], parts["test"]
        val_ids, test_ids = {e.key for e in val}, {e.key for e in test}
        note = (
            f"none of the checkpoint's validation records is under {data_dir}: a fresh patient split of that folder "
            f"(seed {seed_}): gate decided on its validation part ({len(val)} records), test part ({len(test)}) reported beside"
        )
    train = [e for e in entries if e.key not in test_ids and e.key not in val_ids]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(train), size=min(calibration_records, len(train)), replace=False)) if train else []
    calib = _load([train[i] for i in pick], pre, ckpt.label_set, 2, "calibration records")
    if not calib.windows:
        raise ValueError(f"no usable calibration record under {data_dir}")
    val_set = _load(val, pre, ckpt.label_set, EVAL_MAX_WINDOWS, "validation records")
    if not val_set.keys:
        raise ValueError(f"no usable validation record under {data_dir}: the gate has nothing to decide on")
    test_set = _load(test, pre, ckpt.label_set, EVAL_MAX_WINDOWS, "test records")
    note += "; " + rates_note(entries, rate)
    return EvalData(val_set, test_set, np.concatenate(calib.windows), note)


def rates_note(entries: list[Entry], asked: int) -> str:
    """Which PTB-XL rate was read in each folder (a folder with one rate only gives that one)."""
    read = ptbxl_rates_read(entries)
    if not read:
        return f"PTB-XL rate {asked} Hz (no PTB-XL folder here)"
    parts = [f"{folder} at {' and '.join(f'{hz} Hz' for hz in sorted(rates))}" for folder, rates in read.items()]
    return f"PTB-XL read at the model's {asked} Hz where present: " + ", ".join(parts)


def record_probs(predictor: OnnxPredictor, records: RecordSet) -> np.ndarray:
    return np.stack([predictor.predict_windows(w).max(axis=0) for w in records.windows])


@dataclass
class GateResult:
    passed: bool
    agreement: float
    auroc_fp32: float
    auroc_int8: float
    auroc_drop: float
    f1_fp32: float
    f1_int8: float
    f1_drop: float
    reasons: list[str]

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def compare(p32: np.ndarray, p8: np.ndarray, y: np.ndarray, labels: list[str], thresholds: list[float]) -> dict:
    """int8 vs fp32 figures on one record set: decision agreement, macro AUROC and F1 of each, drops."""
    if len(y) == 0:
        nan = math.nan
        return {"records": 0, "agreement": nan, "auroc_fp32": nan, "auroc_int8": nan, "auroc_drop": nan, "f1_fp32": nan, "f1_int8": nan, "f1_drop": nan}
    t = np.asarray(thresholds)[None, :]
    m32 = multilabel_metrics(y, p32, labels, thresholds)["macro"]
    m8 = multilabel_metrics(y, p8, labels, thresholds)["macro"]
    return {
        "records": int(len(y)),
        "agreement": float(np.mean((p32 >= t) == (p8 >= t))),
        "auroc_fp32": m32["auroc"], "auroc_int8": m8["auroc"], "auroc_drop": m32["auroc"] - m8["auroc"],
        "f1_fp32": m32["f1"], "f1_int8": m8["f1"], "f1_drop": m32["f1"] - m8["f1"],
    }


def gate_reasons(
    agreement: float, auroc_drop: float, f1_drop: float, min_agreement: float, max_auroc_drop: float,
    max_f1_drop: float | None, what: str = "decision",
) -> list[str]:
    """Why an int8 model fails the gate (empty: it passes); one rule for record and beat exports."""
    reasons = []
    if agreement < min_agreement:
        reasons.append(f"{what} agreement {agreement:.4f} < {min_agreement}")
    if auroc_drop > max_auroc_drop:
        reasons.append(f"macro AUROC drop {auroc_drop:.4f} > {max_auroc_drop}")
    if max_f1_drop is not None and f1_drop > max_f1_drop:
        reasons.append(f"macro F1 drop {f1_drop:.4f} > {max_f1_drop}")
    return reasons


def judge(
    p32: np.ndarray, p8: np.ndarray, y: np.ndarray, labels: list[str], thresholds: list[float],
    min_agreement: float, max_auroc_drop: float, max_f1_drop: float | None,
) -> GateResult:
    """The gate's decision; call it on validation records only (module docstring)."""
    c = compare(p32, p8, y, labels, thresholds)
    agreement, auroc_drop, f1_drop = c["agreement"], c["auroc_drop"], c["f1_drop"]
    reasons = gate_reasons(agreement, auroc_drop, f1_drop, min_agreement, max_auroc_drop, max_f1_drop)
    return GateResult(not reasons, agreement, c["auroc_fp32"], c["auroc_int8"], auroc_drop, c["f1_fp32"], c["f1_int8"], f1_drop, reasons)
