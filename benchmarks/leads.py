"""Reduced lead sets (issue 21): what each standard lead set loses, in patient-level cross-validation.

    python benchmarks/leads.py --data ../shared/data --baseline runs/cv_recipe \\
        --masked runs/leads/masked --per-set 'runs/leads/set{set}' --out benchmarks/results

Three ways to classify a record that has only some of the twelve leads, each scored on the same five
patient folds (the folds of ``python -m federated.train --folds 5 --seed 0``), on each fold's test part:

* naive: the 12-lead model (``--baseline``: a ``--folds`` run's fold checkpoints) with the absent
  leads zeroed. Shown twice: at its 12-lead thresholds (what running it unchanged gives) and at
  thresholds re-tuned per lead set on the fold's validation part;
* one model for any subset (``--masked``: ``--lead-masking``), thresholds tuned per set on validation;
* one model per set (``--per-set``, ``{set}`` replaced by 6, 4, 3, 2, 1: ``--leads S``), thresholds
  tuned on validation; for 12 leads this is the 12-lead model itself.

Thresholds and every choice come from the validation parts; test parts are only scored. Figures are
the mean and standard deviation over folds of the test-part metrics. Writes ``leads.md``,
``leads.json`` and ``leads.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import machine_line  # noqa: E402
from cpsc2018.leadsets import STANDARD_SETS  # noqa: E402
from federated.checkpoint import load_checkpoint  # noqa: E402
from federated.config import TrainConfig  # noqa: E402
from federated.cv import fold_experiments, mean_sd  # noqa: E402
from federated.central import score_lead_sets  # noqa: E402
from federated.data import prepare  # noqa: E402
from federated.outputs import json_safe  # noqa: E402
from cpsc2018.util import atomic_write_text  # noqa: E402

NAIVE = ("naive (12-lead thresholds)", "naive")
PER_SET = "per-set model"


def parse_named(text: str) -> tuple[str, Path]:
    """``--masked LABEL=PATH`` (or just PATH, labelled "any-subset model")."""
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep else ("any-subset model", Path(text))


def score_fold(exp, ckpt_path: Path, cfg: TrainConfig, sets: list[str]) -> dict[str, dict]:
    """Per lead set: validation-tuned thresholds and test metrics of one checkpoint on one fold."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.split.get("test_ids") and sorted(ckpt.split["test_ids"]) != sorted(exp.split_info["test_ids"]):
        raise SystemExit(f"{ckpt_path}: its test records are not this fold's; was it trained with --folds {cfg.folds} --seed {cfg.seed}?")
    scores = score_lead_sets(ckpt.build_model(), exp, cfg, sets, thresholds_12=list(ckpt.thresholds))
    return {name: {"test": r["test"], "test_12_thresholds": r["test_12_thresholds"], "val_auroc": r["val"]["macro"]["auroc"]}
            for name, r in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--baseline", type=Path, required=True, help="12-lead --folds run (fold0/best.pt ...)")
    p.add_argument("--masked", type=parse_named, action="append", required=True,
                   help="--lead-masking --folds run, as LABEL=PATH (repeatable)")
    p.add_argument("--per-set", default="", help="--leads S --folds runs, '{set}' in the path (optional)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--notes", type=Path, default=None, help="markdown inserted after the header: what the figures say")
    p.add_argument("--work", type=Path, default=Path("runs/leads_scores"), help="per-fold scores, kept so that a killed run resumes")
    args = p.parse_args(argv)
    sets = list(STANDARD_SETS)
    cfg = TrainConfig(data=args.data, folds=args.folds, seed=args.seed, workers=args.workers)
    base_cfg = load_checkpoint(args.baseline / "fold0" / "best.pt").config
    cfg.ptbxl_rate = base_cfg.get("ptbxl_rate", cfg.ptbxl_rate)
    exp = prepare(cfg)
    folds = fold_experiments(exp, cfg)
    cache = args.work
    cache.mkdir(parents=True, exist_ok=True)
    methods = [*NAIVE, *(label for label, _ in args.masked), PER_SET]
    per_fold: dict[str, dict[str, list]] = {m: {s: [] for s in sets} for m in methods}
    missing: list[str] = []
    for i, fexp in enumerate(tqdm(folds, desc="folds")):
        def cached(kind: str, path: Path, which: list[str]) -> dict | None:
            """Scores of one checkpoint on one fold, kept under --out so that a killed run resumes."""
            part = cache / f"{kind}-fold{i}.json"
            if part.exists():
                return json.loads(part.read_text())
            if not (path.exists() and (path.parent / "oof.npz").exists()):  # oof.npz: the fold has finished
                missing.append(str(path))
                return None
            done = json_safe(score_fold(fexp, path, cfg, which))
            atomic_write_text(part, json.dumps(done))
            return done

        naive = cached("naive", args.baseline / f"fold{i}" / "best.pt", sets)
        masked = {label: cached(path.name, path / f"fold{i}" / "best.pt", sets) for label, path in args.masked}
        if naive is not None:
            for s_, v in naive.items():
                per_fold["naive (12-lead thresholds)"][s_].append(v["test_12_thresholds"])
                per_fold["naive"][s_].append(v["test"])
            per_fold[PER_SET]["12"].append(naive["12"]["test"])
        for label, done in masked.items():
            for s_, v in (done or {}).items():
                per_fold[label][s_].append(v["test"])
        for s_ in sets[1:]:
            if args.per_set:
                own = cached(f"set{s_}", Path(args.per_set.replace("{set}", s_)) / f"fold{i}" / "best.pt", [s_])
                if own is not None:
                    per_fold[PER_SET][s_].append(own[s_]["test"])
    if missing:
        print(f"not found, left out: {', '.join(missing)}", file=sys.stderr)
    labels = list(exp.labels)
    # A method's set is summarised only when every fold has it (a partial row would not compare).
    summary = {
        m: {s: summarize(per_fold[m][s], labels) for s in sets if len(per_fold[m][s]) == args.folds} for m in methods
    }
    # Paired, fold by fold: each method against the first any-subset run (the shipped kind), same folds.
    ref = args.masked[-1][0] if args.masked else None
    paired: dict = {}
    for m in methods:
        if ref is None or m == ref:
            continue
        for k in sets:
            a, b = per_fold[m][k], per_fold[ref][k]
            if len(a) == len(b) == args.folds:
                paired.setdefault(m, {})[k] = {
                    metric: mean_sd([x["macro"][metric] - y["macro"][metric] for x, y in zip(a, b)]) for metric in ("f1", "auroc")
                }
    result = {"paired_against": ref, "paired": paired, "machine": machine_line(), "records": len(exp.entries), "folds": args.folds, "seed": args.seed,
              "sets": {s: list(STANDARD_SETS[s]) for s in sets}, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "leads.json", json.dumps(json_safe(result), indent=1))
    plot(summary, sets, args.out / "leads.png")
    atomic_write_text(args.out / "leads.md", markdown(result, labels, sets, args))
    print(f"wrote {args.out / 'leads.md'}")
    return 0


def summarize(folds: list[dict], labels: list[str]) -> dict:
    out = {"n_folds": len(folds), "macro": {}, "per_class": {}}
    for metric in ("f1", "auroc"):
        out["macro"][metric] = mean_sd([f["macro"][metric] for f in folds])
        for c in labels:
            out["per_class"].setdefault(c, {})[metric] = mean_sd([f["per_class"][c][metric] for f in folds])
    return out


def _ms(d: dict) -> str:
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def markdown(result: dict, labels: list[str], sets: list[str], args) -> str:
    s = result["summary"]
    lines = [
        "# Reduced lead sets: 12, 6, 4, 3, 2 and 1 lead (issue 21)", "",
        result["machine"], "",
        f"{result['records']} 12-lead records, {result['folds']}-fold patient cross-validation (seed {result['seed']}, the folds of "
        "`federated.train --folds`); test parts, mean ± sd over folds. A reduced set is simulated on the 12-lead records "
        "by zeroing the other leads after preprocessing, as the app does for a recording that lacks them.", "",
        "Lead sets: " + "; ".join(f"**{k}** {', '.join(v)}" for k, v in result["sets"].items()) + ".", "",
        "Methods: *naive*: the 12-lead model with the absent leads zeroed (at its own 12-lead thresholds, and at "
        "thresholds re-tuned per set on validation); *any-subset model*: one model fine-tuned from the 12-lead one with random "
        "lead sets (`--lead-masking`), thresholds per set; *per-set model*: the 12-lead model fine-tuned for one set "
        "(`--leads S`). Each is fine-tuned for 5 epochs (lr 3e-4, 2 windows per record, augmentation) from its fold's "
        "12-lead model; the labels say where the weights were averaged (EMA 0.998) and where not.", "",
        f"Command: `python benchmarks/leads.py --data {args.data} --baseline {args.baseline} "
        + " ".join(f"--masked '{label}={path}'" for label, path in args.masked)
        + (f" --per-set '{args.per_set}'" if args.per_set else "") + "`", "",
    ]
    if args.notes is not None:
        lines += [args.notes.read_text().strip(), ""]
    for metric, title in (("auroc", "Macro AUROC"), ("f1", "Macro F1")):
        lines += [f"## {title}", "", "| method | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for m in s:
            if metric == "auroc" and m == "naive (12-lead thresholds)":
                continue  # thresholds do not change AUROC
            row = [(_ms(s[m][k]["macro"][metric]) if k in s[m] else "–") for k in sets]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    if result.get("paired"):
        lines += [f"## Fold by fold against the {result['paired_against']}", "",
                  "Mean ± sd over the folds of (method - that model) on the same test part: a difference larger than its sd is "
                  "one the folds agree on.", "",
                  "| method | metric | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for m, by_set in result["paired"].items():
            for metric in ("auroc", "f1"):
                row = [(f"{by_set[k][metric]['mean']:+.3f} ± {by_set[k][metric]['sd']:.3f}" if k in by_set else "–") for k in sets]
                lines.append(f"| {m} | {metric.upper()} | " + " | ".join(row) + " |")
        lines.append("")
    for m in [m for m in s if m != "naive (12-lead thresholds)"]:
        for metric, title in (("auroc", "AUROC"), ("f1", "F1")):
            lines += [f"## Per class {title}: {m}", "", "| leads | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            for k in sets:
                if k in s[m]:
                    lines.append(f"| {k} | " + " | ".join(_ms(s[m][k]["per_class"][c][metric]) for c in labels) + " |")
            lines.append("")
    lines += ["![macro AUROC and F1 per lead set](leads.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, sets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(sets))
    for ax, metric in zip(axes, ("auroc", "f1")):
        for j, m in enumerate(summary):
            if metric == "auroc" and m == "naive (12-lead thresholds)":
                continue
            ks = [k for k in sets if k in summary[m]]
            xs = [sets.index(k) + (j - len(summary) / 2) * 0.06 for k in ks]
            ys = [summary[m][k]["macro"][metric]["mean"] for k in ks]
            es = [summary[m][k]["macro"][metric]["sd"] for k in ks]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m, color=f"C{j}")  # one colour per method in both panels
        ax.set_xticks(x, [f"{k} lead{'s' if k != '1' else ''}" for k in sets])
        ax.set_ylabel(f"test macro {metric.upper()}")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
