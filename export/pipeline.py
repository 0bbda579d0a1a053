"""``python -m export.pipeline``: the app's fused pipeline, int8 network + gradient boosting on record features.

    python -m export.pipeline --checkpoint runs/x/best.pt --network runs/x/export/model.int8.onnx \\
        --data ../shared/data --out runs/x/pipeline

Two ONNX parts, combined as the network file's metadata says (DECISIONS.md: several ONNX parts are
fine when the metadata says how they combine; the app runs ONNX + this repository's numpy/scipy only):

* the network (``python -m export``'s int8 file, unchanged but for one metadata key ``pipeline``,
  :class:`mobile_app.inference.PipelineSpec`): record probabilities, max over windows, as always;
* ``features.onnx``: per class a scikit-learn ``HistGradientBoostingClassifier`` on the numpy/scipy
  record features :func:`cpsc2018.features.expert_features` (mV, the record's own rate), converted by
  skl2onnx and merged into one graph: input ``features`` float32 [batch, n_features] (NaN where a
  feature was not measurable: the trees keep their learned NaN branch), output ``probabilities``
  float32 [batch, n_classes];
* fusion: ``p = w * p_network + (1 - w) * p_features`` with per-class thresholds of their own;
* calibration (issue 20): per class a monotone map of the fused probability (Platt scaling, or
  isotonic where there is enough data: :mod:`export.calibration`), fitted on the VALIDATION records'
  fused probabilities and stored in the network file's metadata key ``calibration``; the app reports
  calibrated probabilities and decides as before (uncalibrated probability against the thresholds).
  The report gives the expected calibration error before and after (validation: where it was fitted;
  test: held out) and ``reliability.png``.

What is chosen on which records: the feature model is fitted on the checkpoint's TRAINING records
(every 12-lead record under ``--data`` outside its validation and test ids); its hyper-parameters per
class (``federated.baseline.candidates("gbm")``), the weight ``w`` (:func:`choose_weight`) and the
fused thresholds (``tune_thresholds``) on its VALIDATION records. Test figures are reported beside,
never used to choose. Validation figures are therefore optimistic; test figures are not.

The report's figures are computed through :class:`mobile_app.inference.Classifier` on the files
written (the app's path: its reader output, its preprocessing, its feature call, its ONNX runs).

Float32: the app feeds float32 features, so the feature model is fitted and scored here on the
float32 values of the features (:func:`as_float32`); skl2onnx rounds each split threshold so that a
float32 input takes the same branch as in scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from cpsc2018.cache import DEFAULT_CACHE_DIR
from cpsc2018.catalog import Entry, load, scan
from cpsc2018.features import EXPERT_NAMES
from cpsc2018.records import RecordError
from cpsc2018.util import default_data_dir
from export.metadata import MetadataError, read_onnx_metadata
from federated.baseline import candidates, feature_matrix, fit_predict
from federated.checkpoint import CheckpointError, load_checkpoint
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.outputs import json_safe
from export.calibration import CALIBRATION_KEY, Calibration, ece_table, fit_calibration, plot_reliability
from mobile_app.inference import (
    FEATURE_MODEL_INPUT, FEATURE_MODEL_MARKER, FEATURE_MODEL_OUTPUT, PIPELINE_KEY, Classifier, ClassifyError,
    PipelineSpec, fuse,
)

__all__ = [
    "FeatureModel", "PipelineError", "WEIGHT_GRID", "as_float32", "choose_weight", "feature_model_to_onnx",
    "fit_feature_model", "fuse", "macro_auroc", "run_pipeline", "write_pipeline",
]

FEATURE_FILE = "features.onnx"
NETWORK_FILE = "model.int8.onnx"
# scores.npz: every scored record's key, targets and the network, feature-model and fused probabilities
# (validation and test), as the app computed them; for error analysis and cross-validation tables.
OUTPUTS = (NETWORK_FILE, FEATURE_FILE, "report.json", "report.md", "scores.npz", "reliability.png")
CALIBRATION_CHOICES: tuple[str, ...] = ("auto", "platt", "temperature", "isotonic", "none")
WEIGHT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))  # network weight w
OPSET = 17  # the network's opset (python -m export)
ML_OPSET = 3  # ai.onnx.ml 3 (TreeEnsembleClassifier with NaN-aware branches): onnxruntime >= 1.10
MAX_SIZE_MB = 5.0  # DECISIONS.md: the app's model budget
MAX_LATENCY_MS = 50.0  # issue 15: per 10 s record at 1 thread (reported against, not gated: machines differ)


class PipelineError(ValueError):
    """The pipeline cannot be built from these inputs; the message says which and why."""


def as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to float32 and back to float64: the values the app's float32 input carries."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


@dataclass
class FeatureModel:
    """Per class a fitted ``HistGradientBoostingClassifier``, or a constant probability (a float) where
    the training records held one class only."""

    estimators: list[HistGradientBoostingClassifier | float]
    chosen: list[str]  # per class: the hyper-parameters chosen on validation AUROC, or "constant p"
    n_features: int  # width of the input (every feature name)
    columns: list[int]  # the input columns the trees see: those with a value in some training record
    notes: list[str] = field(default_factory=list)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Positive-class probabilities ``(n, n_classes)`` on the float32 values of ``x`` (the app's input)."""
        x = as_float32(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        x = x[:, self.columns]
        out = np.empty((len(x), len(self.estimators)))
        for k, est in enumerate(self.estimators):
            out[:, k] = est if isinstance(est, float) else est.predict_proba(x)[:, 1]
        return out


def fit_feature_model(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int,
    *, labels: Sequence[str] | None = None,
) -> FeatureModel:
    """Per class a gradient-boosting classifier, as the baseline fits it (``federated.baseline.fit_predict``
    with ``candidates("gbm", seed)``): every candidate fitted on train, the best validation AUROC kept
    (ties and unscorable validation sets keep the more regularised); a class with no positive training
    record is a constant 0 (one with only positives a constant 1). NaN features are allowed; a column
    that is NaN in every training record carries nothing (and the boosting's binning refuses it): the
    model ignores it, but keeps taking the full-width input (named in ``notes``).

    ``x_*`` are ``(n, n_features)`` (used as float32 values, :func:`as_float32`), ``y_*`` ``(n, n_classes)``
    0/1; ``labels`` only name the classes in ``chosen`` and ``notes``. Single-threaded (threadpoolctl):
    on a few thousand records OpenMP costs more than it gains on a shared machine (baseline.py).
    """
    x_train, x_val = as_float32(x_train), as_float32(x_val)
    y_train, y_val = np.asarray(y_train).astype(int), np.asarray(y_val).astype(int)
    if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"expected 2-D feature matrices of equal width, got {x_train.shape} and {x_val.shape}")
    if y_train.ndim != 2 or y_val.ndim != 2 or y_val.shape[1] != y_train.shape[1] or len(y_train) != len(x_train) or len(y_val) != len(x_val):
        raise ValueError(f"targets {y_train.shape}/{y_val.shape} do not fit features {x_train.shape}/{x_val.shape}")
    if len(x_train) == 0:
        raise ValueError("no training record to fit the feature model on")
    n_classes = y_train.shape[1]
    names = list(labels) if labels is not None else [f"class {k}" for k in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} labels for {n_classes} target columns")
    n_width = x_train.shape[1]
    columns = [i for i in range(n_width) if not np.isnan(x_train[:, i]).all()]
    notes = [f"feature column {i} is NaN in every training record: ignored" for i in range(n_width) if i not in columns]
    x_train, x_val = x_train[:, columns], x_val[:, columns]
    n_tr = len(x_train)
    x = np.vstack([x_train, x_val])
    y = np.vstack([y_train, y_val])
    split = {"train": list(range(n_tr)), "val": list(range(n_tr, len(x)))}
    factories = dict(candidates("gbm", seed))
    estimators: list[HistGradientBoostingClassifier | float] = []
    chosen: list[str] = []
    with threadpool_limits(limits=1):
        fp = fit_predict("gbm", x, y, split, seed, names)
        for k, name in enumerate(names):
            desc = fp["chosen"][name]
            chosen.append(desc)
            if desc.startswith("constant "):
                estimators.append(float(desc.split()[1]))
                continue
            # fit_predict returns probabilities, not models: refit the chosen candidate. Same data, fixed
            # random_state and no early stopping make it the very model fit_predict scored (checked).
            est = factories[desc]().fit(x_train, y_train[:, k])
            if len(x_val) and not np.allclose(est.predict_proba(x_val)[:, 1], fp["probs"]["val"][:, k], atol=1e-12):
                raise RuntimeError(f"refitting {name} ({desc}) did not reproduce the model chosen on validation")
            estimators.append(est)
    return FeatureModel(estimators, chosen, n_width, columns, notes + list(fp["notes"]))


