"""``python -m mobile_app.classify``: the app's inference without a screen, for one record or a folder.

    python -m mobile_app.classify --record FILE [--model FILE] [--json] [--explain]
    python -m mobile_app.classify --data DIR --out results.csv [--model FILE] [--json] [--workers N]

One record: the probabilities, decisions, signal-quality verdict and (``--explain``) the leads and
times that drove each positive finding. A fused pipeline (network metadata with ``pipeline``, see
:mod:`mobile_app.inference`) prints the parts beside the fused, calibrated probability; a missing or
mismatched feature model is an error naming the file (exit status 2).

A folder (``--data DIR --out FILE``; also ``ecg-lite predict``): every record under DIR (what the
catalog's scan finds: WFDB, original CPSC2018 .mat, native PTB-XL read at the model's recorded rate,
MIT-BIH), read once in ``--workers`` processes and passed through the same
:class:`mobile_app.inference.Classifier` the app uses, with a progress bar, into one CSV row per record: record, source (site), path, sampling rate, duration,
quality verdict and the leads it flagged, each class's calibrated probability and 0/1 decision, the
positive findings, and ``error`` for a file that could not be read or classified (listed, never a
crash). An unusable recording (quality verdict) gets its verdict and reasons but empty probability
cells, as in the app (``--keep-unusable`` fills them). ``--json`` also writes the full result of every
record (parts, uncalibrated probabilities, per-lead quality measures) to the same path with ``.json``.

``--model`` takes the app's ONNX (int8 or fp32; a fused pipeline with its feature model beside it) or a
training checkpoint ``.pt`` (torch, desktop only), loaded by :func:`federated.evaluate.load_model`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cpsc2018.leadsets import LEADS_HELP, leads_argument
from cpsc2018.readers import read_any
from cpsc2018.records import LEADS, Record
from mobile_app.inference import DEFAULT_MODEL, Classifier, ClassifyError, Result


def held_out_record(clf: Classifier, data: Path) -> Path:
    """A record the model never trained on: the first of its recorded test split present under ``data``."""
    from cpsc2018.catalog import scan

    wanted = set(clf.meta.split.get("test_ids", []))
    try:
        # The records as the model read them in training (its recorded PTB-XL rate).
        entries = scan(data, ptbxl_rate=int(clf.meta.data_options["ptbxl_rate"]), progress=False).entries
    except FileNotFoundError as exc:
        raise ClassifyError(str(exc)) from None
    for e in entries:
        if e.key in wanted and e.source_format in ("wfdb", "cpsc_mat"):
            return Path(e.path)
    raise ClassifyError(f"none of the model's held-out records is a WFDB or CPSC file under {data}")


class CheckpointBackend:
    """A training checkpoint (.pt) behind the app's backend interface (desktop only: torch), through
    :func:`federated.evaluate.load_model`, so that a checkpoint and its ONNX export are scored alike."""

    name = "torch checkpoint"

    def __init__(self, path: Path) -> None:
        from export.metadata import ModelMeta
        from federated.evaluate import EvaluationError, load_model

        try:
            self.loaded = load_model(Path(path))
        except EvaluationError as exc:
            raise ClassifyError(str(exc)) from None
        m = self.loaded
        # The window -> probability function handles hybrid features itself: no "features" input here.
        self.meta = ModelMeta(m.description, {}, list(m.labels), m.label_set, list(m.thresholds), m.pre.to_dict(),
                              split=dict(m.split), lead_sets=m.lead_sets)

    def metadata(self) -> dict[str, str]:
        return self.meta.to_props()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from export.metadata import INPUT_NAME

        return np.asarray(self.loaded.predict(inputs[INPUT_NAME]), dtype=np.float32)


def load_classifier(model: Path) -> Classifier:
    """The app's Classifier for an ONNX file, or for a ``.pt`` checkpoint through :class:`CheckpointBackend`."""
    if Path(model).suffix == ".pt":
        if not Path(model).exists():
            raise ClassifyError(f"no model at {model}")
        return Classifier(model, backend=CheckpointBackend(model))
    return Classifier(model)


# --- a folder --------------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(model: str, keep_unusable: bool, json_too: bool = False, leads: tuple[str, ...] | None = None) -> None:
    try:  # one thread per process: the processes are the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _worker["clf"] = load_classifier(Path(model))
    _worker["keep"] = keep_unusable
    _worker["json"] = json_too  # the full result is built and sent back only when it is written
    _worker["leads"] = leads  # --leads: use only these of each record's leads


def read_candidate(kind: str, path: str, ecg_id: int | None, rate: int) -> Record:
    """One item of the catalog's enumeration (``cpsc2018.catalog._candidates``), read as ``scan`` reads it:
    a file through :func:`cpsc2018.readers.read_any` (WFDB, MIT-BIH, original CPSC2018 .mat), a PTB-XL
    recording by its id at ``rate`` (the other rate where only that one exists)."""
    from cpsc2018.readers import read_ptbxl
    from cpsc2018.records import RecordError

    if kind == "error":
        raise RecordError(path, "PTB-XL table cannot be read")
    if kind == "orphan":
        raise RecordError(path, "signal file without a header (.hea)")
    if kind in ("ptbxl", "ptbxl-other-rate"):
        return read_ptbxl(path, int(ecg_id), rate=rate if kind == "ptbxl" else (100 if rate == 500 else 500))
    return read_any(path)


