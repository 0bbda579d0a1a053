"""Per model: parameters, MFLOPs per 10 s record, fp32 size, CPU latency (1 thread / all), training peak memory.

    python benchmarks/models.py [--samples 2500] [--repeats 30]

FLOPs come from torch's own counter (``torch.utils.flop_counter``), which counts a multiply-add as
2 FLOPs. Latency: batch 1, eval mode, median of ``--repeats`` runs after warm-up. Peak memory: each
model in a fresh subprocess, max resident set size after one forward+backward+step at batch 32,
minus the resident size just before the step (Linux peak-RSS mark reset after set-up). Writes
``benchmarks/results/models.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import machine_line  # noqa: E402
from cpsc2018.util import atomic_write_text  # noqa: E402
from resnet1d import create_model, list_models  # noqa: E402


def latency_ms(model: torch.nn.Module, x: torch.Tensor, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def train_peak_mb(name: str, samples: int) -> float:
    """Run one training step in a fresh interpreter; report its peak RSS growth in MB."""
    code = f"""
import torch, sys
sys.path.insert(0, {str(REPO)!r})
from resnet1d import create_model

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])

m = create_model({name!r}).train()
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x, y = torch.randn(32, 12, {samples}), torch.randint(0, 2, (32, 6)).float()
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak-RSS mark (Linux) after imports and set-up
before = status('VmRSS:')
loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
loss.backward(); opt.step()
print((status('VmHWM:') - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(name: str, samples: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(1, 12, samples)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "mflops": counter.get_total_flops() / 1e6,
        "size_mb": len(buf.getvalue()) / 1e6,
        "lat1": latency_ms(model, x, 1, repeats),
        "latn": latency_ms(model, x, os.cpu_count() or 1, repeats),
        "train_mb": train_peak_mb(name, samples),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--samples", type=int, default=2500, help="input length: 10 s at 250 Hz")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "models.md")
    args = p.parse_args(argv)
    rows = []
    for name in list_models():
        r = measure(name, args.samples, args.repeats)
        print(json.dumps(r), flush=True)
        rows.append(r)
    n = os.cpu_count()
    lines = [
        "# Model zoo benchmark",
        "",
        machine_line(),
        "",
        f"Input: one record of {args.samples} samples x 12 leads (10 s at 250 Hz). FLOPs by torch's counter",
        "(a multiply-add = 2 FLOPs). Latency: torch eager, batch 1, median of "
        f"{args.repeats} runs after 5 warm-up runs. Training peak: RSS growth of a fresh process over one",
        "forward+backward+AdamW step at batch 32 (peak RSS minus RSS before the step; model, optimizer and batch already allocated). Accuracy columns: `benchmarks/results/compare_models.md`.",
        "",
        f"| model | params | MFLOPs / 10 s | fp32 size (MB) | latency 1 thread (ms) | latency {n} threads (ms) | training peak, batch 32 (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['params'] / 1e6:.3f} M | {r['mflops']:.1f} | {r['size_mb']:.2f} | {r['lat1']:.2f} | {r['latn']:.2f} | {r['train_mb']:.0f} |"
        )
    lines += ["", f"Command: `python benchmarks/models.py --samples {args.samples} --repeats {args.repeats}`", ""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
