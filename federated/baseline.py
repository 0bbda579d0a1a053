"""``python -m federated.baseline``: the classical baseline the deep models must beat.

Expert features (:func:`cpsc2018.features.expert_features`: RR statistics and irregularity, PR and
QT, P-wave presence, QRS duration and axis, ST/T levels, bundle-branch morphology, premature and odd
beats) computed by the numpy/scipy engine (``--features numpy``, the default: what the app can run)
or by the first baseline's neurokit2 engine (``--features neurokit2``, for comparison), with one-vs-rest logistic regression and gradient boosting
(scikit-learn), on the same patient split as the training command (``federated.data.prepare`` with
the same data, seed and label set gives the same records).

Per class, the hyper-parameters (logistic regression's C; the boosting's depth and learning rate)
are those with the best validation AUROC, and the decision threshold is the one with the best
validation F1 (``tune_thresholds``), as for the networks. Validation metrics are therefore
optimistic; the held-out test metrics are not. A class without a positive training record gets a
constant probability of 0 (stated in ``notes``). The feature matrix is cached in the cache folder
(keyed by the engine, the records' files and the feature code), so reruns and other seeds take
seconds.

    python -m federated.baseline --data ../shared/data --seed 0 --labels six --out runs/baseline
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import io
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import functools

import cpsc2018.features
from cpsc2018.cache import DEFAULT_CACHE_DIR
from cpsc2018.catalog import Entry, load
from cpsc2018.features import ENGINES, EXPERT_NAMES, expert_features
from cpsc2018.records import RecordError
from cpsc2018.util import atomic_write_bytes, default_data_dir
from federated.config import TrainConfig
from federated.data import prepare
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.outputs import write_json

KINDS: tuple[str, ...] = ("logreg", "gbm")


def _features_key(entries: Sequence[Entry], engine: str = "numpy") -> str:
    """Changes with the engine, any record file, the feature names, the feature code or the engine's
    library versions (numpy and scipy; neurokit2 too for its engine)."""
    try:
        code = inspect.getsource(cpsc2018.features)
    except OSError:  # no source shipped (a zipped install): the names and versions must do
        code = ""
    h = hashlib.sha256(code.encode())
    libs = ("numpy", "scipy") + (("neurokit2",) if engine == "neurokit2" else ())
    versions = ",".join(f"{lib}={importlib.metadata.version(lib)}" for lib in libs)
    h.update(f"{engine}|{versions}|{','.join(EXPERT_NAMES)}\n".encode())
    for e in entries:
        st = os.stat(e.path) if os.path.exists(e.path) else None
        h.update(f"{e.key}|{e.path}|{e.fs}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:20]


def _record_features(entry: Entry, engine: str = "numpy") -> list[float]:
    """One row of the feature matrix (a worker process's task)."""
    try:
        rec = load(entry)
    except RecordError:  # read once by the catalog already; a file changed since is a row of NaN
        return [math.nan] * len(EXPERT_NAMES)
    f = expert_features(rec.signal, rec.fs, engine=engine)
    return [f[n] for n in EXPERT_NAMES]


def feature_matrix(
    entries: Sequence[Entry],
    cache_dir: Path | str,
    *,
    engine: str = "numpy",
    workers: int = 1,
    progress: bool = False,
) -> tuple[np.ndarray, float | None]:
    """``(n_records, len(EXPERT_NAMES))`` expert features by ``engine``, from the disk cache when there.

    Returns the matrix and the seconds spent computing it (None when read from the cache).
    neurokit2 takes ~0.03-0.05 s per 10 s record (the numpy engine ~0.01 s, most of the rest is
    reading), so ``workers`` processes share the records.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown feature engine {engine!r}; expected one of {ENGINES}")
    path = Path(cache_dir) / f"expert-features-{engine}-{_features_key(entries, engine)}.npy"
    if path.exists():
        return np.load(path), None
    start = time.perf_counter()
    bar = dict(total=len(entries), desc=f"expert features ({engine})", unit="rec", disable=not progress)
    task = functools.partial(_record_features, engine=engine)
    if workers > 1 and len(entries) > 1:
        # spawn: the parent holds torch (threads); forking it is not safe on every platform.
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = list(tqdm(pool.imap(task, entries, chunksize=8), **bar))
    else:
        rows = [task(e) for e in tqdm(entries, **bar)]
    x = np.array(rows, dtype=np.float64).reshape(len(entries), len(EXPERT_NAMES))
    buf = io.BytesIO()
    np.save(buf, x)
    atomic_write_bytes(path, buf.getvalue())
    return x, time.perf_counter() - start


def candidates(kind: str, seed: int) -> Iterator[tuple[str, Callable[[], ClassifierMixin]]]:
    """(description, factory) of the hyper-parameters tried per class, most regularised first."""
    if kind == "logreg":
        for c in (0.01, 0.1, 1.0, 10.0):
            # Median imputation (NaN where delineation failed) and standardisation inside the
            # pipeline: both are fitted on the training split only.
            yield f"C={c}", lambda c=c: make_pipeline(
                SimpleImputer(strategy="median"),
                StandardScaler(),
                LogisticRegression(C=c, class_weight="balanced", max_iter=5000),
            )
    elif kind == "gbm":
        # Shallow trees, slow learning and at least 10 records per leaf: a few dozen positives per
        # class overfit deeper ones. NaN goes down its own learned branch (no imputation).
        for depth, lr in ((2, 0.03), (2, 0.1), (3, 0.03), (3, 0.1)):
            yield f"max_depth={depth},learning_rate={lr}", lambda depth=depth, lr=lr: HistGradientBoostingClassifier(
                max_depth=depth, learning_rate=lr, max_iter=200, min_samples_leaf=10, l2_regularization=1.0,
                class_weight="balanced", early_stopping=False, random_state=seed,
            )
    else:
        raise ValueError(f"unknown classifier {kind!r}; expected one of {KINDS}")


def fit_predict(
    kind: str, x: np.ndarray, y: np.ndarray, split: dict[str, list[int]], seed: int, labels: Sequence[str]
) -> dict:
    """Per class, fit every candidate on train, keep the best on validation AUROC; probabilities of every split."""
    tr, va = split["train"], split["val"]
    probs = {part: np.zeros((len(idx), y.shape[1])) for part, idx in split.items()}
    chosen: dict[str, str] = {}
    notes: list[str] = []
    for k, name in enumerate(labels):
        n_pos = int(y[tr, k].sum())
        if n_pos == 0 or n_pos == len(tr):
            value = 0.0 if n_pos == 0 else 1.0
            chosen[name] = f"constant {value:g}"
            notes.append(f"{kind}: {name} has {'no positive' if n_pos == 0 else 'only positive'} training records; "
                         f"its probability is a constant {value:g}")
            for part in probs:
                probs[part][:, k] = value
            continue
        scorable = 0 < y[va, k].sum() < len(va)
        best: tuple[float, str, ClassifierMixin] | None = None
        for desc, make in candidates(kind, seed):
            model = make().fit(x[tr], y[tr, k])
            score = roc_auc_score(y[va, k], model.predict_proba(x[va])[:, 1]) if scorable else 0.0
            if best is None or score > best[0]:  # ties keep the more regularised candidate
                best = (score, desc, model)
            if not scorable:
                break  # nothing to choose on: keep the most regularised
        assert best is not None
        chosen[name] = best[1]
        for part, idx in split.items():
            if idx:
                probs[part][:, k] = best[2].predict_proba(x[idx])[:, 1]
    return {"probs": probs, "chosen": chosen, "notes": notes}


def run_baseline(
    data: Path | str,
    seed: int = 0,
    labels: str = "six",
    cache_dir: Path | str | None = None,
    out: Path | str | None = None,
    *,
    features: str = "numpy",
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Train and score both classifiers on the training command's split; write ``out/metrics.json``.

    ``features`` is the :func:`expert_features` engine. Returns ``{"logreg": {"val": metrics, "test":
    metrics, "thresholds", "chosen"}, "gbm": {...}, "features", "feature_engine", "seed", "records",
    "split", "notes", "feature_seconds"}`` (metrics as ``multilabel_metrics`` gives them).
    """
    if features not in ENGINES:
        raise ValueError(f"unknown feature engine {features!r}; expected one of {ENGINES}")
    cfg = TrainConfig(data=str(data), seed=seed, labels=labels, cache_dir=str(cache_dir or ""))
    cfg.validate()
    exp = prepare(cfg, progress=progress)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    x, seconds = feature_matrix(
        exp.entries, cache_dir or DEFAULT_CACHE_DIR, engine=features, workers=workers, progress=progress
    )
    # Columns never measured (the numpy-only names under the neurokit2 engine) carry nothing, and
    # the boosting's binning refuses an all-NaN column.
    used = [i for i in range(x.shape[1]) if not np.isnan(x[:, i]).all()]
    x = x[:, used]
    y = exp.targets.astype(int)
    names = list(exp.labels)
    result: dict = {
        "features": [EXPERT_NAMES[i] for i in used],
        "feature_engine": features,
        "labels": names,
        "seed": seed,
        "records": {part: len(idx) for part, idx in exp.split.items()},
        "split": exp.split_info,
        "feature_seconds": seconds,
        "notes": [],
    }
    for kind in KINDS:
        # One thread: on a few hundred records OpenMP's start-up and spinning cost more than the
        # work, and on a busy machine they made the boosting 10x slower (measured: 282 s vs 22 s).
        with threadpool_limits(limits=1):
            fp = fit_predict(kind, x, y, exp.split, seed, names)
        thresholds = tune_thresholds(y[exp.split["val"]], fp["probs"]["val"])
        result["notes"] += fp["notes"]
        result[kind] = {"chosen": fp["chosen"], "thresholds": thresholds}
        for part in ("val", "test"):
            if exp.split[part]:
                result[kind][part] = multilabel_metrics(y[exp.split[part]], fp["probs"][part], names, thresholds)
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if out is not None:
        write_json(Path(out) / "metrics.json", result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m federated.baseline",
        description="Classical baseline: expert ECG features + logistic regression / gradient boosting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder (env ECG_DATA)")
    p.add_argument("--seed", type=int, default=0, help="split seed: the training command's --seed")
    p.add_argument("--labels", choices=("six", "cpsc9"), default="six")
    p.add_argument("--out", type=Path, default=Path("runs/baseline"), help="folder for metrics.json")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"record and feature cache (default {DEFAULT_CACHE_DIR})"
    )
    p.add_argument(
        "--features", choices=ENGINES, default="numpy",
        help="expert-feature engine: numpy/scipy (what the app runs) or the first baseline's neurokit2",
    )
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes computing features")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        r = run_baseline(
            args.data, args.seed, args.labels, args.cache_dir, args.out, features=args.features, workers=args.workers,
            progress=sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if r["feature_seconds"] is not None:
        print(f"expert features ({args.features}) of {sum(r['records'].values())} records: {r['feature_seconds']:.1f} s")
    for kind in KINDS:
        for part in ("val", "test"):
            if part in r[kind]:
                m = r[kind][part]["macro"]
                print(f"{kind:7s} {part:5s} macro F1 {m['f1']:.3f}  AUROC {m['auroc']:.3f}")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
