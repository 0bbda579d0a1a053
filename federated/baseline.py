"""``python -m federated.baseline``: the classical baseline the deep models must beat.

Expert features (``cpsc2018.features.expert_features``: RR statistics and irregularity, PR, QRS and QT
from neurokit2's delineation, P-wave presence, QRS axis, ST/T levels, bundle-branch morphology) with
one-vs-rest logistic regression and gradient boosting (scikit-learn), on the same patient split as
the training command (same seed -> same records), hyper-parameters and thresholds chosen on validation.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from cpsc2018.catalog import load
from cpsc2018.features import EXPERT_NAMES, expert_features
from cpsc2018.util import atomic_write_bytes, default_data_dir
from federated.config import TrainConfig
from federated.data import Experiment, prepare
from federated.metrics import multilabel_metrics, tune_thresholds
from federated.outputs import write_json


def feature_matrix(exp: Experiment, cache_dir: Path, progress: bool) -> np.ndarray:
    """Expert features of every record of the experiment, cached on disk (neurokit2 is slow)."""
    key = hashlib.sha256("|".join(e.key + e.path for e in exp.entries).encode() + ",".join(EXPERT_NAMES).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"expert-features-{key}.npy"
    if path.exists():
        return np.load(path)
    rows = []
    for e in tqdm(exp.entries, desc="expert features", unit="rec", disable=not progress):
        f = expert_features(load(e).signal, e.fs)
        rows.append([f[n] for n in EXPERT_NAMES])
    x = np.array(rows, dtype=np.float64)
    buf = io.BytesIO()
    np.save(buf, x)
    atomic_write_bytes(path, buf.getvalue())
    return x


def _candidates(kind: str, seed: int):
    if kind == "logreg":
        for c in (0.01, 0.1, 1.0):
            yield f"C={c}", lambda c=c: make_pipeline(
                SimpleImputer(strategy="median"), StandardScaler(),
                LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
            )
    else:
        for depth, lr in ((2, 0.05), (3, 0.1)):
            yield f"depth={depth},lr={lr}", lambda depth=depth, lr=lr: HistGradientBoostingClassifier(
                max_depth=depth, learning_rate=lr, max_iter=150, class_weight="balanced", random_state=seed,
                min_samples_leaf=5,
            )


def fit_predict(kind: str, x: np.ndarray, y: np.ndarray, split: dict[str, list[int]], seed: int, labels: list[str]) -> dict:
    """Per class: the candidate with the best validation AUROC; returns probabilities and choices."""
    tr, va = split["train"], split["val"]
    probs = {part: np.zeros((len(idx), y.shape[1])) for part, idx in split.items()}
    chosen = {}
    for k, name in enumerate(labels):
        if y[tr, k].sum() == 0:
            chosen[name] = "no positive training record: constant 0"
            continue
        best = (-math.inf, None, None)
        for desc, make in _candidates(kind, seed):
            model = make().fit(x[tr], y[tr, k])
            pv = model.predict_proba(x[va])[:, 1]
            score = roc_auc_score(y[va, k], pv) if 0 < y[va, k].sum() < len(va) else 0.0
            if score > best[0]:
                best = (score, desc, model)
        chosen[name] = best[1]
        for part, idx in split.items():
            if idx:
                probs[part][:, k] = best[2].predict_proba(x[idx])[:, 1]
    return {"probs": probs, "chosen": chosen}


def run_baseline(data: Path | str, seed: int = 0, labels: str = "six", cache_dir: Path | str | None = None, out: Path | str | None = None, progress: bool = False) -> dict:
    cfg = TrainConfig(data=str(data), seed=seed, labels=labels, cache_dir=str(cache_dir or ""))
    exp = prepare(cfg, progress=progress)
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "ecg-lite"
    x = feature_matrix(exp, cache, progress)
    y = exp.targets.astype(int)
    names = list(exp.labels)
    result: dict = {"features": list(EXPERT_NAMES), "seed": seed, "records": {k: len(v) for k, v in exp.split.items()}}
    for kind in ("logreg", "gbm"):
        fp = fit_predict(kind, x, y, exp.split, seed, names)
        thresholds = tune_thresholds(y[exp.split["val"]], fp["probs"]["val"])
        result[kind] = {
            "chosen": fp["chosen"],
            "thresholds": thresholds,
            **{part: multilabel_metrics(y[exp.split[part]], fp["probs"][part], names, thresholds) for part in ("val", "test") if exp.split[part]},
        }
    if out is not None:
        write_json(Path(out) / "metrics.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m federated.baseline", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--seed", type=int, default=0, help="the split seed (same as the training command's)")
    p.add_argument("--labels", choices=("six", "cpsc9"), default="six")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/baseline"))
    args = p.parse_args(argv)
    try:
        r = run_baseline(args.data, args.seed, args.labels, args.cache_dir, args.out, progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind in ("logreg", "gbm"):
        for part in ("val", "test"):
            m = r[kind][part]["macro"]
            print(f"{kind:7s} {part:5s} macro F1 {m['f1']:.3f}  AUROC {m['auroc']:.3f}")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
