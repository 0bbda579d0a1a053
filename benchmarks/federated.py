"""Privacy and robustness study of federated training (issue 17) -> benchmarks/results/federated.md + PNGs.

Sections (each cell: mean +- sd over seeds; the seed sets the patient split, the partition and the
initial weights):
1. non-IID: central, local-only per site, FedAvg/FedProx/FedAdam on site, IID and Dirichlet(0.1, 0.5,
   1.0) partitions, and per-site fine-tuning (personalisation) of the FedAvg site model;
2. privacy: DP-SGD per client (``--dp local``) and in central mode, and server-side DP (``--dp
   central``) at epsilon 1, 3, 8 (infinity = the rows without DP);
3. attacks: label-flip, sign-flip, scale and noise with 0, 1 and 2 malicious clients out of 7 (IID),
   under FedAvg, FedMedian, FedTrimmedAvg, Krum, Multi-Krum, Bulyan and FedAvg with update clipping;
4. wall time and bytes per round of every federated row.

Budget (a shared 2-core machine): a per-site sample (``--max-per-site``), a narrow ResNet1D, few
rounds, one torch thread, run under ``nice``. Federated rows use ``federated.inprocess`` (the real
ServerApp and ClientApp without Ray's start-up). Finished cells are kept in
``benchmarks/results/federated.json`` and skipped when the script runs again (``--fresh`` to redo).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/federated.py            # everything
    .venv/bin/python benchmarks/federated.py --sections attacks --seeds 0            # one part
    .venv/bin/python benchmarks/federated.py --report-only                           # rewrite the report

The report keeps the section between ``<!-- deploy:start -->`` and ``<!-- deploy:end -->``
(benchmarks/deploy.py writes it) as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import machine_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEPLOY_START, DEPLOY_END = "<!-- deploy:start -->", "<!-- deploy:end -->"
ATTACKS = ("label-flip", "sign-flip", "scale", "noise")
DEFENCES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "fedavg+clip")
EPSILONS = (1.0, 3.0, 8.0)
log = logging.getLogger("benchmarks.federated")


def base_config(args: argparse.Namespace, seed: int):
    from federated.config import TrainConfig

    return TrainConfig(
        data=args.data, seed=seed, model="resnet1d18", model_kwargs={"widths": args.widths}, workers=0, device="cpu",
        max_per_site=args.max_per_site, rounds=args.rounds, epochs=args.rounds, local_epochs=1, batch_size=32, lr=args.lr,
        cache_dir=args.cache_dir,
    )


def cells(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Every (section, overrides) of the study; a key names each cell."""
    out: list[tuple[str, dict]] = []
    if "noniid" in args.sections:
        out.append(("noniid", {"mode": "central"}))
        out.append(("noniid", {"mode": "local"}))
        for part in ("site", "iid", "dirichlet-0.1", "dirichlet-0.5", "dirichlet-1.0"):
            for strat in ("fedavg", "fedprox", "fedadam"):
                o = {"mode": "federated", "strategy": strat, "partition": part.split("-")[0]}
                if part != "site":
                    o["clients"] = 5
                if part.startswith("dirichlet"):
                    o["alpha"] = float(part.split("-")[1])
                out.append(("noniid", o))
        out.append(("noniid", {"mode": "federated", "strategy": "fedavg", "partition": "site", "personalize_epochs": 2}))
    if "dp" in args.sections:
        for eps in EPSILONS:
            out.append(("dp", {"mode": "central", "dp": "local", "epsilon": eps}))
            out.append(("dp", {"mode": "federated", "strategy": "fedavg", "partition": "site", "dp": "local", "epsilon": eps}))
            out.append(("dp", {"mode": "federated", "strategy": "fedavg", "partition": "site", "dp": "central", "epsilon": eps}))
    if "attacks" in args.sections:
        for strat in DEFENCES:
            for attack in ("none", *ATTACKS):
                for k in ((0,) if attack == "none" else (1, 2)):
                    o = {"mode": "federated", "partition": "iid", "clients": args.attack_clients, "strategy": strat.split("+")[0]}
                    if strat.endswith("+clip"):
                        o["clip_updates"] = args.clip_updates
                    if attack != "none":
                        o.update(attack=attack, malicious=k)
                    out.append(("attacks", o))
    return out


