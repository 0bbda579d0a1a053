"""Expert features in numpy/scipy against the first baseline's neurokit2 ones, in patient cross-validation.

The phone app can run numpy/scipy only (DECISIONS, issue 15), so the classical baseline's features
(``cpsc2018.features.expert_features``) gained a numpy engine. This benchmark asks whether it is as
strong: gradient boosting exactly as ``federated.baseline`` fits it (the same candidates, chosen per
class on validation AUROC, thresholds tuned on validation F1) on each engine's feature matrix, over
5 patient folds (``cpsc2018.splits.patient_folds``, seed 0, stratified over the six labels) of every
12-lead record of the data folder. Per class and macro F1 / AUROC on each fold's test part, mean and
standard deviation over the folds. The neurokit2 engine measures the first baseline's names only;
a third row gives the numpy engine restricted to those names (what the numpy-only features add). Also the cost of one 10 s 12-lead
500 Hz record per engine, in one process.

    python -m benchmarks.features_cv --data ../shared/data --out benchmarks/results/features_cv.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import cpu_model
from cpsc2018.cache import DEFAULT_CACHE_DIR
from cpsc2018.catalog import Entry, load, scan
from cpsc2018.features import ENGINES, EXPERT_NAMES, NUMPY_ONLY_NAMES, expert_features
from cpsc2018.labels import label_names
from cpsc2018.splits import patient_folds
from cpsc2018.util import default_data_dir
from federated.baseline import feature_matrix, fit_predict
from federated.cv import fmt, mean_sd
from federated.metrics import multilabel_metrics, tune_thresholds

LABEL_SET = "six"


def cross_validate(x: np.ndarray, y: np.ndarray, folds: list[dict[str, list[int]]], labels: list[str], seed: int) -> dict:
    """Per fold, the test metrics of the baseline's gradient boosting (fitted on train, tuned on val)."""
    x = x[:, ~np.isnan(x).all(axis=0)]  # never measured: the boosting's binning refuses an all-NaN column
    out = []
    for split in folds:
        with threadpool_limits(limits=1):  # as federated.baseline: one thread fits faster here
            fp = fit_predict("gbm", x, y, split, seed, labels)
        thresholds = tune_thresholds(y[split["val"]], fp["probs"]["val"])
        out.append(multilabel_metrics(y[split["test"]], fp["probs"]["test"], labels, thresholds))
    return {"folds": out}


def _mean_sd(values: list[float]) -> str:
    return fmt(mean_sd(values))