def _score_candidate(item: tuple[str, str, int | None, int]) -> tuple[dict, dict | None]:
    """Read and classify one candidate -> (CSV row, full JSON or None). Every failure is a row with ``error``.
    Reading happens here, in the worker processes: the folder is read once, in parallel (a catalog scan
    first would read every record twice, the first time on one core)."""
    from cpsc2018.records import RecordError

    kind, path, ecg_id, _ = item
    clf: Classifier = _worker["clf"]
    name = Path(path).name if ecg_id is None else f"{Path(path).name}/{ecg_id}"
    row: dict = {"record": name, "source": "", "path": path}
    try:
        rec = read_candidate(*item)
    except RecordError as exc:
        row["error"] = f"cannot read: {exc.problem}"
        return row, None
    except Exception as exc:  # a table of thousands must not stop on one file: say what happened
        row["error"] = f"cannot read: unexpected {type(exc).__name__}: {exc}"
        return row, None
    row.update(record=rec.record_id, source=rec.site, path=str(rec.path), fs=f"{rec.fs:g}", duration_s=f"{rec.duration_s:.2f}")
    try:
        r = clf.classify_record(rec, display=False, leads=_worker.get("leads"))
    except ClassifyError as exc:
        row["error"] = str(exc)
        return row, None
    except Exception as exc:
        row["error"] = f"unexpected error: {type(exc).__name__}: {exc}"
        return row, None
    return _row(r, row, _worker["keep"]), (_json(r) if _worker["json"] else None)


def _row(r: Result, row: dict, keep_unusable: bool) -> dict:
    q = r.quality
    row.update(quality=q.verdict if q else "", bad_leads=" ".join(q.bad_leads) if q else "",
               quality_reasons="; ".join(q.reasons) if q else "", lead_set=r.lead_set, leads_used=" ".join(r.leads_used))
    if not r.withheld or keep_unusable:
        for name, p, pos in zip(r.labels, r.probabilities, [n in r.positives for n in r.labels]):
            row[f"p_{name}"] = f"{p:.4f}"
            row[name] = int(pos)
        row["positives"] = " ".join(r.positives)
    row["error"] = ""
    return row


def _json(r: Result) -> dict:
    d = r.to_json()
    d["path"] = r.source_path
    return d


def columns(labels: list[str]) -> list[str]:
    return (["record", "source", "path", "fs", "duration_s", "quality", "bad_leads", "quality_reasons", "lead_set", "leads_used"]
            + [f"p_{n}" for n in labels] + list(labels) + ["positives", "error"])


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict_folder(model: Path, data: Path, out: Path, *, workers: int = 2, json_too: bool = False,
                   keep_unusable: bool = False, ptbxl_rate: int | None = None, progress: bool | None = None,
                   leads: tuple[str, ...] | None = None) -> dict:
    """Score every record under ``data`` into the CSV ``out`` (module docstring); returns a summary."""
    from tqdm import tqdm

    # The catalog's own enumeration (what ``scan`` would read), without reading: the workers read.
    from cpsc2018.catalog import _candidates

    t0 = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    clf = load_classifier(model)  # fails early, in this process, on a bad model
    labels = list(clf.meta.labels)
    rate = int(ptbxl_rate or clf.meta.data_options.get("ptbxl_rate", 500))
    if not Path(data).is_dir():
        raise ClassifyError(f"data folder {data} does not exist or is not a folder")
    items = [(kind, str(path), ecg_id, rate) for kind, path, ecg_id in _candidates(Path(data), rate)]
    t_scan = time.perf_counter() - t0
    rows: list[dict] = []
    full: list[dict] = []
    if workers <= 1:
        _init_worker(str(model), keep_unusable, json_too, leads)
        results = map(_score_candidate, items)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(str(model), keep_unusable, json_too, leads))
        results = pool.map(_score_candidate, items, chunksize=16)
    try:
        for row, js in tqdm(results, total=len(items), desc="classifying", unit="rec", disable=not progress):
            rows.append(row)
            if js is not None:
                full.append(js)
    finally:
        if pool is not None:
            pool.shutdown()
    rows.sort(key=lambda r: r["path"])
    cols = columns(labels)

    def write_csv(f) -> None:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    _atomic_write(Path(out), write_csv)
    if json_too:
        _atomic_write(Path(out).with_suffix(".json"), lambda f: json.dump(full, f))
    seconds = time.perf_counter() - t0
    verdicts: dict[str, int] = {}
    for r in rows:
        if r.get("quality"):
            verdicts[r["quality"]] = verdicts.get(r["quality"], 0) + 1
    return {"records": len(rows), "errors": sum(1 for r in rows if r.get("error")), "verdicts": verdicts,
            "seconds": seconds, "scan_seconds": t_scan, "workers": workers, "model": clf.description, "out": str(out)}