# --- ONNX ---------------------------------------------------------------------------------------


def _class_nodes(est: HistGradientBoostingClassifier, n_features: int, k: int, source: str) -> tuple[onnx.ModelProto, str]:
    """skl2onnx's graph of one class reading tensor ``source``, names prefixed ``c{k}_`` (the shared input
    keeps its name), and the name of its ``(n, 2)`` probability output."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        est, initial_types=[(source, FloatTensorType([None, n_features]))],
        options={id(est): {"zipmap": False}}, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    onx = onnx.compose.add_prefix(onx, f"c{k}_", rename_inputs=False)
    probs = [o.name for o in onx.graph.output if o.name.endswith("probabilities")]
    if len(probs) != 1:
        raise RuntimeError(f"unexpected skl2onnx outputs {[o.name for o in onx.graph.output]}")
    return onx, probs[0]


def feature_model_to_onnx(
    model: FeatureModel, feature_names: Sequence[str], labels: Sequence[str], *, engine: str = "numpy",
) -> onnx.ModelProto:
    """One ONNX graph for the whole feature model: input ``features`` float32 [batch, n_features],
    output ``probabilities`` float32 [batch, n_classes] (positive-class probability per class, in
    ``labels`` order).

    Each class's classifier is converted by skl2onnx (a ``TreeEnsembleClassifier`` node whose branches
    keep scikit-learn's NaN direction); its positive column is sliced out, constant classes are a
    ``ConstantOfShape``, and one ``Concat`` joins the columns. Input columns the model ignores (NaN in
    every training record) are dropped by a ``Gather`` first. Metadata: ``ecglite.feature_model``
    (format version), ``labels``, ``feature_names``, ``feature_engine``, ``chosen``, ``ignored_features``.
    """
    names, labels = list(feature_names), list(labels)
    if len(names) != model.n_features:
        raise ValueError(f"{len(names)} feature names for a model of {model.n_features} features")
    if len(labels) != len(model.estimators):
        raise ValueError(f"{len(labels)} labels for a model of {len(model.estimators)} classes")
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    consts: set[str] = set()  # int64 [value] initializers, added once each and only when used

    def const(name: str, value: int) -> str:
        if name not in consts:
            consts.add(name)
            inits.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
        return name

    opsets = {"": OPSET}
    ir_version = 8  # onnxruntime >= 1.14 reads it; raised below if skl2onnx wrote a newer one
    source = FEATURE_MODEL_INPUT
    if list(model.columns) != list(range(model.n_features)):
        inits.append(numpy_helper.from_array(np.array(model.columns, dtype=np.int64), "used_columns"))
        nodes.append(helper.make_node("Gather", [FEATURE_MODEL_INPUT, "used_columns"], ["used_features"], axis=1))
        source = "used_features"
    columns = []
    have_batch_shape = False
    for k, est in enumerate(model.estimators):
        col = f"p{k}"
        if isinstance(est, float):
            if not have_batch_shape:  # [batch, 1] from the input's shape, built once
                zero, one = const("zero", 0), const("one", 1)
                nodes += [
                    helper.make_node("Shape", [FEATURE_MODEL_INPUT], ["input_shape"]),
                    helper.make_node("Slice", ["input_shape", zero, one, zero], ["batch"]),
                    helper.make_node("Concat", ["batch", one], ["batch_by_1"], axis=0),
                ]
                have_batch_shape = True
            value = helper.make_tensor(f"value{k}", TensorProto.FLOAT, [1], [est])
            nodes.append(helper.make_node("ConstantOfShape", ["batch_by_1"], [col], value=value))
        else:
            onx, probs = _class_nodes(est, len(model.columns), k, source)
            nodes += list(onx.graph.node)
            inits += list(onx.graph.initializer)
            for imp in onx.opset_import:
                opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
            ir_version = max(ir_version, onx.ir_version)
            one, two = const("one", 1), const("two", 2)
            nodes.append(helper.make_node("Slice", [probs, one, two, one], [col]))  # column 1: positive class
        columns.append(col)
    nodes.append(helper.make_node("Concat", columns, [FEATURE_MODEL_OUTPUT], axis=1))
    graph = helper.make_graph(
        nodes, "ecglite_feature_model",
        [helper.make_tensor_value_info(FEATURE_MODEL_INPUT, TensorProto.FLOAT, ["batch", len(names)])],
        [helper.make_tensor_value_info(FEATURE_MODEL_OUTPUT, TensorProto.FLOAT, ["batch", len(labels)])],
        initializer=inits,
    )
    out = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="ecg-lite export.pipeline", ir_version=ir_version,
    )
    helper.set_model_props(out, {
        FEATURE_MODEL_MARKER: "1",
        "labels": json.dumps(labels),
        "feature_names": json.dumps(names),
        "feature_engine": engine,
        "chosen": json.dumps(dict(zip(labels, model.chosen))),
        "ignored_features": json.dumps([n for i, n in enumerate(names) if i not in model.columns]),
        "classifier": "HistGradientBoostingClassifier per class (scikit-learn), converted by skl2onnx",
    })
    onnx.checker.check_model(out)
    return out


def write_pipeline(network: Path | str, feature_model: onnx.ModelProto, spec: PipelineSpec, folder: Path | str,
                   calibration: Calibration | None = None) -> Path:
    """Write ``folder/model.int8.onnx`` (a copy of ``network`` with the ``pipeline`` metadata key set to
    ``spec``, and ``calibration`` under its key when given) and ``folder/<spec.feature_model>``; returns the
    network copy's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = onnx.load(str(network))
    props = {p.key: p.value for p in net.metadata_props}
    props[PIPELINE_KEY] = spec.to_json()
    props.pop(CALIBRATION_KEY, None)
    if calibration is not None:
        props[CALIBRATION_KEY] = calibration.to_json()
    del net.metadata_props[:]
    helper.set_model_props(net, props)
    onnx.save(net, str(folder / NETWORK_FILE))
    onnx.save(feature_model, str(folder / spec.feature_model))
    return folder / NETWORK_FILE