def key_of(section: str, o: dict, seed: int) -> str:
    return f"{section}|seed={seed}|" + ",".join(f"{k}={o[k]}" for k in sorted(o))


def run_cell(cfg, exp, section: str, o: dict, args: argparse.Namespace) -> dict:
    """Train one cell; its test macro F1/AUROC, wall time, bytes per round and extras."""
    from federated.central import fit
    from federated.simulation import run_federated
    from federated.train import run_local

    o = dict(o)
    eps = o.pop("epsilon", None)
    cfg = dataclasses.replace(cfg, **o, model_kwargs=dict(cfg.model_kwargs))
    if eps is not None and cfg.dp == "local":
        cfg.epsilon = eps
    if cfg.dp == "central":
        # The noise multiplier that spends eps over the run's rounds (client level, every client each round).
        cfg.noise_multiplier = _noise_for_central(eps, cfg.rounds, cfg.delta)
        cfg.clipping_norm = args.clip_updates
        cfg.epsilon = eps
    cfg.validate()
    with tempfile.TemporaryDirectory(prefix="fedbench-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        if cfg.mode == "central":
            m = fit(cfg, exp, out, exp.split["train"], exp.split["val"], exp.split["test"])
        elif cfg.mode == "local":
            m = run_local(cfg, exp, out)
        else:
            m = run_federated(cfg, exp, out, in_process=True)
        wall = time.perf_counter() - t0
    row: dict = {"wall_seconds": wall}
    if cfg.mode == "local":
        sites = m["sites"]
        row["per_site"] = {s: {"f1": v["test"]["macro"]["f1"], "auroc": v["test"]["macro"]["auroc"]} for s, v in sites.items()}
        row["f1"] = float(np.nanmean([v["f1"] for v in row["per_site"].values()]))
        row["auroc"] = float(np.nanmean([v["auroc"] for v in row["per_site"].values()]))
    else:
        row["f1"], row["auroc"] = m["test"]["macro"]["f1"], m["test"]["macro"]["auroc"]
        row["test_records"] = len(exp.split["test"])
    if "engine" in m:
        row["bytes_up_per_round"] = m["engine"]["bytes_up_per_round"]
        row["bytes_down_per_round"] = m["engine"]["bytes_down_per_round"]
        row["train_seconds_per_round"] = m["engine"]["train_seconds_per_round"]
    if "privacy" in m and cfg.dp != "none":
        p = m["privacy"]
        if cfg.dp == "central":
            row["epsilon_spent"] = p.get("epsilon")
            row["noise_multiplier"] = cfg.noise_multiplier
        elif cfg.mode == "central":
            row["epsilon_spent"] = p.get("spent")
            row["noise_multiplier"] = p.get("noise_multiplier")
        else:
            spent = p.get("spent_per_client") or {}
            row["epsilon_spent"] = max(spent.values()) if spent else None
    if "personalized" in m:
        row["personalized"] = m["personalized"]
    if "attack" in m:
        row["malicious_clients"] = m["attack"]["malicious"]
    return row


def _noise_for_central(eps: float, rounds: int, delta: float) -> float:
    from federated.privacy import central_dp_epsilon

    lo, hi = 0.1, 500.0
    for _ in range(60):  # bisection: epsilon falls as the noise grows
        mid = math.sqrt(lo * hi)
        if central_dp_epsilon(mid, rounds, delta) > eps:
            lo = mid
        else:
            hi = mid
    return hi


def load_results(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path}: not valid JSON ({exc}); delete it or run with --fresh") from None


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float))
    tmp.replace(path)