# --- one record -------------------------------------------------------------------------------------


def _print_one(clf: Classifier, r: Result, explain: bool, record: Path) -> None:
    print(f"{r.record} ({r.site}, {r.duration_s:.1f} s at {r.fs:g} Hz) with {r.model}, {r.inference_ms:.1f} ms")
    if r.quality is not None:
        print(r.quality.text)
    if r.lead_note:
        print(r.lead_note)
    if r.withheld:
        print("Probabilities withheld: the recording is unusable (see above). Research tool, not a diagnosis.")
        return
    if r.feature_probabilities is None:
        for name, prob, thr in zip(r.labels, r.probabilities, r.thresholds):
            mark = "POSITIVE" if name in r.positives else ""
            print(f"  {name:<6} {prob:6.3f}  (threshold {thr:.3f}) {mark}")
    else:
        w = r.network_weight if r.network_weight is not None else float("nan")
        print(f"Parts run: {' + '.join(r.parts)} (fused = {w:g} x network + {1 - w:g} x features"
              + (", then calibrated" if r.calibrated else "") + ")")
        print(f"  {'label':<6} {'calib.' if r.calibrated else 'fused':>6}  {'network':>7}  {'features':>8}")
        for name, prob, pn, pf, thr in zip(r.labels, r.probabilities, r.network_probabilities, r.feature_probabilities, r.thresholds):
            mark = "POSITIVE" if name in r.positives else ""
            print(f"  {name:<6} {prob:6.3f}  {pn:7.3f}  {pf:8.3f}  (threshold {thr:.3f}) {mark}")
    if explain and r.positives and r.leads_used != list(LEADS):
        print("  (--explain covers complete 12-lead records only)")
    elif explain and r.positives:
        from mobile_app.explain import explain as run_explain

        rec = read_any(record)
        e = run_explain(clf, rec.signal, rec.fs)
        for name in e.labels:
            share = e.lead_share(name)
            top = [f"{e.leads[k]} {share[k]:.0%}" for k in np.argsort(-share)[:3] if share[k] > 0]
            ts = e.time_share(name)
            t_top = [f"{e.segment_times()[k]:.2f}s" for k in np.argsort(-ts)[:5] if ts[k] > 0]
            print(f"  why {name}: leads {', '.join(top) or 'none'}; times {', '.join(sorted(t_top)) or 'none'}")
    print(f"Labels in the file: {', '.join(r.reference) or 'none of the six'}. Research tool, not a diagnosis.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mobile_app.classify", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--record", type=Path, help=".hea (WFDB) or original CPSC2018 .mat")
    src.add_argument("--held-out", type=Path, metavar="DATA_DIR", help="classify the first of the model's held-out test records found under DATA_DIR")
    src.add_argument("--data", type=Path, metavar="DIR", help="classify every record under DIR into the table --out")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX (int8 or fp32, or a fused pipeline) or a .pt checkpoint")
    p.add_argument("--out", type=Path, default=None, help="with --data: the CSV to write (one row per record)")
    p.add_argument("--json", action="store_true", help="one record: print JSON; --data: also write the full results to OUT.json")
    p.add_argument("--explain", action="store_true", help="one record: the leads and times behind each positive finding")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="with --data: processes")
    p.add_argument("--keep-unusable", action="store_true", help="with --data: fill probabilities of unusable recordings too")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500), default=None, help="with --data: PTB-XL rate to read (default: the model's)")
    p.add_argument("--leads", type=leads_argument, default=None,
                   help="use " + LEADS_HELP + " (default: every lead the record has, less those the quality check finds missing or flat)")
    args = p.parse_args(argv)
    leads = args.leads
    if args.data is not None:
        if args.out is None:
            p.error("--data needs --out FILE (the CSV to write)")
        if args.workers < 1:
            p.error("--workers must be at least 1")
        try:
            s = predict_folder(args.model, args.data, args.out, workers=args.workers, json_too=args.json,
                               keep_unusable=args.keep_unusable, ptbxl_rate=args.ptbxl_rate, leads=leads)
        except ClassifyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
        print(f"{s['records']} records -> {s['out']} in {s['seconds']:.1f} s ({s['workers']} workers; listing {s['scan_seconds']:.1f} s); "
              f"quality: {verdicts}; {s['errors']} with an error; model {s['model']}")
        return 0
    try:
        clf = load_classifier(args.model)
        record = args.record or held_out_record(clf, args.held_out)
        r = clf.classify(record, leads=leads)
    except ClassifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        d = r.to_json()
        if args.explain and r.positives and not r.withheld and r.leads_used == list(LEADS):
            from mobile_app.explain import explain as run_explain

            rec = read_any(record)
            d["explanation"] = run_explain(clf, rec.signal, rec.fs).to_json()
        print(json.dumps(d))
        return 0
    _print_one(clf, r, args.explain, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