# --- fusion -------------------------------------------------------------------------------------


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean AUROC over the classes where it is defined (both outcomes present); NaN if none is."""
    y = np.asarray(y).astype(int)
    names = [str(k) for k in range(y.shape[1])]
    return float(multilabel_metrics(y, p, names, [0.5] * len(names))["macro"]["auroc"])


WEIGHT_RULES: tuple[str, ...] = ("auroc", "ap", "f1", "half")
# "half": the plain average of the two parts' probabilities. In 5-fold patient cross-validation
# (benchmarks/results/compare_models.md, every rule's row) a weight chosen by validation macro AUROC
# leaned to the feature model (w 0-0.2) and lost F1 on the test parts; the plain average needs no choice
# on ~300 validation records and did as well as the F1- and AP-chosen weights.
DEFAULT_WEIGHT_RULE = "half"


def _macro_ap(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    scores = [average_precision_score(y[:, k], p[:, k]) for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    return float(np.mean(scores)) if scores else math.nan


def _macro_f1_tuned(y: np.ndarray, p: np.ndarray) -> float:
    return float(multilabel_metrics(y, p, [str(k) for k in range(y.shape[1])], tune_thresholds(y, p))["macro"]["f1"])


def choose_weight(
    p_net_val: np.ndarray, p_feat_val: np.ndarray, y_val: np.ndarray, grid: Sequence[float] = WEIGHT_GRID,
    rule: str = "auroc",
) -> float:
    """The network weight ``w`` of ``w * p_net + (1 - w) * p_feat`` on the (validation) records.

    ``rule``: "auroc" (best macro AUROC over ``grid``, 0, 0.1, ..., 1), "ap" (best macro average
    precision), "f1" (best macro F1 at thresholds tuned on the same records), "half" (0.5, no choice).
    Ties (to 1e-9) go to the ``w`` closer to 0.5, then to the larger ``w`` (the network); with no
    scorable class the answer is 0.5. Which rule ships is decided by cross-validation
    (``benchmarks/compare_models.py``); see :data:`DEFAULT_WEIGHT_RULE`.
    """
    if rule not in WEIGHT_RULES:
        raise ValueError(f"weight rule must be one of {WEIGHT_RULES}, got {rule!r}")
    if rule == "half":
        return 0.5
    measure = {"auroc": macro_auroc, "ap": _macro_ap, "f1": _macro_f1_tuned}[rule]
    best: tuple[float, float, float] | None = None
    for w in grid:
        score = measure(y_val, fuse(p_net_val, p_feat_val, float(w)))
        score = -math.inf if math.isnan(score) else round(score, 9)
        key = (score, -abs(float(w) - 0.5), float(w))
        if best is None or key > best:
            best = key
    if best is None or best[0] == -math.inf:
        return 0.5
    return best[2]


# --- the command --------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    """The export report's machine (CPU, its class and int8 features, software) plus the VNNI flag the
    report's last line names (VNNI makes int8 about twice as fast relative to fp32, PLATFORM.md)."""
    from export.report import machine as export_machine

    m = export_machine()
    return {**m, "avx512_vnni": (m["cpu_features"].get("features") or {}).get("avx512_vnni")}


