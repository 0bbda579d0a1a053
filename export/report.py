"""Step 4 of the export: sizes, parity, fp32 vs int8 metrics and latency, as JSON and Markdown."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.cpu import cpu_class, cpu_features
from export.metadata import FEATURES_INPUT_NAME, INPUT_NAME
from export.runtime import make_session

GATE_MACHINE_NOTE = (
    "the export gate runs on whatever machine exports: its int8 figures (agreement, AUROC) come from this CPU's "
    "onnxruntime kernels; on an x86 CPU without VNNI the u8 x s8 kernels can saturate (7-bit weights, reduce_range, avoid it)"
)


def _median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def latency(
    fp32: Path, int8: Path, wrapped: nn.Module, window: np.ndarray, repeats: int = 50, features: np.ndarray | None = None
) -> dict[str, float]:
    """Batch 1, median of ``repeats`` after warm-up: ORT fp32, ORT int8, torch eager; 1 thread and all.
    Hybrid models also get their (precomputed) hand features; computing them is not timed here."""
    x = np.ascontiguousarray(window[None], dtype=np.float32)
    feed = {INPUT_NAME: x}
    torch_in = [torch.from_numpy(x)]
    if features is not None:
        feed[FEATURES_INPUT_NAME] = np.ascontiguousarray(features[:1], dtype=np.float32)
        torch_in.append(torch.from_numpy(feed[FEATURES_INPUT_NAME]))
    out: dict[str, float] = {}
    all_threads = os.cpu_count() or 1
    for threads, tag in ((1, "1 thread"), (all_threads, f"{all_threads} threads")):
        for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
            sess = make_session(str(path), threads)
            out[f"{name} {tag}"] = _median_ms(lambda: sess.run(None, feed), repeats)
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            out[f"torch {tag}"] = _median_ms(lambda: wrapped(*torch_in), repeats)
        torch.set_num_threads(prev)
    return out


def machine(features: dict | None = None) -> dict:
    """The machine of the export: CPU model, its class and int8 features (``export/cpu.py``), software."""
    info = cpu_features() if features is None else features
    return {
        "cpu": info["model"], "cpu_class": cpu_class(info), "cpu_features": info, "cores": str(os.cpu_count()),
        "python": platform.python_version(), "onnxruntime": ort.__version__, "torch": torch.__version__,
    }


def markdown(r: dict) -> str:
    """The report: the gate's figures on validation records beside the same figures on test records."""
    g = r["gate"]
    lat = r["latency_ms"]
    m = r["machine"]
    lat_cpu = (r.get("latency_cpu") or {}).get("cpu_class") or m.get("cpu_class") or m["cpu"]
    gate_cpu = (r.get("gate_machine") or {}).get("cpu_class") or lat_cpu
    q = r["quantization"]
    lines = [
        f"# Export report: {r['model_name']}",
        "",
        f"Machine: {m['cpu']} ({m.get('cpu_class', 'int8 features not recorded')}), {m['cores']} cores; onnxruntime {r['machine']['onnxruntime']}, torch {r['machine']['torch']}",
        "",
        f"- fp32 `model.onnx`: {r['sizes_mb']['fp32']:.3f} MB; int8 `model.int8.onnx`: {r['sizes_mb']['int8']:.3f} MB",
        f"- parity torch vs ONNX fp32 on {r['parity']['windows']} real windows: max |diff| {r['parity']['max_abs_diff']:.2e}",
        f"- quantization: {q['note']} (attempt {q['attempt']} of {q['attempts_available']}); "
        f"weights {'7 bits (reduce_range)' if q.get('reduce_range') else '8 bits'}, activations {q.get('activations', 'uint8')}",
        f"- gate ran on: {gate_cpu} ({GATE_MACHINE_NOTE})",
        f"- {r['records_note']}",
        "",
        f"| int8 vs fp32 | validation (gate), {r['validation_records']} records | test (reported only), {r['test_records']} records |",
        "|---|---|---|",
    ]
    t = r.get("test") or {}

    def pair(key: str, fmt: str, scale: float = 1.0) -> str:
        v, w = g.get(key), t.get(key)
        return f"{'n/a' if v is None else format(v * scale, fmt)} | {'n/a' if w is None else format(w * scale, fmt)}"

    lines += [
        f"| macro AUROC fp32 | {pair('auroc_fp32', '.4f')} |",
        f"| macro AUROC int8 | {pair('auroc_int8', '.4f')} |",
        f"| macro AUROC drop | {pair('auroc_drop', '+.4f')} |",
        f"| macro F1 fp32 | {pair('f1_fp32', '.4f')} |",
        f"| macro F1 int8 | {pair('f1_int8', '.4f')} |",
        f"| macro F1 drop | {pair('f1_drop', '+.4f')} |",
        f"| decision agreement (%) | {pair('agreement', '.2f', 100.0)} |",
        "",
        f"Gate (validation records, on {gate_cpu}): {'passed' if g['passed'] else 'FAILED: ' + '; '.join(g['reasons'])}",
        "",
        "| latency, batch 1, median (ms) | value | CPU |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {lat_cpu} |" for k, v in lat.items()]
    s = r["speedups"]
    lines += [
        "",
        f"Speed-up at 1 thread on {lat_cpu}: int8 vs ORT fp32 {s['int8_vs_ort_fp32']:.2f}x, int8 vs torch eager {s['int8_vs_torch']:.2f}x "
        "(int8 gains about half as much on x86 CPUs without VNNI: PLATFORM.md)",
        "",
    ]
    if r.get("attempts"):
        lines += ["Quantization attempts:", ""]
        lines += [f"- {a['note']}: {'passed' if a['passed'] else 'failed (' + '; '.join(a['reasons']) + ')'}" for a in r["attempts"]]
    return "\n".join(lines) + "\n"


