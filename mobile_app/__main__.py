"""``python -m mobile_app [--model FILE] [--record FILE] [--leads SET] [--gain 5|10|20] [--screenshot FILE] [--result-json FILE]``

Opens the phone-shaped Kivy window. ``--screenshot`` renders the screen after inference, saves a PNG
and quits (for docs and tests). Arguments are parsed before Kivy is imported, so ``--help`` works
without a screen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


XVFB_HINT = 'xvfb-run -a -s "-screen 0 480x800x24" python -m mobile_app ...'


def missing_display() -> str | None:
    """Why no window can open here, or None. On a Linux desktop SDL needs an X11 or Wayland display;
    without one Kivy would hang or fail deep inside SDL, so say it first and name the way out."""
    if not sys.platform.startswith("linux") or "ANDROID_ARGUMENT" in os.environ:
        return None  # macOS/Windows always have a screen session; Android starts through android_main
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "no display to open the app window on (neither DISPLAY nor WAYLAND_DISPLAY is set). "
        f"On a machine without a screen run it under a virtual one: {XVFB_HINT} "
        "(Debian/Ubuntu: apt-get install xvfb); to classify without a window use python -m mobile_app.classify"
    )


def main(argv: list[str] | None = None) -> int:
    from cpsc2018.leadsets import LEADS_HELP, leads_argument
    from mobile_app.inference import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="python -m mobile_app", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="int8 ONNX model (labels, thresholds, preprocessing in its metadata)")
    p.add_argument("--record", type=Path, default=None, help="open this recording at start")
    p.add_argument("--screenshot", type=Path, default=None, help="save the screen as PNG after inference and quit")
    p.add_argument("--result-json", type=Path, default=None, help="with --screenshot: also write what the screen shows as JSON")
    p.add_argument("--gain", type=float, choices=(5.0, 10.0, 20.0), default=10.0, help="ECG paper gain, mm/mV")
    p.add_argument("--leads", type=leads_argument, default=None, help="use " + LEADS_HELP)
    args = p.parse_args(argv)
    problem = missing_display()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # Kivy must not parse our arguments
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    from mobile_app.app import run

    run(args.model, args.record, args.screenshot, args.result_json, args.gain, args.leads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