@dataclass
class _Scored:
    keys: list[str]
    y: np.ndarray
    network: np.ndarray
    features: np.ndarray
    final: np.ndarray  # what the app reports (calibrated where the file carries a calibration)
    skipped: list[dict]
    raw: np.ndarray  # the fused probabilities before calibration (what the decisions compare)


def _score(clf: Classifier, entries: Sequence[Entry], label_set: str, n_classes: int) -> _Scored:
    """Every record through the app's ``Classifier.predict`` (records it refuses are listed, not scored)."""
    keys, ys, pn, pf, pp, pr, skipped = [], [], [], [], [], [], []
    for e in entries:
        try:
            rec = load(e)
            pred = clf.predict(rec.signal, rec.fs)
        except (RecordError, ClassifyError) as exc:
            skipped.append({"record": e.key, "reason": str(exc)})
            continue
        keys.append(e.key)
        ys.append(e.targets(label_set))
        pn.append(pred.network)
        pf.append(pred.features)
        pp.append(pred.probabilities)
        pr.append(pred.uncalibrated if pred.uncalibrated is not None else pred.probabilities)
    shape = (0, n_classes)
    arr = lambda v: np.array(v, dtype=np.float64) if v else np.zeros(shape)  # noqa: E731
    return _Scored(keys, np.array(ys, dtype=int).reshape(-1, n_classes), arr(pn), arr(pf), arr(pp), skipped, arr(pr))


