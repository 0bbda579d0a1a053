"""Heartbeat benchmark: leave-records-out cross-validation over MIT-BIH DS1 (folds of whole patients).

    OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.beats --data ../shared/data/mitbih [--parts central,rnn,federated]

Rows (each: the same k folds of whole patients, out-of-fold beats pooled; AAMI per-class Se / +P / F1):

* central ``beatnet``, three ways of handling the class imbalance: none, class-weighted cross-entropy,
  class-balanced sampling (``federated/beats/train.py`` says what each means);
* central ``rnn_attention`` (with the RR head), weighting;
* federated ``beatnet`` (FedAvg in Flower's simulation engine, one client per training patient), weighting.

Each part stores its figures in ``benchmarks/results/beats.json`` and the Markdown
``benchmarks/results/beats.md`` is rendered from every part present, so parts can run separately. The
inter-patient test set DS2 is not in ``../shared/data``: these are CV figures on DS1, not DS2 figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line  # noqa: E402
from cpsc2018.beats import DS1  # noqa: E402
from cpsc2018.labels import AAMI  # noqa: E402
from cpsc2018.util import atomic_write_text, default_data_dir  # noqa: E402
from federated.config import TrainConfig  # noqa: E402
from federated.outputs import json_safe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("federated")


def base_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(args.data), task="beats", model="beatnet", epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device="cpu", workers=0, out="/tmp/ecg-lite-beats-benchmark",
    )


def rows_for(part: str, base: TrainConfig, args: argparse.Namespace) -> list[tuple[str, TrainConfig]]:
    if part == "central":
        return [
            ("beatnet, no imbalance handling", replace(base, pos_weight_cap=1.0, sampler="shuffle")),
            ("beatnet, class-weighted loss (cap 20)", replace(base, pos_weight_cap=20.0, sampler="shuffle")),
            ("beatnet, class-balanced sampling", replace(base, pos_weight_cap=1.0, sampler="balanced")),
        ]
    if part == "leads2":
        return [("beatnet, MLII + second lead, class-weighted loss (cap 20)", replace(base, model_kwargs={"in_leads": 2}))]
    if part == "notemplate":
        return [("beatnet, no median-beat channel, class-weighted loss (cap 20)", replace(base, model_kwargs={"template": "none"}))]
    if part == "rnn":
        return [("rnn_attention + RR, class-weighted loss (cap 20)", replace(base, model="rnn_attention", epochs=args.rnn_epochs))]
    if part == "federated":
        return [(
            f"beatnet federated (FedAvg, {args.clients} clients of whole patients, {args.rounds} rounds x 1 local epoch), class-weighted loss",
            replace(base, mode="federated", rounds=args.rounds, local_epochs=1, pos_weight_cap=20.0, clients=args.clients),
        )]
    raise ValueError(f"unknown part {part!r}; expected central, rnn or federated")


def run_row(cfg: TrainConfig, data, folds: list[list[str]]) -> dict:
    from federated.beats.train import cross_validate

    train_fn = None
    if cfg.mode == "federated":
        from federated.beats.flower import federated_model

        def train_fn(c, d, names):  # noqa: E306
            return federated_model(c, d, names)

    t0 = time.perf_counter()
    res = cross_validate(cfg, data, folds, train_fn=train_fn, progress=False)
    res["minutes"] = (time.perf_counter() - t0) / 60
    res["config"] = {k: getattr(cfg, k) for k in ("model", "model_kwargs", "mode", "epochs", "rounds", "local_epochs", "clients", "batch_size", "lr", "sampler", "pos_weight_cap", "seed")}
    return res


def _p(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _ms(d: dict) -> str:
    m, s = d.get("mean"), d.get("sd")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    return f"{m:.3f} ± {s:.3f}" if s is not None and not (isinstance(s, float) and math.isnan(s)) else f"{m:.3f}"


def markdown(store: dict) -> str:
    meta = store.get("meta", {})
    lines = [
        "# Heartbeat classification: MIT-BIH DS1, leave-records-out cross-validation",
        "",
        f"{meta.get('machine', '')}",
        "",
        f"Data: the 22 DS1 records of the inter-patient protocol (de Chazal et al. 2004), {meta.get('beats', '?')} beats "
        f"({meta.get('class_counts', '')}); {meta.get('k', '?')} folds of whole patients (records 201/202 are one patient; 202 is "
        "in DS2, not here), rare classes spread by `cpsc2018.beats.patient_folds` (seed "
        f"{meta.get('seed', 0)}). Each fold is scored by a model trained on the other folds for a fixed number of epochs (no inner "
        "validation: the last epoch is scored); out-of-fold beats are pooled for the per-class table. Beat windows 0.25 s + 0.45 s "
        "at 180 Hz, leads MLII + the record's other lead, 7 RR features, record-level standardisation (`cpsc2018.beats.BeatConfig`).",
        "",
        "These are cross-validation figures on DS1, **not** DS2 figures: they are not comparable one to one with the published "
        "DS2 results (de Chazal et al. 2004: S Se 75.9 % / +P 38.5 %, V 77.7 % / 81.9 %), and with 21 patients a fold holds 4-5 "
        "of them, so per-class figures swing with which patient lands where (S beats: 383 of 944 in record 209; F: 373 of 415 in 208).",
        "",
        f"Folds: {meta.get('folds', '')}",
        "",
        "## Pooled out-of-fold beats (per class Se / +P / F1, %)",
        "",
        "| row | " + " | ".join(f"{c} Se | {c} +P | {c} F1" for c in AAMI[:4]) + " | macro F1 N,S,V,F, pooled | macro F1, pooled | macro F1 per fold, mean ± sd | minutes |",
        "|---" * (3 * 4 + 5) + "|",
    ]
    for name, r in store.get("rows", {}).items():
        pc = r["pooled"]["per_class"]
        cells = [f"{_p(pc[c]['sensitivity'])} | {_p(pc[c]['ppv'])} | {_p(pc[c]['f1'])}" for c in AAMI[:4]]
        nsvf = sum(pc[c]["f1"] or 0.0 for c in AAMI[:4]) / 4
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {nsvf:.3f} | {r['pooled']['macro']['f1']:.3f} | {_ms(r['summary']['macro']['f1'])} | {r['minutes']:.1f} |")
    lines += [
        "",
        "Q (8 paced/unclassifiable beats in DS1) is left out of the per-class columns. \"macro F1 N,S,V,F\" averages those four "
        "classes (as most inter-patient papers do); \"macro F1\" averages every class with reference beats, Q included (its F1 is 0 "
        "in every row: 8 beats), which is what `federated.evaluate` reports; per fold it averages the classes present in that fold. "
        "Confusion matrices (rows: reference N S V F Q; columns: predicted):",
        "",
    ]
    for name, r in store.get("rows", {}).items():
        lines.append(f"- {name}: `{json.dumps(r['pooled']['confusion'])}`; settings `{json.dumps(r['config'])}`")
    lines += ["", "Command: `" + meta.get("command", "") + "`", ""]
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.beats", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir() / "mitbih", help="folder with the DS1 records")
    p.add_argument("--parts", default="central,rnn,federated", help="comma-separated: central, rnn, federated")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rnn-epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clients", type=int, default=5, help="federated clients (groups of whole patients) per fold")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from federated.beats.data import load_beat_data
    from federated.beats.train import beat_config

    base = base_config(args)
    loaded: dict = {}

    def data_for(cfg: TrainConfig):
        bcfg = beat_config(cfg)
        if bcfg not in loaded:
            loaded[bcfg] = load_beat_data(args.data, bcfg, progress=False, only=list(DS1))
        return loaded[bcfg]

    data = data_for(base)
    missing = sorted(set(DS1) - set(data.records))
    if missing:
        print(f"error: DS1 records missing under {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    folds = data.folds(args.folds, args.seed)
    json_path = args.out / "beats.json"
    store = json.loads(json_path.read_text()) if json_path.exists() else {}
    total = np.sum(list(data.counts().values()), axis=0)
    store["meta"] = {
        "machine": machine_line(), "k": args.folds, "seed": args.seed, "beats": int(total.sum()),
        "class_counts": ", ".join(f"{c} {int(n)}" for c, n in zip(AAMI, total)),
        "folds": "; ".join(f"{i + 1}: {', '.join(f)}" for i, f in enumerate(folds)),
        "command": "OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.beats " + " ".join(argv if argv is not None else sys.argv[1:]),
        "notes": store.get("meta", {}).get("notes", []),
    }
    store.setdefault("rows", {})
    for part in [s.strip() for s in args.parts.split(",") if s.strip()]:
        for name, cfg in rows_for(part, base, args):
            log.info("benchmark row: %s", name)
            row = json_safe(run_row(cfg, data_for(cfg), folds))
            # Parts may run in parallel processes: merge into what is on disk now, not what was read at start.
            if json_path.exists():
                store["rows"] = {**json.loads(json_path.read_text()).get("rows", {}), **store["rows"]}
            store["rows"][name] = row
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json_path, json.dumps(json_safe(store), indent=1) + "\n")
            atomic_write_text(args.out / "beats.md", markdown(store))
    print(markdown(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
