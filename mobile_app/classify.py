"""``python -m mobile_app.classify --record FILE [--model FILE]``: the app's inference, without a screen."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobile_app.inference import DEFAULT_MODEL, Classifier, ClassifyError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mobile_app.classify", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--record", type=Path, required=True, help=".hea (WFDB) or original CPSC2018 .mat")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        r = Classifier(args.model).classify(args.record)
    except ClassifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r.to_json()))
        return 0
    print(f"{r.record} ({r.site}, {r.duration_s:.1f} s at {r.fs:g} Hz) with {r.model}, {r.inference_ms:.1f} ms")
    for name, prob, thr in zip(r.labels, r.probabilities, r.thresholds):
        mark = "POSITIVE" if prob >= thr else ""
        print(f"  {name:<6} {prob:6.3f}  (threshold {thr:.3f}) {mark}")
    print("Research tool, not a diagnosis.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