def _latency(clf: Classifier, entries: Sequence[Entry], n: int) -> dict:
    """Median over ``n`` records of about 10 s of ``Classifier.predict`` (preprocessing, network, features,
    feature model, fusion; not reading), 1 thread (onnxruntime and numpy/scipy's BLAS/OpenMP pools)."""
    signals = []
    for e in entries:
        if len(signals) == n:
            break
        try:
            rec = load(e)
        except RecordError:
            continue
        if abs(rec.duration_s - 10.0) <= 0.05:
            signals.append((rec.signal, rec.fs))
    if not signals:
        return {"records": 0}
    totals, parts = [], {}
    with threadpool_limits(limits=1):
        clf.predict(*signals[0])  # warm-up (first-run allocations)
        for sig, fs in signals:
            t = time.perf_counter()
            pred = clf.predict(sig, fs)
            totals.append((time.perf_counter() - t) * 1e3)
            for k, v in pred.timings_ms.items():
                parts.setdefault(k, []).append(v)
    rates: dict[str, int] = {}
    for _, fs in signals:
        rates[f"{fs:g}"] = rates.get(f"{fs:g}", 0) + 1
    return {
        "records": len(signals), "record_seconds": 10, "rates_hz": rates, "threads": 1,
        "median_ms": statistics.median(totals), "max_ms": max(totals),
        "median_parts_ms": {k: statistics.median(v) for k, v in parts.items()},
    }


def _metrics(y: np.ndarray, p: np.ndarray, labels: list[str], thresholds: Sequence[float]) -> dict | None:
    return multilabel_metrics(y, p, labels, list(thresholds)) if len(y) else None


