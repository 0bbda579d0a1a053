"""``python -m cpsc2018.inspect --data DIR [--json FILE]``: what is in a data folder.

Prints records per source (site) and per label, and the files that could not be read with the
reason. The JSON (``--json``) is::

    {"records": <int>, "by_source": {"<site>": <int>}, "labels": {"AF": <int>, ...},
     "ptbxl_folders": {"<PTB-XL folder>": {"records": <int>, "rates": [<Hz read>, ...]}},
     "unreadable": [{"path": "<path>", "reason": "<text>"}]}

A PTB-XL folder is read at ``--ptbxl-rate`` where its files exist at that rate, else at the rate present
(a download with ``records100/`` only is read at 100 Hz whatever was asked); the table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from cpsc2018.cache import DEFAULT_CACHE_DIR, RecordCache
from cpsc2018.catalog import Catalog, scan
from cpsc2018.preprocess import PreprocessConfig
from cpsc2018.labels import SIX
from cpsc2018.util import atomic_write_text, default_data_dir


def summary(catalog: Catalog) -> dict:
    labels = Counter(c for e in catalog.entries for c in e.classes if c in SIX)
    return {
        "records": len(catalog.entries),
        "by_source": dict(sorted(Counter(e.site for e in catalog.entries).items())),
        "labels": {name: int(labels.get(name, 0)) for name in SIX},
        "ptbxl_folders": ptbxl_folders(catalog),
        "unreadable": [{"path": u.path, "reason": u.reason} for u in catalog.unreadable],
    }


def ptbxl_folders(catalog: Catalog) -> dict[str, dict]:
    """Records and the sampling rates actually read, per PTB-XL folder (relative to the data root)."""
    out: dict[str, dict] = {}
    for e in catalog.entries:
        if e.source_format == "ptbxl" and e.ptbxl_root:
            try:
                name = str(Path(e.ptbxl_root).relative_to(catalog.root))
            except ValueError:
                name = e.ptbxl_root
            folder = out.setdefault(name, {"records": 0, "rates": set()})
            folder["records"] += 1
            folder["rates"].add(int(e.fs))
    return {k: {"records": v["records"], "rates": sorted(v["rates"])} for k, v in sorted(out.items())}


def format_table(s: dict, catalog: Catalog) -> str:
    lines = [f"{s['records']} readable records in {catalog.root}", "", f"{'source':<16}{'records':>8}  fs (Hz)"]
    for site, n in s["by_source"].items():
        rates = sorted({int(e.fs) for e in catalog.entries if e.site == site})
        lines.append(f"{site:<16}{n:>8}  {', '.join(map(str, rates))}")
    lines += ["", f"{'label':<16}{'records':>8}"]
    lines += [f"{name:<16}{n:>8}" for name, n in s["labels"].items()]
    for folder, f in s["ptbxl_folders"].items():
        lines.append(f"  PTB-XL folder {folder}: {f['records']} records read at {', '.join(map(str, f['rates']))} Hz")
    lines += ["", f"unreadable: {len(s['unreadable'])}"]
    lines += [f"  {u['path']}: {u['reason']}" for u in s["unreadable"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cpsc2018.inspect",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data folder (env ECG_DATA)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    parser.add_argument("--ptbxl-rate", type=int, choices=(100, 500), default=500, help="PTB-XL rate to read")
    parser.add_argument(
        "--preprocess", action="store_true", help="also preprocess every 12-lead record into the disk cache"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="preprocessed-record cache")
    args = parser.parse_args(argv)
    try:
        catalog = scan(args.data, ptbxl_rate=args.ptbxl_rate, progress=sys.stderr.isatty())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = summary(catalog)
    print(format_table(s, catalog))
    for folder, f in s["ptbxl_folders"].items():
        if args.ptbxl_rate not in f["rates"]:
            rates = ", ".join(map(str, f["rates"]))
            print(f"note: PTB-XL folder {folder} has no {args.ptbxl_rate} Hz files (--ptbxl-rate); read at {rates} Hz")
    if args.preprocess:
        cfg = PreprocessConfig()
        twelve = [e for e in catalog.entries if e.n_leads == 12]
        cache = RecordCache.build(twelve, cfg, args.cache_dir, progress=sys.stderr.isatty())
        seconds = cache.lengths / cfg.fs
        print(
            f"\npreprocessed {len(cache)} 12-lead records -> {cfg.fs:g} Hz, {cfg.band_low_hz:g}-{cfg.band_high_hz:g} Hz, "
            f"{cfg.normalize}; {seconds.sum() / 3600:.2f} h of signal, {len(cache.skipped)} skipped; cache {cache.folder}"
        )
        for s_ in cache.skipped:
            print(f"  skipped {s_['path']}: {s_['reason']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(s, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
