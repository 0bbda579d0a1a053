"""Per model: parameters, MFLOPs per 10 s record, fp32 size, CPU latency (1 thread / all), training peak memory.

    python benchmarks/models.py [--samples 2500] [--repeats 30] [--attempts 5] [--out benchmarks/results/models.md]

FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``) over one forward
pass of one record; it counts a multiply-add as 2 FLOPs and counts matrix products and convolutions
(the GRU's included), not elementwise work (norms, activations, pooling). Size: bytes of the
``torch.save``d fp32 state_dict. Latency: torch eager, eval mode, batch 1, median of ``--repeats``
runs after warm-up, at 1 thread and at all cores (``torch.set_num_threads``); taken again, up to
``--attempts`` times, while other processes keep the CPU busy (see :func:`latency_ms`). Training peak: each
model in a fresh subprocess; the peak resident set size (Linux ``VmHWM``, reset after set-up through
``/proc/self/clear_refs``) over one forward+backward+AdamW step at batch 32, minus the resident size
just before the step, i.e. the activations, gradients and optimizer state the step adds. Where the
peak mark cannot be reset, ``resource.getrusage`` max RSS before/after is used and the table says so.
Accuracy is not measured here: it comes from ``benchmarks/compare_models.py``. Writes the table
atomically to ``--out``.
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

HYBRID_FEATURES = 13  # the shipped hybrid: resnet1d18 + cpsc2018.features.FEATURE_NAMES (13 values)
WARMUP = 5
QUIET_CORES = 0.1  # other processes' load under which a latency figure is accepted at once
PAUSE_S = 15.0  # wait between attempts when the machine was busy
LOAD_WINDOW_S = 1.0  # shortest window over which the other processes' load is measured


def variants() -> list[tuple[str, str, dict]]:
    """(row label, registry name, kwargs): every registered model at its defaults, plus the hybrid."""
    rows = [(name, name, {}) for name in list_models()]
    rows.append((f"resnet1d18 + {HYBRID_FEATURES} features", "resnet1d18", {"num_features": HYBRID_FEATURES}))
    return rows


def example_inputs(model: torch.nn.Module, batch: int, samples: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, model.in_leads, samples)
    return (x, torch.randn(batch, model.num_features)) if model.num_features else (x,)


def _busy_cpu_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _timed_runs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, float]:
    """Median ms over ``repeats`` runs, and the cores other processes kept busy meanwhile. Untimed runs
    stretch the window to ``LOAD_WINDOW_S``: ``/proc/stat`` counts in 10 ms ticks."""
    busy, own, wall = _busy_cpu_s(), time.process_time(), time.perf_counter()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - t) * 1e3)
    while time.perf_counter() - wall < LOAD_WINDOW_S:
        model(*inputs)
    other = (_busy_cpu_s() - busy) - (time.process_time() - own)
    return statistics.median(times), max(other, 0.0) / (time.perf_counter() - wall)


def latency_ms(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, repeats: int, attempts: int
) -> tuple[float, float]:
    """Median latency at ``threads`` threads, and the other processes' load (cores) while it was taken.

    On a shared machine, another job on a core makes torch's spinning threads wait on each other (a
    2-thread run of resnet1d18 went from 1.5 ms to 680 ms): the measurement is repeated, after a pause, until others
    use under ``QUIET_CORES``, at most ``attempts`` times; the quietest attempt is kept and reported.
    """
    torch.set_num_threads(threads)
    best = (float("inf"), float("inf"))
    with torch.inference_mode():
        for attempt in range(attempts):
            if attempt:
                time.sleep(PAUSE_S)
            for _ in range(WARMUP):
                model(*inputs)
            ms, other = _timed_runs(model, inputs, repeats)
            if other < best[1]:
                best = (ms, other)
            if other < QUIET_CORES:
                break
    return best


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def train_step_peak(name: str, kwargs: dict, samples: int) -> dict:
    """Child side: one training step at batch 32; returns the peak RSS growth in MB and the method."""
    import resource

    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    inputs = example_inputs(model, 32, samples)
    target = torch.randint(0, 2, (32, 6)).float()
    try:  # reset the peak-RSS mark so that imports and set-up do not count
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method, before = "VmHWM", _status_kb("VmRSS:")
    except OSError:
        method, before = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(*inputs), target)
    loss.backward()
    opt.step()
    after = _status_kb("VmHWM:") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"train_mb": (after - before) / 1024, "method": method}


def train_peak(name: str, kwargs: dict, samples: int) -> dict:
    """Parent side: run :func:`train_step_peak` in a fresh interpreter (RSS peaks are per process)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--samples", str(samples),
           "--child-train-peak", json.dumps({"name": name, "kwargs": kwargs})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(label: str, name: str, kwargs: dict, samples: int, repeats: int, attempts: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    inputs = example_inputs(model, 1, samples)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(*inputs)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    lat1, other1 = latency_ms(model, inputs, 1, repeats, attempts)
    latn, othern = latency_ms(model, inputs, os.cpu_count() or 1, repeats, attempts)
    return {
        "model": label,
        "params": sum(p.numel() for p in model.parameters()),
        "mflops": counter.get_total_flops() / 1e6,
        "size_mb": len(buf.getvalue()) / 1e6,
        "lat1": lat1,
        "latn": latn,
        "other_load": max(other1, othern),
        **train_peak(name, kwargs, samples),
    }


def render(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    n = os.cpu_count() or 1
    methods = {r["method"] for r in rows}
    peak_note = (
        "peak RSS (`VmHWM`, reset after set-up) minus RSS just before the step"
        if methods == {"VmHWM"}
        else "`ru_maxrss` after minus before the step (the peak mark could not be reset: imports may hide part of it)"
    )
    lines = [
        "# Model zoo benchmark",
        "",
        machine_line(),
        f"Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} on {n} cores.",
        "",
        f"Input: one record of {args.samples} samples x 12 leads (10 s at 250 Hz), all models at their default",
        "arguments. MFLOPs: torch's `FlopCounterMode`, one forward pass, **a multiply-add counts as 2 FLOPs**;",
        "convolutions and matrix products only. fp32 size: bytes of the saved state_dict. Latency: torch",
        f"eager, eval mode, batch 1, median of {args.repeats} runs after {WARMUP} warm-up runs, at 1 thread and at",
        f"{n} threads. Other load: CPU the machine's other processes used while latency was timed (from",
        f"`/proc/stat`, worst of the two columns); a figure is retaken, up to {args.attempts} times, until that is",
        f"under {QUIET_CORES} cores.",
        "Training peak: one forward+backward+AdamW step at batch 32 in a fresh process per model,",
        f"{peak_note}.",
        "Accuracy is not measured here: see `benchmarks/results/compare_models.md` (`benchmarks/compare_models.py`).",
        "",
        f"| model | params | MFLOPs / 10 s | fp32 size (MB) | latency 1 thread (ms) | latency {n} threads (ms) "
        "| other load during latency (cores) | training peak, batch 32 (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['params'] / 1e6:.3f} M | {r['mflops']:.1f} | {r['size_mb']:.2f} | {r['lat1']:.2f} "
            f"| {r['latn']:.2f} | {r['other_load']:.2f} | {r['train_mb']:.0f} |"
        )
    command = (
        f"python benchmarks/models.py --samples {args.samples} --repeats {args.repeats} --attempts {args.attempts}"
    )
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--samples", type=int, default=2500, help="input length: 10 s at 250 Hz")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per latency figure (median reported)")
    p.add_argument("--attempts", type=int, default=5, help="latency retakes while other processes load the CPU")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "models.md", help="markdown table")
    p.add_argument("--child-train-peak", default=None, help=argparse.SUPPRESS)  # internal: the per-model subprocess
    args = p.parse_args(argv)
    if min(args.samples, args.repeats, args.attempts) < 1:
        p.error(f"--samples, --repeats and --attempts must be >= 1, got {args.samples} {args.repeats} {args.attempts}")
    if args.child_train_peak:
        spec = json.loads(args.child_train_peak)
        print(json.dumps(train_step_peak(spec["name"], spec["kwargs"], args.samples)))
        return 0
    load_start = os.getloadavg()[0]
    rows = []
    for label, name, kwargs in variants():
        r = measure(label, name, kwargs, args.samples, args.repeats, args.attempts)
        print(json.dumps(r), flush=True)
        rows.append(r)
    text = render(rows, args, (load_start, os.getloadavg()[0]))
    atomic_write_text(args.out, text)  # temp file beside it + os.replace
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