def run_pipeline(
    checkpoint: Path, network: Path, data: Path, out: Path, *, cache_dir: Path | None = None, workers: int = 1,
    latency_records: int = 20, max_size_mb: float = MAX_SIZE_MB, weight_rule: str | None = None,
    calibration: str = "auto", log=print,
) -> dict:
    """Build, score and write the pipeline (module docstring); returns the report dict."""
    weight_rule = weight_rule or DEFAULT_WEIGHT_RULE
    if calibration not in CALIBRATION_CHOICES:
        raise PipelineError(f"calibration must be one of {CALIBRATION_CHOICES}, got {calibration!r}")
    ckpt = load_checkpoint(checkpoint)
    labels, label_set = list(ckpt.labels), ckpt.label_set
    try:
        net_meta = read_onnx_metadata(str(network))
    except MetadataError as exc:
        raise PipelineError(str(exc)) from None
    if net_meta.labels != labels:
        raise PipelineError(f"{network}: labels {net_meta.labels} differ from the checkpoint's {labels}")
    if sorted(net_meta.split.get("test_ids", [])) != sorted(ckpt.split.get("test_ids", [])):
        raise PipelineError(f"{network} was not exported from {checkpoint}: their test splits differ")
    out = Path(out)
    if out.resolve() == Path(network).resolve().parent:
        raise PipelineError(f"--out {out} is the network's folder: its {NETWORK_FILE} and report.* would be overwritten")

    rate = int(ckpt.data_options["ptbxl_rate"])  # read records as training did
    entries = [e for e in scan(data, ptbxl_rate=rate, progress=False).entries if e.n_leads == 12]
    val_ids, test_ids = set(ckpt.split.get("val_ids", [])), set(ckpt.split.get("test_ids", []))
    val = [e for e in entries if e.key in val_ids]
    test = [e for e in entries if e.key in test_ids]
    train = [e for e in entries if e.key not in val_ids and e.key not in test_ids]
    if not val:
        raise PipelineError(
            f"none of the checkpoint's {len(val_ids)} validation records is under {data}: the weight and thresholds "
            "are chosen on them (give the folder the network was trained on)"
        )
    if not train:
        raise PipelineError(f"no training record under {data} outside the checkpoint's validation and test ids")
    log(f"[1/5] records under {data} (PTB-XL at {rate} Hz where present): train {len(train)}, "
        f"validation {len(val)} of {len(val_ids)}, test {len(test)} of {len(test_ids)}")

    x, seconds = feature_matrix(train + val + test, cache_dir or DEFAULT_CACHE_DIR, engine="numpy", workers=workers,
                                progress=sys.stderr.isatty())
    log(f"      numpy expert features ({x.shape[1]}): " + ("from the cache" if seconds is None else f"{seconds:.1f} s"))
    y = np.array([e.targets(label_set) for e in train + val + test], dtype=int).reshape(len(x), -1)
    n_tr, n_va = len(train), len(val)
    seed = int(ckpt.split.get("seed", 0))
    log(f"[2/5] gradient boosting per class on {n_tr} training records (hyper-parameters on validation AUROC)")
    fm = fit_feature_model(x[:n_tr], y[:n_tr], x[n_tr:n_tr + n_va], y[n_tr:n_tr + n_va], seed, labels=labels)
    for note in fm.notes:
        log(f"      note: {note}")
    feat_onnx = feature_model_to_onnx(fm, list(EXPERT_NAMES), labels)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipeline-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would become the output folder's mode
    try:
        # Pass 1 through the app with a provisional weight: the two parts' probabilities on val/test.
        spec = PipelineSpec(FEATURE_FILE, "numpy", list(EXPERT_NAMES), 0.5, list(net_meta.thresholds))
        write_pipeline(network, feat_onnx, spec, tmp)
        log(f"[3/5] validation and test records through the app (mobile_app.inference)")
        first_val = _score(Classifier(tmp / NETWORK_FILE), val, label_set, len(labels))
        if not first_val.keys:
            raise PipelineError("the app scored none of the validation records")
        w = choose_weight(first_val.network, first_val.features, first_val.y, rule=weight_rule)
        fused_thr = tune_thresholds(first_val.y, fuse(first_val.network, first_val.features, w))
        feat_thr = tune_thresholds(first_val.y, first_val.features)
        grid = {f"{g:.1f}": macro_auroc(first_val.y, fuse(first_val.network, first_val.features, g)) for g in WEIGHT_GRID}
        log(f"      network weight w = {w:g} (rule {weight_rule}; validation macro AUROC {grid[f'{w:.1f}']:.4f})")
        # Calibration of the fused probability, per class, on the validation records (pass 1's parts
        # fused with the final w are exactly what the app computes there before calibration).
        cal = None
        if calibration != "none":
            cal = fit_calibration(fuse(first_val.network, first_val.features, w), first_val.y, labels, calibration)
            log(f"      calibration on {len(first_val.keys)} validation records: "
                + ", ".join(f"{n} {c.method}" for n, c in zip(labels, cal.classes)))
        # Pass 2: the final files, as the app will run them; every reported figure comes from here.
        spec = PipelineSpec(FEATURE_FILE, "numpy", list(EXPERT_NAMES), w, fused_thr)
        write_pipeline(network, feat_onnx, spec, tmp, cal)
        clf = Classifier(tmp / NETWORK_FILE)
        scored = {"validation": _score(clf, val, label_set, len(labels)), "test": _score(clf, test, label_set, len(labels))}
        # Checks: the app's feature model equals scikit-learn's on the cached rows; the app fused as specified.
        where = {e.key: i for i, e in enumerate(train + val + test)}
        rows = [where[k] for s in scored.values() for k in s.keys]
        app_feat = np.vstack([s.features for s in scored.values()])
        sk_feat = fm.predict_proba(x[rows]) if rows else app_feat
        parity = float(np.max(np.abs(app_feat - sk_feat))) if rows else 0.0
        fusion_err = max(float(np.max(np.abs(s.raw - fuse(s.network, s.features, w)), initial=0.0)) for s in scored.values())
        if fusion_err > 1e-6:
            raise PipelineError(f"the app's fused probabilities differ from w*p_net+(1-w)*p_feat by {fusion_err:.2e}")
        cal_err = max(float(np.max(np.abs(s.final - (cal.apply(s.raw) if cal else s.raw)), initial=0.0)) for s in scored.values())
        if cal_err > 1e-6:
            raise PipelineError(f"the app's calibrated probabilities differ from the fitted calibration by {cal_err:.2e}")
        results: dict = {}
        for part, s in scored.items():
            results[part] = {
                "records": len(s.keys), "skipped": s.skipped,
                "network": _metrics(s.y, s.network, labels, net_meta.thresholds),
                "features": _metrics(s.y, s.features, labels, feat_thr),
                # decisions and ranking: the uncalibrated fused probability against the tuned thresholds
                "pipeline": _metrics(s.y, s.raw, labels, fused_thr),
                "ece": ece_table(s.raw, s.final, s.y, labels) if len(s.keys) else None,
            }
        if len(scored["test"].keys) or len(scored["validation"].keys):
            part = "test" if len(scored["test"].keys) else "validation"
            s = scored[part]
            plot_reliability(s.raw, s.final, s.y, labels, tmp / "reliability.png",
                             f"Shipped pipeline, {part} records ({len(s.keys)}): before vs after calibration (fitted on validation)")
        log(f"[4/5] latency at 1 thread, {latency_records} records of 10 s")
        lat = _latency(clf, test + val, latency_records)
        sizes = {name: (tmp / name).stat().st_size / 1e6 for name in (NETWORK_FILE, FEATURE_FILE)}
        total = sum(sizes.values())
        if total > max_size_mb:
            raise PipelineError(f"the pipeline's files take {total:.3f} MB, over the {max_size_mb:g} MB budget: {sizes}")
        report = {
            "checkpoint": str(checkpoint), "network": str(network), "data": str(data), "labels": labels,
            "pipeline": json.loads(spec.to_json()),
            "weight_rule": weight_rule,
            "calibration": {"rule": calibration, "fitted_on": "validation",
                            "classes": None if cal is None else dict(zip(labels, [c.to_dict() for c in cal.classes]))},
            "decided_on": "validation",
            "records": {"train": n_tr, "validation": len(scored["validation"].keys), "test": len(scored["test"].keys)},
            "feature_model": {"chosen": dict(zip(labels, fm.chosen)), "notes": fm.notes, "features": len(EXPERT_NAMES),
                              "thresholds_alone": feat_thr, "onnx_vs_sklearn_max_abs_diff": parity},
            "network_thresholds": list(net_meta.thresholds),
            "weight_grid_validation_macro_auroc": grid,
            "results": results,
            "sizes_mb": {**sizes, "total": total, "budget": max_size_mb},
            "latency": {**lat, "budget_ms": MAX_LATENCY_MS,
                        "within_budget": bool(lat.get("records")) and lat["median_ms"] <= MAX_LATENCY_MS},
            "machine": machine(),
        }
        arrays = {f"{part}_{name}": np.asarray(getattr(sc, attr)) for part, sc in scored.items()
                  for name, attr in (("keys", "keys"), ("targets", "y"), ("network", "network"),
                                     ("features", "features"), ("pipeline", "raw"), ("calibrated", "final"))}
        np.savez(tmp / "scores.npz", **arrays)
        (tmp / "report.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        log(f"[5/5] writing {out}")
        if out.exists():
            for name in OUTPUTS:  # each replace is atomic; the folder may hold other files
                if (tmp / name).exists():
                    os.replace(tmp / name, out / name)
        else:
            os.rename(tmp, out)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _f(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(r: dict) -> str:
    """The report: validation (where w and thresholds were chosen) and test (reported only) figures."""
    p, m, lat, sz = r["pipeline"], r["machine"], r["latency"], r["sizes_mb"]
    lines = [
        "# Fused pipeline report", "",
        f"Network `{r['network']}` + gradient boosting on {r['feature_model']['features']} numpy expert features; "
        f"p = {p['network_weight']:g} x network + {1 - p['network_weight']:g} x features ({p['combine']}).",
        f"Feature model fitted on {r['records']['train']} training records; its hyper-parameters, the weight and the "
        "thresholds chosen on the validation records; test records reported only. All figures through "
        "`mobile_app.inference` (the app's path).", "",
        "| records | part | macro F1 | macro AUROC |", "|---|---|---|---|",
    ]
    for part in ("validation", "test"):
        res = r["results"][part]
        for kind in ("network", "features", "pipeline"):
            mm = res[kind]
            lines.append(f"| {part} ({res['records']}) | {kind} | {_f(mm and mm['macro']['f1'])} | {_f(mm and mm['macro']['auroc'])} |")
    for part in ("validation", "test"):
        res = r["results"][part]
        if not res["records"]:
            continue
        lines += ["", f"Per class, {part} (F1 / AUROC):", "",
                  "| class | n+ | network | features | pipeline |", "|---|---|---|---|---|"]
        for name in r["labels"]:
            cells = [f"{_f(res[k]['per_class'][name]['f1'])} / {_f(res[k]['per_class'][name]['auroc'])}" for k in ("network", "features", "pipeline")]
            lines.append(f"| {name} | {res['pipeline']['per_class'][name]['positives']} | " + " | ".join(cells) + " |")
    cal = r.get("calibration") or {}
    if cal.get("classes"):
        lines += ["", f"Calibration (per class, fitted on the validation records; rule {cal['rule']}): "
                  + "; ".join(f"{k} {v['method']}" + (f" a={v['a']:.3f} b={v['b']:.3f}" if 'a' in v else "") for k, v in cal["classes"].items()),
                  "Expected calibration error (10 equal-width bins) of the reported probability, before / after; "
                  "decisions are unchanged (monotone maps). Validation is where the maps were fitted (optimistic); "
                  "test is held out. Cross-validated figures: `benchmarks/results/calibration.md`.", "",
                  "| class | validation n+ | validation ECE before / after | test n+ | test ECE before / after |", "|---|---|---|---|---|"]
        ev, et = r["results"]["validation"].get("ece") or {}, r["results"]["test"].get("ece") or {}
        for name in r["labels"]:
            a, b = ev.get(name), et.get(name)
            ca = f"{a['positives']} | {a['before']:.4f} / {a['after']:.4f}" if a else "n/a | n/a"
            cb = f"{b['positives']} | {b['before']:.4f} / {b['after']:.4f}" if b else "n/a | n/a"
            lines.append(f"| {name} | {ca} | {cb} |")
        lines.append("")
        lines.append("Reliability diagram: `reliability.png` in the pipeline's output folder (test records, or validation "
                     "without test records); for the shipped model, `benchmarks/results/calibration_ship.png`.")
    lines += [
        "", f"Validation macro AUROC by network weight: "
        + ", ".join(f"{k}: {_f(v)}" for k, v in r["weight_grid_validation_macro_auroc"].items()),
        f"Feature model per class: " + "; ".join(f"{k} {v}" for k, v in r["feature_model"]["chosen"].items()),
        f"Feature model ONNX vs scikit-learn on the scored records: max |diff| {r['feature_model']['onnx_vs_sklearn_max_abs_diff']:.2e}",
        "",
        f"Files: `{NETWORK_FILE}` {sz[NETWORK_FILE]:.3f} MB + `{FEATURE_FILE}` {sz[FEATURE_FILE]:.3f} MB = "
        f"{sz['total']:.3f} MB (budget {sz['budget']:g} MB)",
    ]
    if lat.get("records"):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in lat["median_parts_ms"].items())
        lines.append(
            f"Latency per 10 s record, 1 thread, median of {lat['records']} records ({', '.join(f'{n} at {hz} Hz' for hz, n in lat['rates_hz'].items())}): "
            f"{lat['median_ms']:.1f} ms (max {lat['max_ms']:.1f}; budget {lat['budget_ms']:g} ms); median parts (ms): {parts}"
        )
    else:
        lines.append("Latency: no record of 10 s among the validation and test records")
    vnni = {True: "yes", False: "no"}.get(m["avx512_vnni"], "unknown")
    lines.append(f"Machine: {m['cpu']} ({m['cpu_class']}), {m['cores']} cores, AVX512-VNNI {vnni}; onnxruntime {m['onnxruntime']}")
    for part in ("validation", "test"):
        for s in r["results"][part]["skipped"]:
            lines.append(f"- skipped ({part}) {s['record']}: {s['reason']}")
    for note in r["feature_model"]["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.pipeline", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt of the training run (its split and data options)")
    p.add_argument("--network", type=Path, required=True, help="the int8 ONNX network exported from that checkpoint")
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder with the checkpoint's records (env ECG_DATA)")
    p.add_argument("--out", type=Path, required=True, help=f"folder for {', '.join(OUTPUTS)}")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"feature cache (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--workers", type=int, default=1, help="processes computing features on a cache miss")
    p.add_argument("--latency-records", type=int, default=20, help="10 s records timed (median reported)")
    p.add_argument("--max-size-mb", type=float, default=MAX_SIZE_MB, help="fail when the two files take more")
    p.add_argument("--weight-rule", choices=WEIGHT_RULES, default=DEFAULT_WEIGHT_RULE,
                   help="how the network weight is chosen on validation records (see choose_weight)")
    p.add_argument("--calibration", choices=CALIBRATION_CHOICES, default="auto",
                   help="per-class calibration fitted on validation records (export.calibration; none: no calibration)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.latency_records < 1:
        print("error: --workers and --latency-records must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run_pipeline(
            args.checkpoint, args.network, args.data, args.out, cache_dir=args.cache_dir, workers=args.workers,
            latency_records=args.latency_records, max_size_mb=args.max_size_mb, weight_rule=args.weight_rule,
            calibration=args.calibration,
        )
    except (PipelineError, CheckpointError, ValueError, FileNotFoundError, ClassifyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