def feature_seconds(entries: list[Entry], engine: str, n: int = 40) -> tuple[float, float, int]:
    """Median and 90th percentile seconds of ``expert_features`` on 10 s 12-lead 500 Hz records."""
    picked = [e for e in entries if e.fs == 500 and abs(e.duration_s - 10) < 0.01][:n]
    signals = [load(e).signal for e in picked]
    for s in signals[:3]:  # warm-up: imports, first calls
        expert_features(s, 500.0, engine=engine)
    times = []
    for s in signals:
        t = time.perf_counter()
        expert_features(s, 500.0, engine=engine)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.percentile(times, 90)), len(times)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.features_cv",
        description="numpy vs neurokit2 expert features: gradient boosting in 5-fold patient cross-validation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder (env ECG_DATA)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/features_cv.md"))
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="feature matrix cache")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="fold and boosting seed")
    p.add_argument("--workers", type=int, default=2, help="processes computing features (the machine has 2 cores)")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500), default=500, help="PTB-XL rate where both exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.folds < 2:
        print(f"error: --workers must be >= 1 and --folds >= 2, got {args.workers} and {args.folds}", file=sys.stderr)
        return 2
    catalog = scan(args.data, ptbxl_rate=args.ptbxl_rate, progress=sys.stderr.isatty())
    entries = [e for e in catalog.entries if e.n_leads == 12]
    if not entries:
        print(f"error: no 12-lead record under {args.data}", file=sys.stderr)
        return 2
    labels = list(label_names(LABEL_SET))
    y = np.array([e.targets(LABEL_SET) for e in entries], dtype=int)
    pos = {e.key: i for i, e in enumerate(entries)}
    folds = [
        {part: [pos[e.key] for e in es] for part, es in fold.items()}
        for fold in patient_folds(entries, k=args.folds, seed=args.seed, label_set=LABEL_SET)
    ]

    rows: dict[str, dict] = {}
    compute: dict[str, float | None] = {}
    matrices = {}
    for engine in ENGINES:
        x, seconds = feature_matrix(entries, args.cache_dir, engine=engine, workers=args.workers, progress=sys.stderr.isatty())
        matrices[engine], compute[engine] = x, seconds
        print(f"{engine}: features of {len(entries)} records {'cached' if seconds is None else f'{seconds:.0f} s'}", flush=True)
    shared = [i for i, n in enumerate(EXPERT_NAMES) if n not in NUMPY_ONLY_NAMES]
    for name, x in (
        ("numpy", matrices["numpy"]),
        ("neurokit2", matrices["neurokit2"]),
        ("numpy, first-baseline names only", matrices["numpy"][:, shared]),
    ):
        start = time.perf_counter()
        rows[name] = cross_validate(x, y, folds, labels, args.seed)
        macro = [m["macro"]["f1"] for m in rows[name]["folds"]]
        print(f"{name}: macro F1 {_mean_sd(macro)} ({time.perf_counter() - start:.0f} s)", flush=True)
    cost = {engine: feature_seconds(entries, engine) for engine in ENGINES}

    lines = [
        "# Expert features: numpy/scipy engine vs neurokit2 (5-fold patient cross-validation)",
        "",
        f"`python -m benchmarks.features_cv --data {args.data}`: gradient boosting as `federated.baseline` fits it "
        f"(candidates chosen per class on validation AUROC, thresholds on validation F1) on each engine's "
        f"`expert_features`, {args.folds} folds by patient (`cpsc2018.splits.patient_folds`, seed {args.seed}, "
        f"stratified over the six labels; a validation part inside each training part). {len(entries)} 12-lead "
        f"records ({', '.join(f'{lab} {int(y[:, k].sum())}' for k, lab in enumerate(labels))}). Figures: each "
        f"fold's test part scored alone, mean ± sd over the {args.folds} folds (not pooled).",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Macro",
        "",
        "| features | macro F1 | macro AUROC |",
        "|---|---|---|",
    ]
    for name, r in rows.items():
        f1 = _mean_sd([m["macro"]["f1"] for m in r["folds"]])
        auc = _mean_sd([m["macro"]["auroc"] for m in r["folds"]])
        lines.append(f"| {name} | {f1} | {auc} |")
    diff = [a["macro"]["f1"] - b["macro"]["f1"] for a, b in zip(rows["numpy"]["folds"], rows["neurokit2"]["folds"])]
    verdict = "met" if np.mean(diff) >= -0.02 else "NOT met"
    lines += ["", f"numpy minus neurokit2 macro F1, per fold: {', '.join(f'{d:+.3f}' for d in diff)} "
              f"(mean {np.mean(diff):+.3f}). Goal of issue 15, numpy within 0.02 macro F1 of neurokit2: {verdict}.", ""]
    for metric, key in (("F1", "f1"), ("AUROC", "auroc")):
        lines += [f"## Per class {metric}", "", "| features | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for name, r in rows.items():
            cells = [_mean_sd([m["per_class"][lab][key] for m in r["folds"]]) for lab in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Cost", "", "| engine | one 10 s 12-lead 500 Hz record (median, p90, one process) | whole matrix |",
              "|---|---|---|"]
    for engine in ENGINES:
        med, p90, n = cost[engine]
        whole = "cached" if compute[engine] is None else f"{compute[engine]:.0f} s with {args.workers} processes"
        lines.append(f"| {engine} | {med * 1000:.1f} ms, {p90 * 1000:.1f} ms ({n} records) | {whole} |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
