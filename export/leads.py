"""``python -m export.leads``: add reduced lead sets to an exported model (issue 21).

    python -m export.leads --pipeline runs/ship/pipeline --leads-network runs/ship_leads/export/model.int8.onnx \\
        [--leads-network runs/ship_lead1/export/model.int8.onnx ...] --data ../shared/data

The folder's ``model.int8.onnx`` (``python -m export`` or ``python -m export.pipeline`` output) keeps
serving complete 12-lead records exactly as before. Each ``--leads-network`` (the int8 export of a
checkpoint trained with ``--lead-masking`` for any subset, or with ``--leads S`` for one set) is copied
beside it (:func:`file_name`) and serves reduced sets: a network for one set serves that set, the
network for any subset the others. Per set, thresholds are tuned and a calibration fitted on the
VALIDATION records with the other leads removed, scored through the app's own path
(:meth:`mobile_app.inference.Classifier.predict_leads`); the test records are only reported. The
folder's network file then lists every set in its ``lead_sets`` metadata
(:class:`cpsc2018.leadsets.LeadSupport`). All networks must come from one training split (same
validation and test records), which fine-tuning the shipped checkpoint with ``--init`` gives.

Writes ``leads_report.md``/``leads_report.json`` beside; each file is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from cpsc2018.catalog import load, scan
from cpsc2018.leadsets import LEAD_SETS_KEY, STANDARD_SETS, LeadSetEntry, LeadSetError, LeadSupport, set_name
from cpsc2018.records import LEADS, RecordError
from cpsc2018.util import atomic_write_text, default_data_dir
from export.calibration import fit_calibration
from export.metadata import MetadataError, read_onnx_metadata
from export.pipeline import CALIBRATION_CHOICES, MAX_SIZE_MB, NETWORK_FILE, machine
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.outputs import json_safe
from mobile_app.inference import Classifier, ClassifyError

LEADS_FILE = "model.leads.int8.onnx"
REPORT_FILES = ("leads_report.md", "leads_report.json")


class LeadsExportError(ValueError):
    """The lead sets cannot be added from these inputs; the message says which file and why."""


def _check_pair(main: Path, reduced: Path) -> tuple[list[str], dict]:
    try:
        m, r = read_onnx_metadata(str(main)), read_onnx_metadata(str(reduced))
    except MetadataError as exc:
        raise LeadsExportError(str(exc)) from None
    if m.labels != r.labels or m.preprocess != r.preprocess:
        raise LeadsExportError(f"{reduced}: labels or preprocessing differ from {main}'s")
    if sorted(m.split.get("val_ids", [])) != sorted(r.split.get("val_ids", [])) or sorted(m.split.get("test_ids", [])) != sorted(r.split.get("test_ids", [])):
        raise LeadsExportError(
            f"{reduced} and {main} come from different training splits: fine-tune the shipped checkpoint "
            "(federated.train --init BEST.pt --seed SAME) so that both choose on the same validation records"
        )
    if not (r.model_kwargs.get("lead_mask") or r.model_kwargs.get("input_mask")):
        raise LeadsExportError(f"{reduced}: a 12-lead model; train it with --lead-masking (any subset) or --leads S")
    return list(m.labels), m.split


def _scores(clf: Classifier, records: list, label_set: str, name: str, members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated network probabilities of ``records`` with only ``members`` (the app's reduced path)."""
    rows = [LEADS.index(lead) for lead in members]
    ys, ps = [], []
    for rec, y in records:
        try:
            pred = clf.predict_leads(rec.signal[rows], rec.fs, members, name, clf.lead_support.fed_leads(name, members))
        except ClassifyError:
            continue
        ys.append(y)
        ps.append(pred.uncalibrated)
    return np.array(ys, dtype=int), np.array(ps, dtype=np.float64)


def file_name(kwargs: dict) -> str:
    """The name a reduced-lead network takes in the app's folder: one for any subset, one per fixed set."""
    if kwargs.get("lead_mask"):
        return LEADS_FILE
    members = tuple(lead for lead, keep in zip(LEADS, kwargs.get("input_mask") or []) if keep)
    return f"model.leads{set_name(members).replace(',', '-')}.int8.onnx"