def run_all(args: argparse.Namespace) -> dict:
    import torch

    from federated.data import DataError, prepare

    torch.set_num_threads(1)
    import federated.simulation  # noqa: F401  (imports Flower, which sets its logger's level)

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-round lines, hundreds of cells
    path = RESULTS / f"{args.results}.json"
    results = {} if args.fresh else load_results(path)
    results.setdefault("cells", {})
    results["settings"] = {
        "max_per_site": args.max_per_site, "rounds": args.rounds, "widths": args.widths, "seeds": args.seeds,
        "attack_clients": args.attack_clients, "clip_updates": args.clip_updates, "machine": machine_line(),
        "results": args.results, "lr": args.lr,
    }
    # Cell by cell, both seeds together: a study cut short still has mean +- sd for what it finished.
    todo = [(s, o, seed) for s, o in cells(args) for seed in args.seeds if key_of(s, o, seed) not in results["cells"]]
    log.info("%d cells to run (%d already done)", len(todo), len(results["cells"]))
    exps: dict = {}
    for section, o, seed in tqdm(todo, desc="federated study"):
        key = key_of(section, o, seed)
        if seed not in exps:
            try:
                exps[seed] = prepare(base_config(args, seed), progress=False)
            except DataError as exc:
                raise SystemExit(f"error: {args.data}: {exc}") from None
            e = exps[seed]
            results.setdefault("data", {})[str(seed)] = {k: len(v) for k, v in e.split.items()}
        cfg = base_config(args, seed)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Flower's per-round summaries
                results["cells"][key] = {"section": section, "seed": seed, "config": o, **run_cell(cfg, exps[seed], section, o, args)}
        except ValueError as exc:
            if "NaN" in str(exc):  # the model's outputs became NaN (heavy DP noise): a result, not a crash
                results["cells"][key] = {"section": section, "seed": seed, "config": o, "diverged": str(exc), "f1": None, "auroc": None}
            elif o.get("strategy") == "bulyan" or "Dirichlet partition left" in str(exc):  # refusals to report
                results["cells"][key] = {"section": section, "seed": seed, "config": o, "refused": str(exc)}
            else:
                raise
        log.info("%s: %s", key, {k: v for k, v in results["cells"][key].items() if k in ("f1", "auroc", "wall_seconds", "refused", "epsilon_spent")})
        save_json(path, results)
    return results


# ---------------------------------------------------------------------------------------------- report


