"""``python -m mobile_app.classify --record FILE [--model FILE]``: the app's inference, without a screen.

A fused pipeline (network metadata with ``pipeline``, see :mod:`mobile_app.inference`) prints which
parts ran, the network's and the feature model's probabilities beside the fused one, and the pipeline's
thresholds; a missing or mismatched feature model is an error naming the file (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobile_app.inference import DEFAULT_MODEL, Classifier, ClassifyError


def held_out_record(clf: Classifier, data: Path) -> Path:
    """A record the model never trained on: the first of its recorded test split present under ``data``."""
    from cpsc2018.catalog import scan

    wanted = set(clf.meta.split.get("test_ids", []))
    try:
        # The records as the model read them in training (its recorded PTB-XL rate).
        entries = scan(data, ptbxl_rate=int(clf.meta.data_options["ptbxl_rate"]), progress=False).entries
    except FileNotFoundError as exc:
        raise ClassifyError(str(exc)) from None
    for e in entries:
        if e.key in wanted and e.source_format in ("wfdb", "cpsc_mat"):
            return Path(e.path)
    raise ClassifyError(f"none of the model's held-out records is a WFDB or CPSC file under {data}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mobile_app.classify", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--record", type=Path, help=".hea (WFDB) or original CPSC2018 .mat")
    src.add_argument("--held-out", type=Path, metavar="DATA_DIR", help="classify the first of the model's held-out test records found under DATA_DIR")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        clf = Classifier(args.model)
        record = args.record or held_out_record(clf, args.held_out)
        r = clf.classify(record)
    except ClassifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r.to_json()))
        return 0
    print(f"{r.record} ({r.site}, {r.duration_s:.1f} s at {r.fs:g} Hz) with {r.model}, {r.inference_ms:.1f} ms")
    if r.feature_probabilities is None:
        for name, prob, thr in zip(r.labels, r.probabilities, r.thresholds):
            mark = "POSITIVE" if prob >= thr else ""
            print(f"  {name:<6} {prob:6.3f}  (threshold {thr:.3f}) {mark}")
    else:
        w = r.network_weight if r.network_weight is not None else float("nan")
        print(f"Parts run: {' + '.join(r.parts)} (fused = {w:g} x network + {1 - w:g} x features)")
        print(f"  {'label':<6} {'fused':>6}  {'network':>7}  {'features':>8}")
        for name, prob, pn, pf, thr in zip(r.labels, r.probabilities, r.network_probabilities, r.feature_probabilities, r.thresholds):
            mark = "POSITIVE" if prob >= thr else ""
            print(f"  {name:<6} {prob:6.3f}  {pn:7.3f}  {pf:8.3f}  (threshold {thr:.3f}) {mark}")
    print(f"Labels in the file: {', '.join(r.reference) or 'none of the six'}. Research tool, not a diagnosis.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
