"""What a study writes into its folder: the best config, the table of trials, and three plots."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cpsc2018.util import atomic_write_text
from federated.config import TrainConfig
from federated.tuning.space import apply, decode

log = logging.getLogger("federated")

PLOTS = ("optimization_history.png", "param_importances.png", "parallel_coordinate.png")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the highest value (None before the first completes)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def best_config(base: TrainConfig, trial: FrozenTrial, out: Path) -> TrainConfig:
    """The training config of ``trial`` as ``python -m federated.train --config`` takes it."""
    cfg = apply(base, trial.params)
    cfg.out = str(out)
    cfg.resume = False
    return cfg


def write_best_config(path: Path, cfg: TrainConfig) -> None:
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(decode(v))


def trial_rows(study: optuna.Study, names: list[str]) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        last_step = max(t.intermediate_values) if t.intermediate_values else None
        note = t.user_attrs.get("error", "")
        if t.state == TrialState.PRUNED:
            note = f"pruned after step {last_step}"
        elif t.state == TrialState.FAIL and "aborted" in t.user_attrs:
            note = f"search stopped: {t.user_attrs['aborted']}; its parameters were queued again"
        elif t.state == TrialState.FAIL and not note:
            note = "interrupted (the search was stopped or killed); its parameters were queued again"
        if "retry_of" in t.user_attrs:
            note = (note + "; " if note else "") + f"retry of trial {t.user_attrs['retry_of']}"
        f1 = t.user_attrs.get("val_f1", t.user_attrs.get("val_f1_mean"))
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value, "val_f1": f1,
               "seconds": duration, "steps": len(t.intermediate_values)}
        row.update({n: t.params.get(n) for n in names})
        row.update({"run": t.user_attrs.get("run", ""), "note": note})
        rows.append(row)
    return rows


def write_tables(study_dir: Path, study: optuna.Study, names: list[str], header: list[str]) -> None:
    """``trials.csv`` (every trial, raw values) and ``trials.md`` (a header, then the same table)."""
    rows = trial_rows(study, names)
    # val_f1: validation macro F1 at thresholds tuned on the same records (optimistic; shown, not optimised).
    cols = ["trial", "state", "value", "val_f1", "seconds", "steps", *names, "run", "note"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else decode(v) if k in names else v) for k, v in r.items()})
    atomic_write_text(study_dir / "trials.csv", buf.getvalue())
    md = [*header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    best = best_trial(study)
    for r in rows:
        cells = [_fmt(r[c]) if c != "seconds" else ("" if r[c] is None else f"{r[c]:.0f}") for c in cols]
        if best is not None and r["trial"] == best.number:
            cells[0] = f"**{cells[0]}** (best)"
        md.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    atomic_write_text(study_dir / "trials.md", "\n".join(md) + "\n")


def write_plots(study_dir: Path, study: optuna.Study) -> list[str]:
    """The three PNGs (optuna.visualization.matplotlib); returns a line per plot that was not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    varied = {n for n in {k for t in complete for k in t.params} if len({repr(t.params.get(n)) for t in complete}) > 1}
    skipped = []
    plans = [
        ("optimization_history.png", ovm.plot_optimization_history, len(complete) >= 1, "no completed trial yet"),
        # fANOVA importances need at least two completed trials whose parameters differ.
        ("param_importances.png", ovm.plot_param_importances, len(complete) >= 2 and bool(varied),
         f"needs at least 2 completed trials with different parameters (have {len(complete)})"),
        ("parallel_coordinate.png", ovm.plot_parallel_coordinate, len(complete) >= 1, "no completed trial yet"),
    ]
    for name, fn, possible, reason in plans:
        path = study_dir / name
        if not possible:
            skipped.append(f"{name}: not drawn: {reason}")
            path.unlink(missing_ok=True)  # a stale plot from an earlier state of the study would mislead
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # matplotlib: a parameter with one value has a flat axis
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{name}: not drawn: {exc}")
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        # One axis per parameter in the parallel coordinates: give each about an inch.
        width = 1.0 * (len(varied) + 3) if name == "parallel_coordinate.png" else 8
        fig.set_size_inches(max(fig.get_size_inches()[0], width), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        tmp = path.with_name("." + name + ".tmp")
        fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        tmp.replace(path)
    for line in skipped:
        log.info(line)
    return skipped