def _ms(vals: list[float]) -> tuple[float, float, int]:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(mean: float, sd: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"


def group(results: dict, section: str) -> dict[str, list[dict]]:
    g: dict[str, list[dict]] = {}
    for c in results["cells"].values():
        if c["section"] != section:
            continue
        k = ",".join(f"{a}={b}" for a, b in sorted(c["config"].items()))
        g.setdefault(k, []).append(c)
    return g


def label_noniid(cfg: dict) -> tuple[str, str]:
    if cfg["mode"] != "federated":
        return cfg["mode"] + (" (mean over sites)" if cfg["mode"] == "local" else ""), "-"
    part = cfg["partition"] + (f" α={cfg['alpha']}" if "alpha" in cfg else "")
    name = cfg["strategy"] + (f" + fine-tune {cfg['personalize_epochs']} ep" if cfg.get("personalize_epochs") else "")
    return name, part


def separated(a: list[float], b: list[float]) -> bool:
    """Two methods count as separated only if their ranges over seeds do not overlap, and the gap passes
    2 sd of each (a loose rule for 2 seeds; the report says how few records decide each figure)."""
    ma, sa, na = _ms(a)
    mb, sb, nb = _ms(b)
    if na < 2 or nb < 2:
        return False
    return abs(ma - mb) > 2 * max(sa, sb) and (min(a) > max(b) or min(b) > max(a))


def report(results: dict) -> str:
    s = results["settings"]
    data = results.get("data", {})
    lines = [
        "# Federated training: privacy and robustness (issue 17)",
        "",
        f"Written by `benchmarks/federated.py` (finished cells in `{s.get('results', 'federated')}.json`). " + s["machine"] + ".",
        "",
        f"Setup: every site sampled to at most {s['max_per_site']} records (seeded), patient split 70/15/15 per seed "
        f"({'; '.join(f'seed {k}: ' + ', '.join(f'{a} {b}' for a, b in v.items()) for k, v in sorted(data.items()))}); "
        f"resnet1d18 with widths {s['widths']} (GroupNorm under DP), {s['rounds']} rounds x 1 local epoch "
        f"(central/local: {s['rounds']} epochs), batch 32, AdamW {s.get('lr', 1e-3):g}; seeds {s['seeds']}. Test figures: macro F1 at thresholds "
        "tuned on the validation records, and macro AUROC, on the pooled held-out test records (local: mean over the site "
        "models, each scored on the same test records). Federated rows ran on `federated.inprocess` (the project's "
        "ServerApp and ClientApp, no Ray).",
        "",
        "**How far these figures go.** The test split holds a few dozen records, a handful of positives per class, so one "
        "record moves macro F1 by several hundredths, and two seeds give a rough spread only. Below, two methods are called "
        "*separated* only when their seed ranges do not overlap and the gap exceeds twice the larger sd; everything else is "
        "within what this data can tell apart, and the text says so. The figures show what each mechanism does at this scale, "
        "not which method is better on the full 2,648 records.",
        "",
    ]
    # 1. non-IID
    g = group(results, "noniid")
    if g:
        lines += ["## 1. Central, local and federated training on non-IID partitions", "",
                  "| method | partition | macro F1 | macro AUROC | seconds | MB up/round |", "|---|---|---|---|---|---|"]
        rows = []
        for k, cs in g.items():
            name, part = label_noniid(cs[0]["config"])
            f1, au = _ms([c.get("f1") for c in cs]), _ms([c.get("auroc") for c in cs])
            wall = _ms([c.get("wall_seconds") for c in cs])[0]
            up = _ms([c.get("bytes_up_per_round") for c in cs])[0]
            rows.append((part, name, f1, au, wall, up, cs))
        order = {"-": 0, "site": 1, "iid": 2}
        for part, name, f1, au, wall, up, _ in sorted(rows, key=lambda r: (order.get(r[0], 3), r[0], r[1])):
            lines.append(f"| {name} | {part} | {_fmt(*f1)} | {_fmt(*au)} | {wall:.0f} | {'-' if math.isnan(up) else f'{up / 1e6:.2f}'} |")
        lines.append("")
        fed = [r for r in rows if r[0] != "-" and "fine-tune" not in r[1]]
        pairs = []
        for part in sorted({r[0] for r in fed}):
            rs = {r[1]: r for r in fed if r[0] == part}
            for a, b in (("fedprox", "fedavg"), ("fedadam", "fedavg")):
                if a in rs and b in rs:
                    sep = separated([c.get("auroc") for c in rs[a][6]], [c.get("auroc") for c in rs[b][6]])
                    pairs.append(f"{a} vs {b} on {part}: AUROC {rs[a][3][0]:.3f} vs {rs[b][3][0]:.3f} ({'separated' if sep else 'not separated by this data'})")
        if pairs:
            lines += ["Pairs: " + "; ".join(pairs) + ".", ""]
        pers = [c for cs in g.values() for c in cs if "personalized" in c]
        if pers:
            lines += ["**Per-site fine-tuning** (2 local epochs from the final FedAvg site model; each site's own test records; "
                      "macro AUROC global -> fine-tuned, per seed):", ""]
            lines += ["| site | " + " | ".join(f"seed {c['seed']}" for c in pers) + " |", "|---|" + "---|" * len(pers)]
            sites = sorted({n for c in pers for n in c["personalized"]["clients"]})
            for site in sites:
                cellsx = []
                for c in pers:
                    v = c["personalized"]["clients"].get(site, {})
                    if "global" in v:
                        a, b = v["global"]["macro_auroc"], v["personalized"]["macro_auroc"]
                        cellsx.append(f"{_f(a)} -> {_f(b)} ({v['global']['records']} rec.)")
                    else:
                        cellsx.append(v.get("skipped", "n/a"))
                lines.append(f"| {site} | " + " | ".join(cellsx) + " |")
            lines.append("")
    # 2. DP
    g = group(results, "dp")
    if g:
        lines += ["## 2. Differential privacy: utility against epsilon", "",
                  "Record-level DP-SGD (Opacus, RDP accountant; noise calibrated to reach epsilon at delta 1e-5 over the whole run) "
                  "per client (`--dp local`, federated FedAvg on sites) and on the pooled records (`--mode central --dp local`, "
                  "the privacy-utility reference); client-level server-side DP (`--dp central`: Flower's fixed-clipping wrapper, "
                  f"clipping norm {s['clip_updates']}, noise multiplier chosen so that the RDP accountant reaches epsilon after "
                  f"{s['rounds']} rounds with every client in every round). Epsilon = infinity: the same runs without DP (section 1).", "",
                  "| mechanism | epsilon (target) | epsilon spent | noise multiplier (per-client rows: one per client) | macro F1 | macro AUROC | seconds |", "|---|---|---|---|---|---|---|"]
        for k, cs in sorted(g.items(), key=lambda kv: (_mech(kv[1][0]["config"]), kv[1][0]["config"]["epsilon"])):
            c0 = cs[0]
            if all("diverged" in c for c in cs):
                lines.append(f"| {_mech(c0['config'])} | {c0['config']['epsilon']:g} | - | - | diverged (NaN outputs) in every seed | - | - |")
                continue
            spent = _ms([c.get("epsilon_spent") for c in cs])[0]
            z = _ms([c.get("noise_multiplier") for c in cs])[0]
            lines.append(
                f"| {_mech(c0['config'])} | {c0['config']['epsilon']:g} | {_f(spent)} | {_f(z)} | {_fmt(*_ms([c.get('f1') for c in cs]))} | "
                f"{_fmt(*_ms([c.get('auroc') for c in cs]))} | {_ms([c.get('wall_seconds') for c in cs])[0]:.0f} |"
                + (f" ({sum('diverged' in c for c in cs)} seed(s) diverged)" if any("diverged" in c for c in cs) else "")
            )
        lines += ["", "![F1 and AUROC against epsilon](federated_dp.png)", ""]
    # 3. attacks
    g = group(results, "attacks")
    if g:
        lines += ["## 3. Poisoned clients: macro F1 / AUROC against the number of malicious clients", "",
                  f"{s['attack_clients']} IID clients; K of them malicious (chosen with the seed); each robust strategy assumes f = K "
                  f"(the true count); update clipping at L2 norm {s['clip_updates']}. Attack scale 4 (sign-flip: -4x the update; scale: "
                  "4x; noise: 4x the update's std). Bulyan needs n >= 4f + 3 clients: with 7 clients f = 2 is refused (n/a).", ""]
        for metric in ("auroc", "f1"):
            lines += [f"**Macro {metric.upper()}** (mean ± sd over seeds)", "",
                      "| attack | K | " + " | ".join(DEFENCES) + " |", "|---|---|" + "---|" * len(DEFENCES)]
            for attack in ("none", *ATTACKS):
                for k in ((0,) if attack == "none" else (1, 2)):
                    row = []
                    for d in DEFENCES:
                        cs = _attack_cells(results, d, attack, k)
                        refused = [c for c in cs if "refused" in c]
                        div = [c for c in cs if "diverged" in c]
                        if refused and len(refused) == len(cs):
                            row.append("n/a (refused)")
                        elif div and len(div) == len(cs):
                            row.append("diverged (NaN)")
                        else:
                            row.append(_fmt(*_ms([c.get(metric) for c in cs])) + (f" ({len(div)} diverged)" if div else ""))
                    lines.append(f"| {attack} | {k} | " + " | ".join(row) + " |")
            lines.append("")
        lines += ["![F1 against malicious clients](federated_attacks.png)", ""]
        lines += _attack_notes(results)
    # 4. cost
    fed = [c for c in results["cells"].values() if "bytes_up_per_round" in c]
    if fed:
        up = _ms([c["bytes_up_per_round"] for c in fed])[0]
        per = _ms([c["train_seconds_per_round"] for c in fed])[0]
        lines += ["## 4. Cost per round", "",
                  f"Bytes a round moves (ArrayRecord payload; float32 weights of the narrow model): {up / 1e6:.2f} MB from the clients "
                  f"to the server on average over the federated rows (the same down; it grows with the number of clients: "
                  f"{len(fed)} rows). Training time of a round on this shared machine, all clients in turn on one thread: "
                  f"{per:.1f} s on average (per row in the results file). Rows with DP-SGD train slower (per-sample gradients). "
                  f"All {len(results['cells'])} cells together: {sum(c.get('wall_seconds', 0) for c in results['cells'].values()) / 60:.0f} min "
                  "of wall time (data preparation not included), on a machine shared with other jobs.", ""]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def _mech(cfg: dict) -> str:
    if cfg["mode"] == "central":
        return "DP-SGD, central training"
    return "DP-SGD per client (FedAvg)" if cfg["dp"] == "local" else "server-side DP (FedAvg)"


def _attack_cells(results: dict, defence: str, attack: str, k: int) -> list[dict]:
    out = []
    for c in results["cells"].values():
        o = c["config"]
        if c["section"] != "attacks":
            continue
        d = o["strategy"] + ("+clip" if o.get("clip_updates") else "")
        if d == defence and o.get("attack", "none") == attack and o.get("malicious", 0) == k:
            out.append(c)
    return out


def _attack_notes(results: dict) -> list[str]:
    notes = []
    for attack in ATTACKS:
        for k in (1, 2):
            cs = _attack_cells(results, "fedavg", attack, k)
            base = [c.get("auroc") for c in cs]
            clean = [c.get("auroc") for c in _attack_cells(results, "fedavg", "none", 0)]
            if cs and all("diverged" in c for c in cs):
                notes.append(f"- {attack}, K = {k}: FedAvg's model diverged (NaN outputs) in every seed.")
            elif base and clean:
                drop = _ms(clean)[0] - _ms(base)[0]
                sep = separated(clean, base)
                notes.append(f"- {attack}, K = {k}: FedAvg AUROC {_ms(clean)[0]:.3f} -> {_ms(base)[0]:.3f} "
                             f"({'a drop separated from the seed spread' if sep else 'not separated from the seed spread'}; change {-drop:+.3f}).")
    return (["Under FedAvg, against the clean run:", "", *notes, ""]) if notes else []


def plots(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = group(results, "dp")
    if g:
        clean = {}
        for c in results["cells"].values():
            o = c["config"]
            if c["section"] == "noniid" and o.get("mode") == "central" and "f1" in c:
                clean.setdefault("DP-SGD, central training", []).append(c)
            if c["section"] == "noniid" and o.get("strategy") == "fedavg" and o.get("partition") == "site" and not o.get("personalize_epochs") and "f1" in c:
                clean.setdefault("DP-SGD per client (FedAvg)", []).append(c)
                clean.setdefault("server-side DP (FedAvg)", []).append(c)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("f1", "auroc")):
            mechs: dict[str, list[tuple[float, list[dict]]]] = {}
            for cs in g.values():
                mechs.setdefault(_mech(cs[0]["config"]), []).append((cs[0]["config"]["epsilon"], cs))
            for i, (mech, pts) in enumerate(sorted(mechs.items())):
                pts.sort()
                xs = [p[0] for p in pts] + ([30.0] if mech in clean else [])
                stats = [_ms([c.get(metric) for c in cs]) for _, cs in pts] + ([_ms([c.get(metric) for c in clean[mech]])] if mech in clean else [])
                ax.errorbar(np.array(xs) * (1 + 0.04 * i), [m for m, _, _ in stats], yerr=[sd for _, sd, _ in stats], marker="o", capsize=3, label=mech)
            ax.set_xscale("log")
            ax.set_xticks([1, 3, 8, 30])
            ax.set_xticklabels(["1", "3", "8", "∞ (no DP)"])
            ax.set_xlabel("epsilon (delta 1e-5)")
            ax.set_ylabel(f"test macro {metric.upper()}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("Privacy-utility: mean ± sd over seeds")
        fig.tight_layout()
        _savefig(fig, RESULTS / "federated_dp.png")
        plt.close(fig)
    if group(results, "attacks"):
        fig, axes = plt.subplots(2, len(ATTACKS), figsize=(4 * len(ATTACKS), 7), sharey="row")
        for row, metric in enumerate(("f1", "auroc")):
            for ax, attack in zip(axes[row], ATTACKS):
                for d in DEFENCES:
                    xs, ms, sds = [], [], []
                    for k in (0, 1, 2):
                        cs = [c for c in _attack_cells(results, d, "none" if k == 0 else attack, k) if "refused" not in c]
                        m, sd, n = _ms([c.get(metric) for c in cs])
                        if n:
                            xs.append(k)
                            ms.append(m)
                            sds.append(sd)
                    if xs:
                        ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=2, label=d)
                ax.set_title(attack)
                ax.set_xticks([0, 1, 2])
                ax.set_xlabel("malicious clients")
                ax.set_ylabel(f"test macro {metric.upper()}")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        _savefig(fig, RESULTS / "federated_attacks.png")
        plt.close(fig)
    g = group(results, "noniid")
    if g:
        fig, ax = plt.subplots(figsize=(11, 4))
        labels, f1s, aus = [], [], []
        for cs in g.values():
            name, part = label_noniid(cs[0]["config"])
            labels.append(f"{name}\n{part}" if part != "-" else name)
            f1s.append(_ms([c.get("f1") for c in cs]))
            aus.append(_ms([c.get("auroc") for c in cs]))
        order = np.argsort(labels)
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [f1s[i][0] for i in order], 0.4, yerr=[f1s[i][1] for i in order], label="macro F1", capsize=2)
        ax.bar(x + 0.2, [aus[i][0] for i in order], 0.4, yerr=[aus[i][1] for i in order], label="macro AUROC", capsize=2)
        ax.set_xticks(x)
        ax.set_xticklabels([labels[i] for i in order], rotation=60, ha="right", fontsize=7)
        ax.legend()
        ax.set_title("Central, local and federated on non-IID partitions (mean ± sd over seeds)")
        fig.tight_layout()
        _savefig(fig, RESULTS / "federated_noniid.png")
        plt.close(fig)


