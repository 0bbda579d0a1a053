"""``python -m federated.evaluate --model-file FILE --data DIR [--split test|all] [--json FILE]``.

Beat models (``--task beats``, detected from the file) score every annotated beat of every record under
DIR instead (``federated.beats.evaluate``; ``--split`` does not apply).

Scores a ``.pt`` checkpoint (torch) or an ``.onnx`` file (onnxruntime; labels, thresholds and
preprocessing read from its metadata) on records under DIR: the held-out test records recorded in the
model (``--split test``) or every readable 12-lead record (``--split all``). Reports per class and
macro F1, sensitivity, specificity, precision, AUROC, AUPRC, subset accuracy and Hamming loss; for
``cpsc9`` models also the official CPSC2018 score (top-1 class per record).

Records are read with the model's data options (``split["data_options"]``: the PTB-XL rate it was
trained at; older files default to 500 Hz, see ``export.metadata``), and the report says which rate
was read in each PTB-XL folder (a folder with one rate only is read at that rate).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cpsc2018.catalog import Entry, load, ptbxl_rates_read, scan
from cpsc2018.leadsets import LEADS_HELP, leads_argument
from cpsc2018.preprocess import EVAL_MAX_WINDOWS, PreprocessConfig, preprocess, windows
from cpsc2018.records import RecordError
from cpsc2018.util import default_data_dir
from federated.metrics import cpsc2018_score, multilabel_metrics

Predictor = Callable[[np.ndarray], np.ndarray]  # windows (n, 12, L) -> probabilities (n, C)


class EvaluationError(ValueError):
    pass


@dataclass
class LoadedModel:
    predict: Predictor
    labels: list[str]
    label_set: str
    thresholds: list[float]
    pre: PreprocessConfig
    split: dict
    description: str
    data_options: dict
    lead_sets: str = ""  # cpsc2018.leadsets.LeadSupport JSON ("" = the 12 leads only)


def load_model(path: Path) -> LoadedModel:
    if not path.exists():
        raise EvaluationError(f"{path}: model file not found")
    if path.suffix == ".onnx":
        from export.metadata import MetadataError, read_onnx_metadata
        from export.runtime import OnnxPredictor

        try:
            meta = read_onnx_metadata(str(path))
        except MetadataError as exc:
            raise EvaluationError(str(exc)) from None
        predictor = OnnxPredictor(str(path))
        return LoadedModel(
            predictor.predict_windows, meta.labels, meta.label_set, meta.thresholds,
            PreprocessConfig.from_dict(meta.preprocess), meta.split, f"ONNX {meta.model_name}", meta.data_options,
            meta.lead_sets,
        )
    import torch

    from federated.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
        model = ckpt.build_model()
    except CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    pre = PreprocessConfig.from_dict(ckpt.preprocess)
    feature_fn = None
    if ckpt.features:
        from cpsc2018.features import window_features

        def feature_fn(w: np.ndarray) -> np.ndarray:
            return np.stack([window_features(x, pre.fs) for x in w]).astype(np.float32)

    @torch.no_grad()
    def predict(w: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        logits = model(x, torch.from_numpy(feature_fn(w))) if feature_fn else model(x)
        return torch.sigmoid(logits).numpy()

    from cpsc2018.leadsets import LeadSupport

    return LoadedModel(
        predict, ckpt.labels, ckpt.label_set, ckpt.thresholds, pre, ckpt.split, f"checkpoint {ckpt.model_name}", ckpt.data_options,
        LeadSupport.for_model(ckpt.model_kwargs, ckpt.lead_thresholds).to_json(),
    )


def for_leads(model: LoadedModel, path: Path, leads: tuple[str, ...]) -> tuple[LoadedModel, str]:
    """The model (or its sibling network) and thresholds that serve records with only ``leads``, and a
    line saying which. A set the model does not support is still scored, with the absent leads zeroed at
    the 12-lead thresholds (the naive baseline of benchmarks/leads.py), and the line says so."""
    import dataclasses

    from cpsc2018.leadsets import LeadSetError, LeadSupport, set_name

    try:
        support = LeadSupport.from_json(model.lead_sets, str(path), len(model.labels)) if model.lead_sets else LeadSupport.twelve_only()
    except LeadSetError as exc:
        raise EvaluationError(str(exc)) from None
    name = support.choose(leads)
    if name is None:
        return model, (f"leads {set_name(leads)}: not a lead set this model supports ({support.describe()}); "
                       "scored with the other leads zeroed at its 12-lead thresholds (naive)")
    entry = support.sets[name]
    chosen = model
    if entry.model:
        sibling = path.parent / entry.model
        chosen = load_model(sibling)
        if chosen.labels != model.labels:
            raise EvaluationError(f"{sibling}: labels differ from {path}'s")
    thresholds = list(entry.thresholds) if entry.thresholds is not None else list(chosen.thresholds)
    fed = support.fed_leads(name, leads)
    return (dataclasses.replace(chosen, thresholds=thresholds),
            f"leads {set_name(leads)}: lead set {name} ({entry.model or path.name}), fed {', '.join(fed)}, its own thresholds")


def select_entries(entries: list[Entry], split: str, model: LoadedModel, data: Path) -> list[Entry]:
    twelve = [e for e in entries if e.n_leads == 12]
    if split == "all":
        return twelve
    wanted = set(model.split.get("test_ids", []))
    if not wanted:
        raise EvaluationError("the model records no held-out test split; use --split all")
    chosen = [e for e in twelve if e.key in wanted]
    if not chosen:
        raise EvaluationError(
            f"none of the model's {len(wanted)} held-out test records is under {data}; "
            f"it was trained on {model.split.get('data', '?')} (use --split all to score every record here)"
        )
    return chosen


def record_probabilities(model: LoadedModel, entries: list[Entry], max_windows: int = EVAL_MAX_WINDOWS, progress: bool = False,
                         leads: tuple[str, ...] | None = None) -> tuple[np.ndarray, list[Entry], list[dict]]:
    """Record-level probabilities: max over each record's deterministic windows (as in training);
    ``leads``: only these leads, the others zeroed after preprocessing (what the app does)."""
    from cpsc2018.leadsets import zero_absent

    probs, kept, skipped = [], [], []
    for e in tqdm(entries, desc="scoring", unit="rec", disable=not progress):
        try:
            x = preprocess(load(e).signal, e.fs, model.pre)
        except (RecordError, ValueError) as exc:
            skipped.append({"path": e.path, "reason": str(exc)})
            continue
        if leads is not None:
            x = zero_absent(x, leads)
        probs.append(model.predict(windows(x, model.pre, max_windows)).max(axis=0))
        kept.append(e)
    return (np.array(probs) if probs else np.zeros((0, len(model.labels)))), kept, skipped


def evaluate_model(path: Path, data: Path, split: str = "test", progress: bool = False, leads: tuple[str, ...] | None = None) -> dict:
    from federated.beats.evaluate import evaluate_beat_model, is_beat_model

    if path.exists() and is_beat_model(path):  # heartbeats: every annotated beat under DATA (federated.beats)
        return evaluate_beat_model(path, data, progress=progress)
    model = load_model(path)
    lead_note = ""
    if leads is not None:
        model, lead_note = for_leads(model, path, leads)
    rate = int(model.data_options["ptbxl_rate"])
    try:
        catalog = scan(data, ptbxl_rate=rate, progress=progress)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    entries = select_entries(catalog.entries, split, model, data)
    if not entries:
        raise EvaluationError(f"no readable 12-lead record under {data}")
    probs, kept, skipped = record_probabilities(model, entries, progress=progress, leads=leads)
    if not kept:
        raise EvaluationError(f"none of the {len(entries)} records under {data} could be preprocessed")
    y = np.array([e.targets(model.label_set) for e in kept])
    result = multilabel_metrics(y, probs, model.labels, model.thresholds)
    result["model"] = model.description
    result["split"] = split
    result["leads"] = list(leads) if leads is not None else None
    result["lead_note"] = lead_note
    result["skipped"] = skipped
    result["ptbxl_rate"] = rate
    result["ptbxl_rates_read"] = ptbxl_rates_read(kept)
    if model.label_set == "cpsc9":
        # Labels in source order: a wrong prediction is booked against the record's first label.
        refs = [e.ordered_targets(model.label_set) for e in kept]
        result["cpsc2018"] = cpsc2018_score(refs, probs.argmax(axis=1), model.labels)
    return result


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


def format_report(r: dict) -> str:
    keys = ("f1", "sensitivity", "specificity", "precision", "auroc", "auprc")
    lines = [f"{r['model']} on {r['records']} records ({r['split']} split)", ""]
    if r.get("lead_note"):
        lines[1:1] = [r["lead_note"]]
    lines.append(f"{'class':<8}" + "".join(f"{k[:11]:>12}" for k in keys) + f"{'n+':>6}")
    for name, m in r["per_class"].items():
        lines.append(f"{name:<8}" + "".join(f"{_fmt(m[k]):>12}" for k in keys) + f"{m['positives']:>6}")
    lines.append(f"{'macro':<8}" + "".join(f"{_fmt(r['macro'][k]):>12}" for k in keys))
    lines.append(f"\nsubset accuracy {_fmt(r['subset_accuracy'])}, Hamming loss {_fmt(r['hamming_loss'])}")
    for folder, rates in r.get("ptbxl_rates_read", {}).items():
        read = ", ".join(f"{n} at {hz} Hz" for hz, n in sorted(rates.items()))
        lines.append(f"PTB-XL {folder}: read at {' and '.join(f'{hz} Hz' for hz in sorted(rates))} ({read}; the model asks {r['ptbxl_rate']} Hz)")
    for name, why in r.get("undefined", {}).items():
        lines.append(f"  {name}: {why}")
    if "cpsc2018" in r:
        c = r["cpsc2018"]
        lines.append(f"CPSC2018 score: F1 {_fmt(c['F1'])}  Faf {_fmt(c['Faf'])}  Fblock {_fmt(c['Fblock'])}  Fpc {_fmt(c['Fpc'])}  Fst {_fmt(c['Fst'])}")
        if c.get("records_excluded"):
            lines.append(f"  {c['records_excluded']} records with none of the nine CPSC2018 labels are not scored (the challenge had none)")
    for s in r.get("skipped", []):
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m federated.evaluate", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True, help=".pt checkpoint or .onnx file")
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder (env ECG_DATA)")
    p.add_argument("--split", choices=("test", "all"), default="test")
    p.add_argument("--json", type=Path, default=None, help="write the full result as JSON here")
    p.add_argument("--leads", type=leads_argument, default=None, help="score with " + LEADS_HELP + " (the others zeroed)")
    args = p.parse_args(argv)
    try:
        result = evaluate_model(args.model_file, args.data, args.split, progress=sys.stderr.isatty(), leads=args.leads)
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.get("task") == "beats":
        from federated.beats.evaluate import format_beat_report

        print(format_beat_report(result))
    else:
        print(format_report(result))
    if args.json:
        from federated.outputs import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