def add_lead_sets(folder: Path, leads_networks: Path | list[Path], data: Path, *, calibration: str = "auto",
                  max_size_mb: float = MAX_SIZE_MB, log=print) -> dict:
    """Copy the reduced-lead networks into ``folder``, choose their per-set thresholds and calibrations on
    validation records, and write ``lead_sets`` into ``folder/model.int8.onnx`` (module docstring). A
    network for one set (``--leads S``) serves that set; a network for any subset serves the others."""
    networks = [Path(leads_networks)] if isinstance(leads_networks, (str, Path)) else [Path(n) for n in leads_networks]
    main = Path(folder) / NETWORK_FILE
    if not main.is_file():
        raise LeadsExportError(f"{main}: no exported network there (run python -m export or export.pipeline first)")
    if not networks:
        raise LeadsExportError("give at least one reduced-lead network")
    served: dict[str, LeadSetEntry] = {}
    files: dict[str, Path] = {}
    split: dict = {}
    for net in networks:
        if not net.is_file():
            raise LeadsExportError(f"{net}: file not found")
        labels, split = _check_pair(main, net)
        kwargs = read_onnx_metadata(str(net)).model_kwargs
        name = file_name(kwargs)
        if name in files:
            raise LeadsExportError(f"{net} and {files[name]} serve the same lead sets; give one of them")
        files[name] = net
        for set_key, e in LeadSupport.for_model(kwargs).sets.items():
            if e.leads == LEADS:
                continue
            dedicated = not e.any_subset
            if set_key not in served or (dedicated and served[set_key].any_subset):
                served[set_key] = LeadSetEntry(e.leads, name, e.any_subset)
    rate = int(split.get("data_options", {}).get("ptbxl_rate", 500))
    entries = [e for e in scan(data, ptbxl_rate=rate, progress=False).entries if e.n_leads == 12]
    val_ids, test_ids = set(split.get("val_ids", [])), set(split.get("test_ids", []))
    label_set = read_onnx_metadata(str(main)).label_set
    parts = {"validation": [e for e in entries if e.key in val_ids], "test": [e for e in entries if e.key in test_ids]}
    if not parts["validation"]:
        raise LeadsExportError(f"none of the model's {len(val_ids)} validation records is under {data}")
    log(f"[1/3] records under {data}: validation {len(parts['validation'])}, test {len(parts['test'])}")
    loaded = {}
    for part, es in parts.items():
        loaded[part] = []
        for e in es:
            try:
                loaded[part].append((load(e), e.targets(label_set)))
            except RecordError:
                continue
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".leads-", dir=folder))
    try:
        for name, net in files.items():
            shutil.copy2(net, tmp / name)
        shutil.copy2(main, tmp / NETWORK_FILE)
        feature_model = _feature_file(main)
        if feature_model:
            shutil.copy2(folder / feature_model, tmp / feature_model)
        order = [k for k in STANDARD_SETS if k in served] + [k for k in served if k not in STANDARD_SETS]
        provisional = {"12": LeadSetEntry(LEADS), **{k: served[k] for k in order}}
        _write_support(tmp / NETWORK_FILE, LeadSupport(provisional))
        clf = Classifier(tmp / NETWORK_FILE)
        log("[2/3] per lead set: thresholds and calibration on validation records (the app's path)")
        final = {"12": LeadSetEntry(LEADS)}
        results: dict = {}
        for name, e in provisional.items():
            if name == "12":
                continue
            yv, pv = _scores(clf, loaded["validation"], label_set, name, e.leads)
            thr = tune_thresholds(yv, pv)
            cal = None if calibration == "none" else fit_calibration(pv, yv, labels, calibration)
            final[name] = LeadSetEntry(e.leads, e.model, e.any_subset, tuple(thr), None if cal is None else json.loads(cal.to_json()))
            yt, pt = _scores(clf, loaded["test"], label_set, name, e.leads)
            results[name] = {
                "leads": list(e.leads), "model": e.model, "any_subset": e.any_subset,
                "validation": multilabel_metrics(yv, pv, labels, thr),
                "test": multilabel_metrics(yt, pt, labels, thr) if len(yt) else None,
            }
            t = results[name]["test"]
            log(f"      {name} ({', '.join(e.leads)}) by {e.model}: validation macro AUROC {results[name]['validation']['macro']['auroc']:.3f}"
                + (f"; test macro F1 {t['macro']['f1']:.3f}, AUROC {t['macro']['auroc']:.3f}" if t else ""))
        support = LeadSupport(final)
        _write_support(tmp / NETWORK_FILE, support)
        clf = Classifier(tmp / NETWORK_FILE)  # the app loads what was written, or this raises
        for name, ms in _latency(clf, loaded["test"] + loaded["validation"]).items():
            results[name]["latency_ms"] = ms
        names = [NETWORK_FILE, *files] + ([feature_model] if feature_model else [])
        sizes = {n: (tmp / n).stat().st_size / 1e6 for n in names}
        total = sum(sizes.values())
        if total > max_size_mb:
            raise LeadsExportError(f"the app's model files take {total:.3f} MB, over the {max_size_mb:g} MB budget: {sizes}")
        report = {"folder": str(folder), "leads_networks": {n: str(p) for n, p in files.items()}, "data": str(data),
                  "labels": labels, "calibration": calibration, "chosen_on": "validation",
                  "sets": results, "sizes_mb": {**sizes, "total": total, "budget": max_size_mb}, "machine": machine(),
                  "lead_sets": json.loads(support.to_json())}
        log(f"[3/3] writing {folder}")
        atomic_write_text(folder / "leads_report.json", json.dumps(json_safe(report), indent=1) + "\n")
        atomic_write_text(folder / "leads_report.md", markdown(report))
        for name in files:  # first the new files, then the key that names them
            os.replace(tmp / name, folder / name)
        os.replace(tmp / NETWORK_FILE, main)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _latency(clf: Classifier, records: list, n: int = 20) -> dict[str, float]:
    """Per reduced set: median ms of the app's ``predict_leads`` (preprocessing, network, calibration) over
    ``n`` records of 10 s, at 1 thread (onnxruntime's session and numpy/scipy's pools)."""
    import statistics
    import time

    from threadpoolctl import threadpool_limits

    ten = [rec for rec, _ in records if abs(rec.duration_s - 10.0) <= 0.05][:n]
    out: dict[str, float] = {}
    if not ten:
        return out
    with threadpool_limits(limits=1):
        for name, e in clf.lead_support.sets.items():
            if name == "12":
                continue
            rows = [LEADS.index(lead) for lead in e.leads]
            fed = clf.lead_support.fed_leads(name, e.leads)
            clf.predict_leads(ten[0].signal[rows], ten[0].fs, e.leads, name, fed)  # warm-up
            times = []
            for rec in ten:
                t = time.perf_counter()
                clf.predict_leads(rec.signal[rows], rec.fs, e.leads, name, fed)
                times.append((time.perf_counter() - t) * 1e3)
            out[name] = statistics.median(times)
    return out