def export_report(
    *, ckpt, checkpoint: Path, fp32: Path, int8: Path, parity_diff: float, parity_windows: int, recipe, attempt: int,
    attempts_available: int, attempts: list, gate, cpu: dict, records_note: str, validation_records: int,
    test_records: int, test: dict, lat: dict, extra: dict | None = None,
) -> dict:
    """The export report (report.json), the same for the 12-lead and the beat exports."""
    cls = cpu_class(cpu)
    return {
        **(extra or {}),
        "model_name": ckpt.model_name,
        "checkpoint": str(checkpoint),
        "sizes_mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6},
        "parity": {"max_abs_diff": parity_diff, "windows": parity_windows},
        "quantization": {**recipe.to_dict(), "note": recipe.note, "attempt": attempt, "attempts_available": attempts_available},
        "attempts": attempts,
        "gate": gate.to_dict(),
        "decided_on": "validation",
        # The gate's figures come from this machine's onnxruntime int8 kernels (see GATE_MACHINE_NOTE).
        "gate_machine": {"cpu_class": cls, "cpu_features": cpu, "note": GATE_MACHINE_NOTE},
        "records_note": records_note,
        "validation_records": validation_records,
        "test_records": test_records,
        "test": {k: (None if isinstance(v, float) and v != v else v) for k, v in test.items()},
        "latency_ms": lat,
        # The CPU of every figure in latency_ms and speedups (int8 speed-ups differ about twofold
        # between CPUs with and without VNNI: PLATFORM.md).
        "latency_cpu": {"cpu_class": cls, "cpu_features": cpu},
        "speedups": {
            "int8_vs_ort_fp32": lat["ort_fp32 1 thread"] / lat["ort_int8 1 thread"],
            "int8_vs_torch": lat["torch 1 thread"] / lat["ort_int8 1 thread"],
            "cpu_class": cls,
        },
        "machine": machine(cpu),
    }


def publish(tmp: Path, out: Path, report: dict, names: tuple[str, ...], unit: str = "records") -> None:
    """Write report.json and report.md into ``tmp``, then move every output into ``out`` (a rename
    each: a killed export leaves the previous files, never half of a new set)."""
    import json

    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (tmp / "report.md").write_text(md if unit == "records" else md.replace(" records |", f" {unit} |"))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(tmp / name, out / name)
