"""Simulation vs Flower's deployment engine, with and without SecAgg+, float16 updates.

    python benchmarks/deploy.py --data ../shared/data --rounds 5 --per-site 60

Three "hospitals" made of links to three sources of the data folder (CPSC2018, the CinC 2021 sample,
the original CPSC2018 files), the same partition and seed for every configuration; each runs through
``python -m federated.deploy`` (real SuperLink and SuperNode processes on 127.0.0.1, or the simulation
engine). Writes the section "Simulation vs deployment engine" of ``benchmarks/results/federated.md``
(other sections of that file are kept) and ``benchmarks/results/deploy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line  # noqa: E402
from cpsc2018.util import atomic_write_text, default_data_dir  # noqa: E402
from federated import deploy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SITES = (("cpsc2018", "cpsc2018"), ("cinc2021", "cinc2021"), ("cpsc2018_original", "cpsc2018_original"))
CONFIGS = (
    ("simulation", "simulation", []),
    ("deployment", "deployment", []),
    ("deployment, float16 updates", "deployment", ["--update-dtype", "float16"]),
    ("simulation, SecAgg+", "simulation", ["--secagg"]),
    ("deployment, SecAgg+", "deployment", ["--secagg"]),
)
START, END = "<!-- deploy:start -->", "<!-- deploy:end -->"


def make_sites(data: Path, root: Path) -> list[Path]:
    out = []
    for name, source in SITES:
        if not (data / source).is_dir():
            raise SystemExit(f"error: {data / source} not found (the benchmark needs {', '.join(s for _, s in SITES)})")
        (root / name).mkdir(parents=True, exist_ok=True)
        link = root / name / source
        if not link.exists():
            link.symlink_to(data / source, target_is_directory=True)
        out.append(root / name)
    return out


def run_one(sites: list[Path], engine: str, extra: list[str], out: Path, args) -> dict:
    argv = [
        "--sites", *map(str, sites), "--engine", engine, "--rounds", str(args.rounds), "--out", str(out),
        "--max-per-site", str(args.per_site), "--seed", str(args.seed), "--workers", "0", "--min-nodes", "3", *extra,
    ]
    if args.model_kwargs:
        argv += ["--model-kwargs", args.model_kwargs]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    t0 = time.time()
    if deploy.main(argv) != 0:
        raise SystemExit(f"error: the {engine} run {extra} failed; see {out}")
    m = json.loads((out / "metrics.json").read_text())
    m["wall_total"] = time.time() - t0
    return m


def fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def section(rows: list[tuple[str, dict]], args) -> str:
    lines = [
        START,
        "## Simulation vs deployment engine",
        "",
        f"`python benchmarks/deploy.py --rounds {args.rounds} --per-site {args.per_site} --seed {args.seed}`"
        + (f" `--model-kwargs '{args.model_kwargs}'`" if args.model_kwargs else " (resnet1d18, default width)"),
        "",
        f"{machine_line()}. Three nodes (CPSC2018, the CinC 2021 sample, the original CPSC2018 files; at most "
        f"{args.per_site} records each, split by patient on each node), FedAvg, {args.rounds} rounds, 1 local epoch, "
        "the same seed. Figures are pooled over the nodes' held-out records (from the nodes' score histograms) "
        "at the round with the best pooled validation AUROC. The deployment engine runs a real SuperLink and one "
        "SuperNode per site as processes on 127.0.0.1 (insecure loopback); its wall time includes starting "
        "them and one `flwr-clientapp` process per message. Load average when it ended: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (times are upper bounds when the machine is shared).",
        "",
        "| configuration | held-out macro F1 | held-out macro AUROC | best round | MB sent by nodes per round | MB sent to nodes per round | s per round | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        r = m["rounds"]
        up = sum(x["bytes_up"] for x in r) / max(len(r), 1) / 1e6
        down = sum(x["bytes_down"] for x in r) / max(len(r), 1) / 1e6
        sec = sum(x["seconds"] for x in r) / max(len(r), 1)
        lines.append(
            f"| {name} | {fmt(m['test']['macro']['f1'])} | {fmt(m['test']['macro']['auroc'])} | {m['best_round']} | "
            f"{up:.2f} | {down:.2f} | {sec:.1f} | {m['wall_total']:.0f} |"
        )
    lines += [
        "",
        "Bytes are the payload of the training messages (weights; with SecAgg+ also the keys, key shares and "
        "masked vectors of its four stages). Held-out records: " + ", ".join(
            f"{name}: {m['test']['records']}" for name, m in rows[:1]
        ) + ". With this few held-out positives per class, differences in F1 below about 0.05 are noise.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-site", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", default="")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary folder)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="ecg-deploy-bench-"))
    sites = make_sites(args.data, work / "sites")
    rows = []
    for name, engine, extra in CONFIGS:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        print(f"== {name}", flush=True)
        rows.append((name, run_one(sites, engine, extra, work / slug, args)))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "deploy.json", json.dumps({n: {k: m[k] for k in ("test", "rounds", "bytes", "best_round", "wall_total")} for n, m in rows}, indent=1, default=str))
    target = RESULTS / "federated.md"
    text = target.read_text() if target.exists() else "# Federated training\n\n"
    new = section(rows, args)
    if START in text and END in text:
        text = text[: text.index(START)] + new + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    atomic_write_text(target, text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