def _feature_file(main: Path) -> str | None:
    props = {p.key: p.value for p in onnx.load(str(main), load_external_data=False).metadata_props}
    if "pipeline" not in props:
        return None
    return json.loads(props["pipeline"]).get("feature_model")


def _write_support(path: Path, support: LeadSupport) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[LEAD_SETS_KEY] = support.to_json()
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def markdown(r: dict) -> str:
    lines = [
        "# Reduced lead sets of the shipped model", "",
        f"Complete 12-lead records: `{NETWORK_FILE}` as before (its own report). Reduced sets: the network named per set "
        "(one for any subset, or one trained for that set), with thresholds and calibration chosen on the "
        "validation records with the other leads removed; test records reported only.", "",
        "| lead set | leads | network | validation macro AUROC | test macro F1 | test macro AUROC | " + " | ".join(f"test AUROC {c}" for c in r["labels"]) + " | ms per 10 s record, 1 thread |",
        "|---|---|---|---|---|---|" + "---|" * len(r["labels"]) + "---|",
    ]
    for name, s in r["sets"].items():
        t = s["test"]
        f = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
        per = " | ".join(f(t["per_class"][c]["auroc"]) if t else "n/a" for c in r["labels"])
        ms = f"{s['latency_ms']:.1f}" if "latency_ms" in s else "n/a"
        lines.append(f"| {name} | {', '.join(s['leads'])} | `{s['model']}` | {f(s['validation']['macro']['auroc'])} | "
                     f"{f(t['macro']['f1']) if t else 'n/a'} | {f(t['macro']['auroc']) if t else 'n/a'} | {per} | {ms} |")
    sz, m = r["sizes_mb"], r["machine"]
    lines += ["", f"Model files: {', '.join(f'{k} {v:.3f} MB' for k, v in sz.items() if k not in ('total', 'budget'))}; "
              f"total {sz['total']:.3f} MB (budget {sz['budget']:g} MB).", "",
              f"Machine: {m.get('cpu')} ({m.get('cpu_class')}), {m.get('cores')} cores; Python {m.get('python')}, "
              f"onnxruntime {m.get('onnxruntime')}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.leads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pipeline", type=Path, required=True, help=f"folder holding the exported {NETWORK_FILE} (export or export.pipeline output)")
    p.add_argument("--leads-network", type=Path, action="append", required=True,
                   help="int8 ONNX export of a --lead-masking (any subset) or --leads S (one set) checkpoint; repeatable")
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder with the model's validation records (env ECG_DATA)")
    p.add_argument("--calibration", choices=CALIBRATION_CHOICES, default="auto")
    p.add_argument("--max-size-mb", type=float, default=MAX_SIZE_MB)
    args = p.parse_args(argv)
    try:
        add_lead_sets(args.pipeline, args.leads_network, args.data, calibration=args.calibration, max_size_mb=args.max_size_mb)
    except (LeadsExportError, LeadSetError, ClassifyError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.pipeline / "leads_report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