def _savefig(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def write_report(results: dict) -> Path:
    """federated.md, keeping the deploy section (benchmarks/deploy.py) between its markers as it is."""
    path = RESULTS / "federated.md"
    text = report(results)
    if group(results, "noniid"):
        text = text.replace("## 2.", "![Central, local and federated](federated_noniid.png)\n\n## 2.", 1) if "## 2." in text else text + "\n![Central, local and federated](federated_noniid.png)\n"
    if path.exists():
        old = path.read_text()
        a, b = old.find(DEPLOY_START), old.find(DEPLOY_END)
        if a >= 0 and b > a:
            text = text.rstrip("\n") + "\n\n" + old[a:b + len(DEPLOY_END)] + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from cpsc2018.util import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(default_data_dir()))
    p.add_argument("--cache-dir", default="")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-per-site", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--widths", type=int, nargs=4, default=[16, 32, 32, 64])
    # 3e-3: on 100 records per site, 5 epochs of central training reached test AUROC 0.73 at 3e-3 and
    # 0.61 at 1e-3 (widths 16-64; 0.52 with widths 8-32 at 1e-3), a model the attacks can damage.
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--attack-clients", type=int, default=7)
    p.add_argument("--clip-updates", type=float, default=0.2, help="update clipping norm (FedAvg+clip rows and --dp central)")
    p.add_argument("--sections", nargs="+", default=["noniid", "dp", "attacks"], choices=["noniid", "dp", "attacks"])
    p.add_argument("--fresh", action="store_true", help="ignore finished cells in the results file")
    p.add_argument("--results", default="federated", help="results file stem under benchmarks/results (one per setting)")
    p.add_argument("--report-only", action="store_true", help="rewrite federated.md and the plots from federated.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-round lines, hundreds of cells
    logging.getLogger("federated").setLevel(logging.WARNING)  # the study's own line per cell is enough
    if args.report_only:
        results = load_results(RESULTS / f"{args.results}.json")
        if not results.get("cells"):
            print(f"error: {RESULTS / (args.results + '.json')}: no finished cells to report", file=sys.stderr)
            return 2
    else:
        results = run_all(args)
    plots(results)
    print(f"wrote {write_report(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
