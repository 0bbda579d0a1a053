"""Export every registered model (trained on the same split) and tabulate size, latency and accuracy.

    python benchmarks/export.py [--runs-dir runs/compare] [--seed 0] [--epochs 20]

Uses ``<runs-dir>/<model>/seed<seed>/best.pt`` (what ``benchmarks/compare_models.py`` trains) and trains
a missing one with the training command. Writes ``benchmarks/results/export.md`` and checks the targets
for ``resnet1d18``: int8 file < 1.5 MB, ORT int8 >= 2x ORT fp32 and >= 4x torch eager at 1 thread,
macro F1 drop <= 0.01.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_line  # noqa: E402
from cpsc2018.util import atomic_write_text, default_data_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export.md")
    args = p.parse_args(argv)
    from resnet1d import create_model, list_models

    rows = []
    for name in args.models or list_models():
        run = args.runs_dir / name / f"seed{args.seed}"
        if not (run / "best.pt").exists():
            cmd = [sys.executable, "-m", "federated.train", "--mode", "central", "--model", name, "--epochs", str(args.epochs),
                   "--seed", str(args.seed), "--data", str(args.data), "--out", str(run)]
            print("$", " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=REPO).returncode != 0:
                rows.append((name, None, "training failed"))
                continue
        out = run / "export"
        cmd = [sys.executable, "-m", "export", "--checkpoint", str(run / "best.pt"), "--calibration-data", str(args.data), "--out", str(out)]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append((name, None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "export failed"))
            continue
        rows.append((name, json.loads((out / "report.json").read_text()), ""))
    lines = [
        "# Export benchmark: fp32 vs int8 ONNX per model",
        "",
        machine_line(),
        "",
        f"Each model trained centrally on `{args.data}` (seed {args.seed}, same patient split), exported with",
        "`python -m export` (static QDQ int8, calibrated on training records, gated on the held-out split).",
        "Latency: batch 1, one 10 s record, median of 50 runs after warm-up, 1 thread. F1/AUROC: held-out",
        "test split (a few positives per class: one record moves F1 by more than 0.01).",
        "",
        "| model | params | fp32 MB | int8 MB | ORT fp32 ms | ORT int8 ms | torch ms | int8 vs fp32 | int8 vs torch | F1 fp32 | F1 int8 | AUROC fp32 | AUROC int8 | agreement | int8 recipe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, err in rows:
        params = sum(t.numel() for t in create_model(name).parameters())
        if r is None:
            lines.append(f"| `{name}` | {params / 1e6:.2f} M | failed: {err} |" + " |" * 13)
            continue
        lat, g = r["latency_ms"], r["gate"]
        lines.append(
            f"| `{name}` | {params / 1e6:.2f} M | {r['sizes_mb']['fp32']:.2f} | {r['sizes_mb']['int8']:.2f} | "
            f"{lat['ort_fp32 1 thread']:.2f} | {lat['ort_int8 1 thread']:.2f} | {lat['torch 1 thread']:.2f} | "
            f"{r['speedups']['int8_vs_ort_fp32']:.1f}x | {r['speedups']['int8_vs_torch']:.1f}x | {g['f1_fp32']:.3f} | {g['f1_int8']:.3f} | "
            f"{g['auroc_fp32']:.3f} | {g['auroc_int8']:.3f} | {g['agreement'] * 100:.1f} % | {r['quantization']['note']} |"
        )
    target = next((r for n, r, _ in rows if n == "resnet1d18" and r), None)
    if target:
        checks = {
            "int8 file < 1.5 MB": target["sizes_mb"]["int8"] < 1.5,
            "ORT int8 >= 2x ORT fp32 (1 thread)": target["speedups"]["int8_vs_ort_fp32"] >= 2,
            "ORT int8 >= 4x torch eager (1 thread)": target["speedups"]["int8_vs_torch"] >= 4,
            "macro F1 drop <= 0.01": target["gate"]["f1_drop"] <= 0.01,
        }
        lines += ["", "Targets for `resnet1d18`:", ""] + [f"- {k}: {'met' if v else 'NOT met'}" for k, v in checks.items()]
    lines += ["", f"Command: `python benchmarks/export.py --runs-dir {args.runs_dir} --seed {args.seed}`", ""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
