"""``python -m mobile_app [--model FILE] [--record FILE] [--screenshot FILE] [--result-json FILE]``

Opens the phone-shaped Kivy window. ``--screenshot`` renders the screen after inference, saves a PNG
and quits (for docs and tests). Arguments are parsed before Kivy is imported, so ``--help`` works
without a screen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mobile_app.inference import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="python -m mobile_app", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="int8 ONNX model (labels, thresholds, preprocessing in its metadata)")
    p.add_argument("--record", type=Path, default=None, help="open this recording at start")
    p.add_argument("--screenshot", type=Path, default=None, help="save the screen as PNG after inference and quit")
    p.add_argument("--result-json", type=Path, default=None, help="with --screenshot: also write what the screen shows as JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # Kivy must not parse our arguments
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    from mobile_app.app import run

    run(args.model, args.record, args.screenshot, args.result_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
