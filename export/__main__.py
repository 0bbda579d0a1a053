"""``python -m export --checkpoint runs/X/best.pt --calibration-data DIR --out DIR``

Writes ``model.onnx`` (fp32, parity-checked), ``model.int8.onnx`` (static QDQ int8, calibrated on the
checkpoint's training records, gated against fp32 on its validation records, with the same figures on
its test records reported beside and never used to choose), ``report.json`` and
``report.md``. Every latency figure is written beside the CPU it was measured on (model, VNNI/AMX/AVX2,
ARM dotprod/i8mm: ``export/cpu.py``), and so is the gate: the export gate runs on whatever machine
exports, with that CPU's onnxruntime int8 kernels; the app runs the file on other CPUs. Weights are
quantized to 7 bits by default (``--reduce-range``; ``--no-reduce-range`` for 8 bits): u8 x s8 kernels
can saturate on x86 CPUs without VNNI, where the gate never ran (``export/quantize.py``).
Everything is built in a temporary folder and moved into ``--out`` only when the whole
export succeeded: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from cpsc2018.util import default_data_dir
from export.gate import compare, gather, judge, record_probs
from export.metadata import ModelMeta
from export.onnx_export import ExportError, export_fp32, meta_from_checkpoint, parity, write_metadata
from export.cpu import cpu_class, cpu_features
from export.quantize import DEFAULT_REDUCE_RANGE, METHODS, WindowReader, quantize, recipes
from export.report import export_report, latency, markdown, publish
from export.runtime import OnnxPredictor
from federated.checkpoint import CheckpointError, load_checkpoint

OUTPUTS = ("model.onnx", "model.int8.onnx", "report.json", "report.md")


def run_export(
    checkpoint: Path, data: Path, out: Path, *, opset: int = 17, method: str = "minmax", max_f1_drop: float | None = None,
    min_agreement: float = 0.97, max_auroc_drop: float = 0.01, calibration_records: int = 100, repeats: int = 50,
    reduce_range: bool = DEFAULT_REDUCE_RANGE, log=print,
) -> dict:
    ckpt = load_checkpoint(checkpoint)
    if ckpt.label_set == "aami":  # heartbeats: beat windows + RR features, softmax, gated per beat
        from federated.beats.export import run_beat_export

        return run_beat_export(
            ckpt, checkpoint, data, out, opset=opset, method=method, max_f1_drop=max_f1_drop, min_agreement=min_agreement,
            max_auroc_drop=max_auroc_drop, repeats=repeats, reduce_range=reduce_range, log=log,
        )
    # Older checkpoints: write the resolved data options into the split that the ONNX metadata copies.
    ckpt.split = {**ckpt.split, "data_options": ckpt.data_options}
    try:
        ckpt.build_model()
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        window = int(round(ckpt.preprocess["fs"] * ckpt.preprocess["window_s"]))
        fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
        log(f"[1/4] exporting {ckpt.model_name} to ONNX (opset {opset})")
        wrapped = export_fp32(ckpt, fp32, window, opset)
        data_ = gather(ckpt, data, calibration_records)
        log(f"      {data_.note}; {len(data_.calibration)} calibration windows")
        probe = data_.calibration[: min(64, len(data_.calibration))]
        diff = parity(wrapped, fp32, probe)
        log(f"      parity torch vs ONNX on {len(probe)} real windows: max |diff| {diff:.2e}")
        # Decisions (recipe choice, pass/fail) on validation records; test figures only reported.
        p32 = record_probs(OnnxPredictor(str(fp32)), data_.validation)
        y = data_.validation.targets
        features = OnnxPredictor(str(fp32)).features(data_.calibration)
        attempts, chosen, gate = [], None, None
        options = recipes(fp32, method, reduce_range)
        cpu = cpu_features()
        cls = cpu_class(cpu)
        log(f"[2/4] int8 static quantization (QDQ, {'7' if reduce_range else '8'}-bit weights), up to {len(options)} recipes, "
            f"judged on {len(y)} validation records on this machine: {cls}")
        for i, recipe in enumerate(options, 1):
            quantize(fp32, int8, WindowReader(data_.calibration, features), recipe)
            p8 = record_probs(OnnxPredictor(str(int8)), data_.validation)
            g = judge(p32, p8, y, list(ckpt.labels), list(ckpt.thresholds), min_agreement, max_auroc_drop, max_f1_drop)
            attempts.append({"note": recipe.note, "passed": g.passed, "reasons": g.reasons, **g.to_dict()})
            log(f"[3/4] {recipe.note}: agreement {g.agreement:.3f}, AUROC drop {g.auroc_drop:+.4f}, F1 drop {g.f1_drop:+.4f} -> {'pass' if g.passed else 'fail'} (validation)")
            if g.passed:
                chosen, gate = (i, recipe), g
                break
        if chosen is None:
            raise ExportError(
                "no int8 model passed the accuracy gate on the validation records: "
                + " | ".join(f"{a['note']}: {'; '.join(a['reasons'])}" for a in attempts)
            )
        test_figures = {"records": 0}
        if data_.test.keys:  # the chosen int8 file is the last one written
            t32 = record_probs(OnnxPredictor(str(fp32)), data_.test)
            t8 = record_probs(OnnxPredictor(str(int8)), data_.test)
            test_figures = compare(t32, t8, data_.test.targets, list(ckpt.labels), list(ckpt.thresholds))
            log(f"      test records (reported only): agreement {test_figures['agreement']:.3f}, AUROC drop {test_figures['auroc_drop']:+.4f}, F1 drop {test_figures['f1_drop']:+.4f}")
        attempt, recipe = chosen
        write_metadata(int8, meta_from_checkpoint(ckpt, {"format": "QDQ", "weights": "int8", **recipe.to_dict(), "calibration_windows": len(data_.calibration), "gate_cpu": cls}))
        log(f"[4/4] latency on {cls}")
        lat = latency(fp32, int8, wrapped, data_.calibration[0], repeats, features)
        report = export_report(
            ckpt=ckpt, checkpoint=checkpoint, fp32=fp32, int8=int8, parity_diff=diff, parity_windows=len(probe), recipe=recipe,
            attempt=attempt, attempts_available=len(options), attempts=attempts, gate=gate, cpu=cpu, records_note=data_.note,
            validation_records=len(y), test_records=len(data_.test.keys), test=test_figures, lat=lat,
        )
        publish(tmp, out, report, OUTPUTS)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a training run")
    p.add_argument("--calibration-data", type=Path, default=default_data_dir(), help="data folder with the checkpoint's records")
    p.add_argument("--out", type=Path, required=True, help="folder for model.onnx, model.int8.onnx, report.*")
    p.add_argument("--max-f1-drop", type=float, default=None, help="also gate on the macro F1 drop (off: reported only)")
    p.add_argument("--min-agreement", type=float, default=0.97, help="int8/fp32 decision agreement required")
    p.add_argument("--max-auroc-drop", type=float, default=0.01)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--calibration-method", choices=sorted(METHODS), default="minmax")
    p.add_argument("--calibration-records", type=int, default=100, help="training records used for calibration (2 windows each)")
    p.add_argument("--repeats", type=int, default=50, help="latency repeats")
    p.add_argument(
        "--reduce-range", action=argparse.BooleanOptionalAction, default=DEFAULT_REDUCE_RANGE,
        help="7-bit weights: avoids the u8 x s8 saturation onnxruntime documents on x86 CPUs without VNNI (AVX2 only); "
        "--no-reduce-range gives 8-bit weights for CPUs known to have VNNI (export/quantize.py has the figures)",
    )
    args = p.parse_args(argv)
    try:
        report = run_export(
            args.checkpoint, args.calibration_data, args.out, opset=args.opset, method=args.calibration_method,
            max_f1_drop=args.max_f1_drop, min_agreement=args.min_agreement, max_auroc_drop=args.max_auroc_drop,
            calibration_records=args.calibration_records, repeats=args.repeats,
            reduce_range=args.reduce_range,
        )
    except (CheckpointError, ExportError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
